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
import resource
import signal
import sys

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import dm_argv
from xen_dm_restrict_plugin.core import libxl_argv
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import chroot

# Every import here is paid at every device-model start (see
# launcher.settings): no oslo.config, logging, typing or dataclasses.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

    from xen_dm_restrict_plugin.core import settings as settings_mod

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

PROG = 'xen-dm-restrict-launch'


def say(level: str, message: str) -> None:
    """Write a log line to stderr, which libxl keeps as the QEMU log.

    The launcher does not load :mod:`logging` (see the imports); the
    line has the format of the other console scripts' logs.
    """
    sys.stderr.write('%s: %s %s: %s\n' % (PROG, level, __name__, message))
    sys.stderr.flush()


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


def _check_command_line(settings: settings_mod.Settings,
                        parsed: dm_argv.DeviceModelArgs,
                        args: typing.Sequence[str]) -> None:
    if not parsed.domid_restrict and not settings.launcher_test_mode:
        raise exception.Refused(
            'device model command line',
            'it has no -xen-domid-restrict, so QEMU would keep Xen '
            'handles to every domain',
            'define the domain through the dm_restrict hook, which writes '
            '-xen-domid-restrict into <xen:commandline>')
    if (parsed.sandbox is not None
            and parsed.sandbox != constants.SANDBOX_POLICY):
        raise exception.Refused(
            'device model command line', '-sandbox %s is not the policy '
            'the dm_restrict hook writes (%s)' % (
                parsed.sandbox, constants.SANDBOX_POLICY),
            'define the domain through the dm_restrict hook')
    if (settings.sandbox == constants.SANDBOX_REQUIRED
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


def _network(settings: settings_mod.Settings, args: typing.Sequence[str],
             chroot_dir: str = '') -> typing.Tuple[typing.List[str], list,
                                                   bool]:
    """Decide the network namespace and hand the taps over.

    The taps are handed over whatever the namespace: so QEMU, still root
    when it would open them by name, never attaches to an existing
    device.

    :returns: the arguments QEMU gets, the taps opened, and whether QEMU
        gets a network namespace of its own.
    """
    from xen_dm_restrict_plugin.launcher import network as dm_network

    mode = settings.network_namespace
    new_network = mode != constants.NETNS_OFF
    if new_network and dm_network.vnc_listens(args):
        if mode == constants.NETNS_REQUIRED:
            path = '%s/%s' % (chroot_dir, constants.VNC_SOCKET)
            try:
                args = dm_network.vnc_to_unix(args, path)
            except ValueError as err:
                raise exception.Refused(
                    'device model VNC display', str(err),
                    'use a chroot_base_dir without commas') from None
            say('INFO', 'VNC display on %s, relayed from dom0 by libvirtd\'s '
                'hook' % path)
        else:
            say('WARNING', 'the device model keeps the host network '
                'namespace for its VNC display (network_namespace = '
                'except-vnc)')
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


def _cgroup(settings: settings_mod.Settings, uid: int
            ) -> typing.Tuple[int, typing.List[str]]:
    """Create the device model's cgroup; (version, groups) or (0, [])."""
    if settings.cgroup_limits == constants.CGROUPS_OFF:
        return 0, []
    from xen_dm_restrict_plugin.launcher import cgroup as dm_cgroup

    limits = dm_cgroup.Limits(
        pids_max=settings.device_model_max_processes,
        memory_max_bytes=settings.device_model_memory_mib * 1024 * 1024,
        cpu_weight=settings.device_model_cpu_weight)
    try:
        return dm_cgroup.prepare(settings.cgroup_parent, uid, limits)
    except OSError as err:
        raise _cgroup_missing(err) from None


def _cgroup_missing(err: OSError) -> exception.CapabilityMissing:
    return exception.CapabilityMissing(
        'device model cgroup', str(err),
        'mount cgroup v2 (or the v1 pids and memory controllers), or '
        'set [dm_restrict] cgroup_limits = off')


class Plan:
    """What the launcher does to start one device model, decided and
    prepared (chroot, cgroup, taps) but not yet applied to a process.

    :func:`launch` applies it to the launcher itself and execs QEMU; the
    launcher service (:mod:`xen_dm_restrict_plugin.cmd.launch_service`)
    hands it to the compiled front, which applies the same steps.

    :param binary: the QEMU to exec.
    :param argv: QEMU's arguments (taps handed over as descriptors).
    :param query: a query passed straight through: nothing else applies.
    """

    __slots__ = ('binary', 'argv', 'query', 'uid', 'gid', 'keep_fds',
                 'taps', 'unshare', 'rlimits', 'cgroup_version', 'cgroups',
                 'seccomp', 'message')

    def __init__(self, binary: str, argv: typing.Sequence[str],
                 query: bool = False):
        self.binary = binary
        self.argv = list(argv)
        self.query = query
        self.uid = self.gid = None
        #: Descriptors QEMU inherits besides 0, 1, 2 and the taps.
        self.keep_fds: typing.FrozenSet[int] = frozenset()
        #: The taps opened for QEMU (network.Tap).
        self.taps: list = []
        #: The namespaces to unshare (CLONE_* flags).
        self.unshare = 0
        #: (resource, value) pairs; soft and hard limits both.
        self.rlimits: typing.List[typing.Tuple[int, int]] = []
        #: 2, 1 or 0 (no cgroup), and the group directories.
        self.cgroup_version = 0
        self.cgroups: typing.List[str] = []
        #: Whether the syscall filter is loaded before the exec.
        self.seccomp = False
        #: The log line written to QEMU's log before the exec.
        self.message = ''

    def close(self) -> None:
        """Close the taps of an abandoned start."""
        for tap in self.taps:
            os.close(tap.fd)
        self.taps = []


def plan(settings: settings_mod.Settings,
         args: typing.Sequence[str]) -> Plan:
    """Check a device-model command line and prepare its start.

    :param settings: the ``[dm_restrict]`` settings (full, or the
        launcher's snapshot of them).
    :param args: the device-model arguments, without the program name.
    :returns: the plan; its taps are open (close them with
        :meth:`Plan.close` if it is not carried out).
    :raises Refused: the command line is not restricted or names a uid,
        gid or chroot the configuration does not allow, or the chroot
        directory is unsafe.
    :raises CapabilityMissing: not running as root, or a restriction
        cannot be applied on this host.
    """
    binary = settings.qemu_binary
    parsed = dm_argv.parse_argv(args)
    if not parsed.restricted:
        if parsed.query:
            return Plan(binary, args, query=True)
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
    dm_argv.check_identity(settings, parsed)
    qemu_argv, taps, new_network = _network(settings, args, parsed.chroot)
    result = Plan(binary, qemu_argv)
    result.taps = taps
    try:
        chroot.prepare(settings, parsed.uid)
        result.cgroup_version, result.cgroups = _cgroup(settings, parsed.uid)
        from xen_dm_restrict_plugin.launcher import network as dm_network
        dm_network.record_taps(settings.chroot_base_dir, parsed.uid, taps)
    except BaseException:
        result.close()
        raise
    result.uid, result.gid = parsed.uid, parsed.gid
    result.keep_fds = frozenset(parsed.fds)
    result.unshare = CLONE_NEWNS | CLONE_NEWIPC | (
        CLONE_NEWNET if new_network else 0)
    result.rlimits = list(RLIMITS)
    if settings.device_model_max_processes:
        result.rlimits.append((resource.RLIMIT_NPROC,
                               settings.device_model_max_processes))
    result.seccomp = bool(settings.launcher_seccomp)
    where = ('cgroup %s' % ', '.join(result.cgroups) if result.cgroups
             else 'no cgroup')
    result.message = (
        'starting %s as uid %d gid %d in chroot %s, in new mount, '
        'IPC%s namespaces, %s, with rlimits%s%s' % (
            binary, parsed.uid, parsed.gid, parsed.chroot,
            ' and network' if new_network else '', where,
            ', seccomp filter' if result.seccomp else '',
            ''.join(', tap %s as fd %d' % (tap.ifname, tap.fd)
                    for tap in taps)))
    return result


def launch(settings: settings_mod.Settings,
           args: typing.Sequence[str]) -> typing.NoReturn:
    """Exec the real QEMU restricted, or straight through for a query.

    :param settings: the ``[dm_restrict]`` settings (full, or the
        launcher's snapshot of them).
    :param args: the device-model arguments, without the program name.
    :raises Refused: see :func:`plan`.
    :raises CapabilityMissing: see :func:`plan`.
    :raises OSError: a namespace, limit or the exec failed.
    """
    steps = plan(settings, args)
    if steps.query:
        _exec(steps.binary, steps.argv)
    try:
        if steps.cgroups:
            from xen_dm_restrict_plugin.launcher import cgroup as dm_cgroup

            try:
                dm_cgroup.join(steps.cgroups)
            except OSError as err:
                raise _cgroup_missing(err) from None
    except BaseException:
        steps.close()
        raise
    isolate(set(steps.keep_fds) | {tap.fd for tap in steps.taps},
            dict(steps.rlimits).get(resource.RLIMIT_NPROC, 0),
            bool(steps.unshare & CLONE_NEWNET))
    if steps.seccomp:
        _seccomp(steps.uid, steps.gid)
    say('INFO', steps.message)
    _exec(steps.binary, steps.argv)


def _seccomp(uid: int, gid: int) -> None:
    from xen_dm_restrict_plugin.launcher import seccomp as syscall_filter

    try:
        syscall_filter.install(uid, gid)
    except OSError as err:
        raise exception.CapabilityMissing(
            'device model seccomp filter', str(err),
            'install libseccomp2, or set [dm_restrict] launcher_seccomp = '
            'false') from None


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
