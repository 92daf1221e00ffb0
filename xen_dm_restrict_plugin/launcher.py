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

from __future__ import annotations

import ctypes
import errno
import os
import re
import resource
import signal
import sys

from xen_dm_restrict_plugin import chroot
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin import launch_settings as ls
from xen_dm_restrict_plugin import libxl_argv
from xen_dm_restrict_plugin import qemu_args

# Every import here is paid at every device-model start (see
# launch_settings): no oslo.config, logging, typing or dataclasses.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

    from xen_dm_restrict_plugin import conf as conf_mod

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
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

QUERY_ARGS = ls.QUERY_ARGS

# The one file descriptor libxl hands to QEMU: its QMP socket.  Any
# other "fd=" is text the domain chose (a name, a kernel command line)
# and must not keep a descriptor open into QEMU.
_LIBXL_CMD_FD_RE = re.compile(r'^socket,id=libxl-cmd,fd=([0-9]+),')
# Written as this product writes it: QEMU reads the numbers in base 0,
# so "0200000" would be octal (uid 65536), not the leased 200000.
_USER_RE = re.compile(r'^(0|[1-9][0-9]*):(0|[1-9][0-9]*)$', re.ASCII)
_VALUED = frozenset(('runas', 'chroot', 'run-with', 'sandbox'))

PROG = 'xen-dm-restrict-launch'


def say(level: str, message: str) -> None:
    """Write a log line to stderr, which libxl keeps as the QEMU log.

    The launcher does not load :mod:`logging` (see the imports); the
    line has the format of the other console scripts' logs.
    """
    sys.stderr.write('%s: %s %s: %s\n' % (PROG, level, __name__, message))
    sys.stderr.flush()


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


def isolate(keep_fds: typing.Iterable[int] = (), max_processes: int = 0,
            new_network: bool = False) -> None:
    """Unshare namespaces, set rlimits, close stray fds.

    Applies to the calling process, which is about to exec QEMU.  SIGPIPE,
    which Python ignores, gets its default action back.  SIGXFSZ is
    ignored: libxl hands QEMU its log file as stdout and stderr, and past
    RLIMIT_FSIZE a write would otherwise kill QEMU; ignored, the write
    fails (EFBIG), QEMU runs on and its log stops growing at 256 KiB.

    :param keep_fds: descriptors besides 0, 1 and 2 to leave open.
    :param max_processes: RLIMIT_NPROC of the device-model uid (it counts
        every process and thread of the uid); 0 leaves it alone.
    :param new_network: unshare the network namespace too.
    :raises OSError: the kernel refused a step.
    """
    _unshare(CLONE_NEWNS | CLONE_NEWIPC | (CLONE_NEWNET if new_network
                                           else 0))
    for limit, value in RLIMITS:
        resource.setrlimit(limit, (value, value))
    if max_processes:
        resource.setrlimit(resource.RLIMIT_NPROC,
                           (max_processes, max_processes))
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _close_stray_fds(keep_fds)


def _check_command_line(settings: conf_mod.Settings,
                        parsed: DeviceModelArgs,
                        args: typing.Sequence[str]) -> None:
    if not parsed.domid_restrict and not settings.launcher_test_mode:
        raise exception.Refused(
            'device model command line',
            'it has no -xen-domid-restrict, so QEMU would keep Xen '
            'handles to every domain',
            'define the domain through the dm_restrict hook, which writes '
            '-xen-domid-restrict into <xen:commandline>')
    if parsed.sandbox is not None and parsed.sandbox != ls.SANDBOX_POLICY:
        raise exception.Refused(
            'device model command line', '-sandbox %s is not the policy '
            'the dm_restrict hook writes (%s)' % (
                parsed.sandbox, ls.SANDBOX_POLICY),
            'define the domain through the dm_restrict hook')
    if settings.sandbox == ls.SANDBOX_REQUIRED and parsed.sandbox is None:
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


