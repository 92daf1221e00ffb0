"""The restriction a device-model command line carries, read as QEMU does.

The launcher checks the uid, gid and chroot of the command line libxl
hands it against the configured ranges before it execs QEMU, and
libvirtd's hook checks the same arguments in a domain's record before it
lets the domain start: both read them with :func:`parse_argv`, so the
two can never disagree about what a command line asks for.
"""

from __future__ import annotations

import re

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import qemu_args
from xen_dm_restrict_plugin import exception

# On the launcher's start-up path: see qemu_args.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

    from xen_dm_restrict_plugin.core import settings as settings_mod

# The one file descriptor libxl hands to QEMU: its QMP socket.  Any
# other "fd=" is text the domain chose (a name, a kernel command line)
# and must not keep a descriptor open into QEMU.
_LIBXL_CMD_FD_RE = re.compile(r'^socket,id=libxl-cmd,fd=([0-9]+),')
# Written as this product writes it: QEMU reads the numbers in base 0,
# so "0200000" would be octal (uid 65536), not the leased 200000.
_USER_RE = re.compile(r'^(0|[1-9][0-9]*):(0|[1-9][0-9]*)$', re.ASCII)
_VALUED = frozenset(('runas', 'chroot', 'run-with', 'sandbox'))


class DeviceModelArgs:
    """What a device-model command line says about its restriction.

    :param uid: the uid of ``-runas`` or ``-run-with user=``.
    :param gid: the gid that goes with it.
    :param chroot: the directory of ``-chroot`` or ``-run-with chroot=``.
    :param domid_restrict: whether ``-xen-domid-restrict`` is present.
    :param sandbox: the ``-sandbox`` value, if any.
    :param query: the command line only asks for help or the version.
    :param fds: file descriptors the arguments hand to QEMU (libxl's
        QMP socket, ``-chardev socket,id=libxl-cmd,fd=N``).
    """

    __slots__ = ('uid', 'gid', 'chroot', 'domid_restrict', 'sandbox',
                 'query', 'fds')

    def __init__(self, uid=None, gid=None, chroot=None,
                 domid_restrict=False, sandbox=None, query=False,
                 fds=frozenset()):
        self.uid = uid
        self.gid = gid
        self.chroot = chroot
        self.domid_restrict = domid_restrict
        self.sandbox = sandbox
        self.query = query
        self.fds = fds

    @property
    def restricted(self) -> bool:
        """Whether both a user and a chroot are given."""
        return self.uid is not None and self.chroot is not None


def _bad(arg: str, reason: str) -> exception.Refused:
    return exception.FeatureRefused(
        'device model argument %r' % arg, reason,
        'let the dm_restrict hook write the restriction arguments; do not '
        'add your own')


def _parse_user(value: str) -> typing.Tuple[int, int]:
    match = _USER_RE.match(value)
    if not match:
        raise _bad(value, 'the user must be given as numeric UID:GID')
    return int(match.group(1)), int(match.group(2))


def parse_argv(args: typing.Sequence[str]) -> DeviceModelArgs:
    """Read the restriction out of a device-model command line, as QEMU
    reads it (an option's value is never taken for an option).

    Each of user, chroot and sandbox may be given once: a second one
    would leave it to QEMU's parser which one wins.

    :param args: the arguments, without the program name.
    :raises FeatureRefused: a restriction option is repeated, has no
        value, or names its user by name rather than number.
    """
    found: typing.Dict[str, typing.Any] = {}
    fds: typing.Set[int] = set()

    def put(key: str, value, arg: str) -> None:
        if key in found:
            raise _bad(arg, 'the device model %s is given twice' % key)
        found[key] = value

    for item in qemu_args.split(args):
        name, value = item.option, item.value
        if name == 'chardev' and value is not None:
            match = _LIBXL_CMD_FD_RE.match(value)
            if match:
                fds.add(int(match.group(1)))
        arg = '-%s' % name
        if name == 'xen-domid-restrict':
            found['domid_restrict'] = True
        elif name in _VALUED:
            if item.missing_value:
                raise _bad(arg, 'it must be followed by its value')
            if name == 'runas':
                put('user', _parse_user(value), arg)
            elif name == 'chroot':
                put('chroot', value, arg)
            elif name == 'sandbox':
                put('sandbox', value, arg)
            else:
                for key, val in qemu_args.split_keyvals(value):
                    if key == 'user':
                        put('user', _parse_user(val), arg)
                    elif key == 'chroot':
                        put('chroot', val, arg)
                    else:
                        # async-teardown=on keeps a root, unchrooted
                        # helper sharing the guest's memory, invisible
                        # to the uid reaper; the other keys are not ours.
                        raise _bad('%s %s' % (arg, value), 'the key %r is '
                                   'not one dm_restrict writes (only user= '
                                   'and chroot=)' % key)
    uid, gid = found.get('user', (None, None))
    return DeviceModelArgs(
        uid=uid, gid=gid, chroot=found.get('chroot'),
        domid_restrict=found.get('domid_restrict', False),
        sandbox=found.get('sandbox'),
        # A -help anywhere else may be another option's value.
        query=bool(args) and set(args) <= constants.QUERY_ARGS,
        fds=frozenset(fds))


def check_identity(settings: settings_mod.Settings,
                   parsed: DeviceModelArgs) -> None:
    """Refuse a uid, gid or chroot the configuration does not allow.

    :raises Refused: the uid is outside every configured range, the gid
        is reserved, or the chroot is not the uid's own directory.
    """
    if not any(parsed.uid in rng for rng in settings.all_ranges()):
        raise exception.Refused(
            'device model uid %s' % parsed.uid,
            'it is not inside any configured tenant or shared uid range',
            'start restricted domains only with the uid leased by the '
            'dm_restrict hook, under the same configuration')
    if parsed.gid != settings.gid_for(parsed.uid):
        raise exception.Refused(
            'device model gid %s' % parsed.gid,
            'it is not %d, the group configured for uid %d'
            % (settings.gid_for(parsed.uid), parsed.uid),
            'use the gid the dm_restrict hook writes')
    expected = settings.chroot_dir(parsed.uid)
    if parsed.chroot != expected:
        raise exception.Refused(
            'device model chroot %s' % parsed.chroot,
            'it is not %s, the directory of uid %d inside chroot_base_dir'
            % (expected, parsed.uid),
            'use the chroot the dm_restrict hook writes')
