"""The device-model launcher: the restrictions QEMU cannot apply itself.

QEMU's own options switch its user, chroot and seccomp policy, but Xen's
design asks for more, done by whatever execs QEMU: fresh mount and IPC
namespaces (a QEMU patch doing it was refused upstream), resource limits
(file size 256 KiB; core, message queue, lock and locked-memory sizes 0)
and the per-uid chroot directory created root-owned and mode 0000.
``xen-dm-restrict-launch`` is written as the ``<emulator>`` of every
restricted domain when ``[dm_restrict] launcher`` is set; it does this
and execs ``[dm_restrict] qemu_binary`` with its arguments unchanged, so
the QEMU process keeps the launcher's pid (libxl waits on that pid).

libvirt runs the emulator with ``-help`` to tell qemu-xen from
qemu-xen-traditional, so a command line that only asks for help or the
version is passed straight through.  Any other command line must carry
the restriction (a user and a chroot for a uid of a configured range);
the launcher refuses to start an unrestricted device model.
"""

import ctypes
import dataclasses
import logging
import os
import re
import resource
import signal
import typing

from xen_dm_restrict_plugin import chroot
from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin import libxl_argv
from xen_dm_restrict_plugin import qemu_args

LOG = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
#: Python 3.11's resource module lacks it; the Linux value.
RLIMIT_LOCKS = getattr(resource, 'RLIMIT_LOCKS', 10)
FSIZE_LIMIT = 256 * 1024

#: (limit, value): soft and hard limits are both set to the value.
RLIMITS = (
    (resource.RLIMIT_FSIZE, FSIZE_LIMIT),
    (resource.RLIMIT_CORE, 0),
    (resource.RLIMIT_MSGQUEUE, 0),
    (RLIMIT_LOCKS, 0),
    (resource.RLIMIT_MEMLOCK, 0),
)

#: Arguments that only ask QEMU about itself; QEMU exits after answering.
QUERY_ARGS = frozenset(('-help', '--help', '-h', '-version', '--version'))

# File descriptors a command line hands to QEMU: fd=N, vhostfd=N,
# fds=N:M, vhostfds=N:M (netdev, chardev, add-fd) and fd:N (incoming).
_FD_RE = re.compile(r'(?:^|,)(?:vhost)?fds?=(\d+(?::\d+)*)(?=,|$)')
_FD_URI_RE = re.compile(r'^fd:(\d+)$')
# Written as this product writes it: QEMU reads the numbers in base 0,
# so "0200000" would be octal (uid 65536), not the leased 200000.
_USER_RE = re.compile(r'^(0|[1-9][0-9]*):(0|[1-9][0-9]*)$', re.ASCII)
_VALUED = frozenset(('runas', 'chroot', 'run-with', 'sandbox'))


@dataclasses.dataclass(frozen=True)
class DeviceModelArgs:
    """What a device-model command line says about its restriction.

    :param uid: the uid of ``-runas`` or ``-run-with user=``.
    :param gid: the gid that goes with it.
    :param chroot: the directory of ``-chroot`` or ``-run-with chroot=``.
    :param domid_restrict: whether ``-xen-domid-restrict`` is present.
    :param sandbox: the ``-sandbox`` value, if any.
    :param query: the command line only asks for help or the version.
    :param fds: file descriptors the arguments hand to QEMU.
    """

    uid: typing.Optional[int] = None
    gid: typing.Optional[int] = None
    chroot: typing.Optional[str] = None
    domid_restrict: bool = False
    sandbox: typing.Optional[str] = None
    query: bool = False
    fds: typing.FrozenSet[int] = frozenset()

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


def _referenced_fds(arg: str) -> typing.Iterator[int]:
    for match in _FD_RE.finditer(arg):
        for number in match.group(1).split(':'):
            yield int(number)
    match = _FD_URI_RE.match(arg)
    if match:
        yield int(match.group(1))


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
        if item.option is not None and item.value is not None:
            fds.update(_referenced_fds(item.value))
        name, value = item.option, item.value
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
    uid, gid = found.get('user', (None, None))
    return DeviceModelArgs(
        uid=uid, gid=gid, chroot=found.get('chroot'),
        domid_restrict=found.get('domid_restrict', False),
        sandbox=found.get('sandbox'),
        # A -help anywhere else may be another option's value.
        query=bool(args) and set(args) <= QUERY_ARGS,
        fds=frozenset(fds))