def _network(settings: conf_mod.Settings, args: typing.Sequence[str]
             ) -> typing.Tuple[typing.List[str], list, bool]:
    """Decide the network namespace and hand the taps over.

    The taps are handed over whatever the namespace: so QEMU, still root
    when it would open them by name, never attaches to an existing
    device.

    :returns: the arguments QEMU gets, the taps opened, and whether QEMU
        gets a network namespace of its own.
    """
    from xen_dm_restrict_plugin import dm_network

    mode = settings.network_namespace
    new_network = mode != ls.NETNS_OFF
    if new_network and dm_network.vnc_listens(args):
        if mode == ls.NETNS_REQUIRED:
            raise exception.Refused(
                'device model VNC display', 'QEMU can only listen for VNC '
                'clients on a TCP socket of its own network namespace, '
                'and [dm_restrict] network_namespace is "required"',
                'remove the <graphics type=\'vnc\'> device, or set '
                'network_namespace = except-vnc')
        say('WARNING', 'the device model keeps the host network namespace '
            'for its VNC display (network_namespace = except-vnc)')
        new_network = False
    try:
        new_args, taps = dm_network.hand_over(args)
    except OSError as err:
        if err.errno == errno.EBUSY:
            remedy = ('a network device of that name exists already: '
                      'remove it if it is stale (ip link delete NAME), '
                      'else it belongs to another domain or user')
        else:
            remedy = ('load the tun driver (modprobe tun) and check '
                      '/dev/net/tun')
        raise exception.CapabilityMissing(
            'device model network', err.strerror or str(err), remedy
        ) from None
    return new_args, taps, new_network


def _cgroup(settings: conf_mod.Settings, uid: int) -> str:
    if settings.cgroup_limits == ls.CGROUPS_OFF:
        return 'no cgroup'
    from xen_dm_restrict_plugin import dm_cgroup

    limits = dm_cgroup.Limits(
        pids_max=settings.device_model_max_processes,
        memory_max_bytes=settings.device_model_memory_mib * 1024 * 1024,
        cpu_weight=settings.device_model_cpu_weight)
    try:
        paths = dm_cgroup.enter(settings.cgroup_parent, uid, limits)
    except OSError as err:
        raise exception.CapabilityMissing(
            'device model cgroup', str(err),
            'mount cgroup v2 (or the v1 pids and memory controllers), or '
            'set [dm_restrict] cgroup_limits = off') from None
    return 'cgroup %s' % ', '.join(paths)


def _seccomp(settings: conf_mod.Settings, parsed: DeviceModelArgs) -> str:
    if not settings.launcher_seccomp:
        return ''
    from xen_dm_restrict_plugin import syscall_filter

    try:
        syscall_filter.install(parsed.uid, parsed.gid)
    except OSError as err:
        raise exception.CapabilityMissing(
            'device model seccomp filter', str(err),
            'install libseccomp2, or set [dm_restrict] launcher_seccomp = '
            'false') from None
    return ', seccomp filter'


def launch(settings: conf_mod.Settings,
           args: typing.Sequence[str]) -> typing.NoReturn:
    """Exec the real QEMU restricted, or straight through for a query.

    :param settings: the ``[dm_restrict]`` settings (full, or the
        launcher's snapshot of them).
    :param args: the device-model arguments, without the program name.
    :raises Refused: the command line is not restricted or names a uid,
        gid or chroot the configuration does not allow, or the chroot
        directory is unsafe.
    :raises CapabilityMissing: not running as root, or a restriction
        cannot be applied on this host.
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
    _check_command_line(settings, parsed, args)
    if os.geteuid() != 0:
        raise exception.CapabilityMissing(
            'device model launcher', 'it runs as uid %d, not root, so it '
            'cannot create namespaces or the chroot' % os.geteuid(),
            'let libxl (as root) start it')
    check_identity(settings, parsed)
    qemu_argv, taps, new_network = _network(settings, args)
    try:
        chroot.prepare(settings, parsed.uid)
        where = _cgroup(settings, parsed.uid)
    except BaseException:
        for tap in taps:
            os.close(tap.fd)
        raise
    isolate(set(parsed.fds) | {tap.fd for tap in taps},
            settings.device_model_max_processes, new_network)
    filtered = _seccomp(settings, parsed)
    say('INFO', 'starting %s as uid %d gid %d in chroot %s, in new mount, '
        'IPC%s namespaces, %s, with rlimits%s%s' % (
            binary, parsed.uid, parsed.gid, parsed.chroot,
            ' and network' if new_network else '', where, filtered,
            ''.join(', tap %s as fd %d' % (tap.ifname, tap.fd)
                    for tap in taps)))
    _exec(binary, qemu_argv)


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