def check_identity(settings: conf_mod.Settings,
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


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'unshare: %s' % os.strerror(err))


def _close_stray_fds(keep: typing.Iterable[int]) -> None:
    low = 0
    for fd in sorted(set(keep) | {0, 1, 2}):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 2 ** 31 - 1)


def isolate(keep_fds: typing.Iterable[int] = ()) -> None:
    """Unshare mount and IPC namespaces, set rlimits, close stray fds.

    Applies to the calling process, which is about to exec QEMU.  Signals
    Python ignores (SIGPIPE, SIGXFSZ) are reset so QEMU starts with the
    default dispositions; SIGXFSZ is what ends a QEMU writing past the
    file size limit.

    :param keep_fds: descriptors besides 0, 1 and 2 to leave open.
    :raises OSError: the kernel refused a step.
    """
    _unshare(CLONE_NEWNS | CLONE_NEWIPC)
    for limit, value in RLIMITS:
        resource.setrlimit(limit, (value, value))
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    _close_stray_fds(keep_fds)


def launch(settings: conf_mod.Settings,
           args: typing.Sequence[str]) -> typing.NoReturn:
    """Exec the real QEMU restricted, or straight through for a query.

    :param settings: gives ``qemu_binary``, the ranges and the chroot
        base directory.
    :param args: the device-model arguments, without the program name.
    :raises Refused: the command line is not restricted or names a uid,
        gid or chroot the configuration does not allow, or the chroot
        directory is unsafe.
    :raises CapabilityMissing: not running as root.
    :raises OSError: a namespace, limit or the exec failed.
    """
    binary = settings.qemu_binary
    parsed = parse_argv(args)
    if not parsed.restricted:
        if parsed.query:
            _exec(binary, args)
        raise exception.Refused(
            'device model command line',
            'it carries no user and chroot restriction, and this launcher '
            'only starts restricted device models',
            'define the domain through the dm_restrict hook, which writes '
            '-runas/-chroot (or -run-with) into <xen:commandline>')
    if not parsed.domid_restrict and not settings.launcher_test_mode:
        raise exception.Refused(
            'device model command line',
            'it has no -xen-domid-restrict, so QEMU would keep Xen '
            'handles to every domain',
            'define the domain through the dm_restrict hook, which writes '
            '-xen-domid-restrict into <xen:commandline>')
    if (settings.sandbox == conf_mod.SANDBOX_REQUIRED
            and parsed.sandbox is None):
        raise exception.Refused(
            'device model command line', 'it has no -sandbox and '
            '[dm_restrict] sandbox is "required"',
            'define the domain through the dm_restrict hook')
    problems = libxl_argv.Checker(settings).problems(args)
    if problems:
        raise exception.Refused(
            'device model command line',
            'it carries arguments libxl does not write for an allowed '
            'domain: %s' % '; '.join(problems),
            'define the domain through the dm_restrict hook; extra options '
            'must be in [dm_restrict] allowed_qemu_options')
    if os.geteuid() != 0:
        raise exception.CapabilityMissing(
            'device model launcher', 'it runs as uid %d, not root, so it '
            'cannot create namespaces or the chroot' % os.geteuid(),
            'let libxl (as root) start it')
    check_identity(settings, parsed)
    chroot.prepare(settings, parsed.uid)
    LOG.info('starting %s as uid %d gid %d in chroot %s, in new mount and '
             'IPC namespaces with rlimits', binary, parsed.uid, parsed.gid,
             parsed.chroot)
    isolate(parsed.fds)
    _exec(binary, args)


def _exec(binary: str, args: typing.Sequence[str]) -> None:
    """Become the real QEMU.

    :raises CapabilityMissing: it cannot be executed.
    """
    try:
        os.execv(binary, [binary] + list(args))
    except OSError as err:
        raise exception.CapabilityMissing(
            'device model %s' % binary,
            'it cannot be executed: %s' % (err.strerror or err),
            'install qemu-xen or set [dm_restrict] qemu_binary to its '
            'path') from None
