"""QEMU's ``-sandbox`` syscall filter, for a QEMU built without it.

libxl asks QEMU for ``-sandbox on,obsolete=deny,elevateprivileges=allow,
spawn=deny,resourcecontrol=deny``, but Debian's qemu-system-xen is built
without seccomp, so on most hosts no filter applies.  When the command
line has no ``-sandbox``, the launcher loads the same deny list itself,
just before it execs QEMU (a seccomp filter survives exec):

- QEMU's default and ``obsolete`` sets kill the process;
- ``elevateprivileges``: QEMU's ``-runas`` still has to switch to the
  device-model ids after the exec, so ``setuid`` and ``setgid`` are
  allowed to exactly those ids and fail with EPERM for any other (QEMU
  checks that ``setuid(0)`` fails); every other id-changing call kills;
- ``spawn``: fork, vfork, execveat, setns, unshare, a ``clone`` without
  the thread flags or with namespace flags kill; ``clone3`` returns
  ENOSYS (glibc then uses ``clone``).  ``execve`` must stay allowed:
  the filter is in place when the launcher execs QEMU.  After QEMU's
  chroot there is nothing to execute: the chroot is an empty directory
  QEMU's uid cannot write, no /proc, and no_new_privs is set;
- ``resourcecontrol`` fails with EPERM.

Beyond QEMU's sets, for what a compromised device model could still do
as its uid (so the launcher loads the filter under QEMU's own
``-sandbox`` too; the two stack):

- ``fallocate`` only in the modes QEMU uses: plain (bounded by
  RLIMIT_FSIZE), punching a hole, zeroing a range; any other mode fails
  with EOPNOTSUPP (QEMU then falls back).  ``FALLOC_FL_KEEP_SIZE`` alone
  would reserve disk blocks past the end of the log file without ever
  meeting the file size limit;
- the kernel keyring calls fail with EPERM: a uid's keyring outlives its
  processes, so keys would pass to the uid's next domain;
- ``io_uring`` fails with ENOSYS (QEMU then polls and does its I/O
  without it): the operations a ring carries out are never seen by
  seccomp, so a ring would open sockets and allocate file space past
  every rule here;
- ``socket`` and ``socketpair`` only for AF_UNIX, AF_INET, AF_INET6 and
  AF_NETLINK, which the device model's own network namespace confines;
  any other family (AF_VSOCK reaches across namespaces) fails with
  EAFNOSUPPORT;
- netlink sockets only of the protocol QEMU (and the C library under
  it) uses, ``NETLINK_ROUTE``, which in the device model's own network
  namespace shows nothing of dom0's; any other protocol fails with
  EAFNOSUPPORT (``NETLINK_KOBJECT_UEVENT`` would receive the host's
  device events in any namespace);
- the tun/tap ioctls QEMU does not need once it holds the tap the
  launcher opened (QEMU's ``tap-linux.c`` uses TUNGETIFF, TUNSETOFFLOAD,
  TUNSETVNETHDRSZ, TUNSETSNDBUF, the vnet endianness and, for multiqueue,
  TUNSETQUEUE) fail with EPERM: TUNSETPERSIST would let the tap outlive
  the domain, TUNSETOWNER/TUNSETGROUP hand it to a local user, who could
  then inject frames into dom0's bridge, SIOCSIFHWADDR change the tap's
  MAC (the bridge's, or another guest's in the bridge's table),
  TUNSETLINK its link type, TUNSETIFF/TUNSETIFINDEX/TUNSETCARRIER/
  TUNSETDEBUG/TUNSETNOCSUM its setup, the eBPF steering and filter
  programs its traffic, and TUNGETDEVNETNS would return dom0's network
  namespace.  They are denied by number on every descriptor.

libseccomp builds the BPF; it is called through ctypes because the
launcher's Python runs isolated (``-I``) from Debian's python3-seccomp
and because ctypes is already loaded on that path.  This module imports
only ctypes, errno and os.
"""

from __future__ import annotations

import ctypes
import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

LIBRARY = 'libseccomp.so.2'

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7fff0000
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_CMP_NE = 1
SCMP_CMP_MASKED_EQ = 7


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0x0000ffff)


KILL = SCMP_ACT_KILL_PROCESS
EPERM = _errno_action(errno.EPERM)
ENOSYS = _errno_action(errno.ENOSYS)
EOPNOTSUPP = _errno_action(errno.EOPNOTSUPP)
EAFNOSUPPORT = _errno_action(errno.EAFNOSUPPORT)
EPROTONOSUPPORT = _errno_action(errno.EPROTONOSUPPORT)

CSIGNAL = 0x000000ff
CLONE_VM = 0x00000100
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_SIGHAND = 0x00000800
CLONE_PIDFD = 0x00001000
CLONE_PTRACE = 0x00002000
CLONE_VFORK = 0x00004000
CLONE_PARENT = 0x00008000
CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
CLONE_SYSVSEM = 0x00040000
CLONE_SETTLS = 0x00080000
CLONE_PARENT_SETTID = 0x00100000
CLONE_CHILD_CLEARTID = 0x00200000
CLONE_UNTRACED = 0x00800000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_IO = 0x80000000

#: pthread_create sets all of these; a clone lacking one is a process.
CLONE_REQUIRED = (CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND,
                  CLONE_THREAD, CLONE_SYSVSEM, CLONE_SETTLS,
                  CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID)
CLONE_FORBIDDEN = (CLONE_PIDFD, CLONE_PTRACE, CLONE_VFORK, CLONE_PARENT,
                   CLONE_NEWNS, CLONE_UNTRACED, CLONE_NEWCGROUP,
                   CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
                   CLONE_NEWNET, CLONE_IO)
SCHED_IDLE = 5

#: QEMU's default and obsolete sets: never needed, kill.
KILLED = (
    'reboot', 'swapon', 'swapoff', 'syslog', 'mount', 'umount',
    'kexec_load', 'afs_syscall', 'break', 'ftime', 'getpmsg', 'gtty',
    'lock', 'mpx', 'prof', 'profil', 'putpmsg', 'security', 'stty',
    'tuxcall', 'ulimit', 'vserver',
    'readdir', '_sysctl', 'bdflush', 'create_module', 'get_kernel_syms',
    'query_module', 'sgetmask', 'ssetmask', 'sysfs', 'uselib', 'ustat',
    # elevateprivileges, except setuid/setgid (see _id_rules)
    'setpgid', 'setsid', 'setreuid', 'setregid', 'setresuid', 'setresgid',
    'setfsuid', 'setfsgid',
    # spawn, except execve and clone (see the module docstring)
    'fork', 'vfork', 'execveat', 'setns', 'unshare',
)
#: QEMU's resourcecontrol set: fail.  ioprio_set is its I/O twin.
REFUSED = ('setpriority', 'sched_setparam', 'sched_setaffinity',
           'sched_setattr', 'ioprio_set')
#: Calls a Xen device model never makes, each an aid to exploitation:
#: userfaultfd (stalls kernel copies at a chosen page; QEMU uses it only
#: for postcopy migration, which is refused), modify_ldt (16-bit segments,
#: a classic kernel attack surface), pidfd_open and pidfd_send_signal
#: (QEMU signals no other process).  Unavailable.
UNUSED = ('userfaultfd', 'modify_ldt', 'pidfd_open', 'pidfd_send_signal',
          'pidfd_getfd')
#: personality(): only the query; setting flags such as ADDR_NO_RANDOMIZE
#: or READ_IMPLIES_EXEC would weaken what QEMU runs (QEMU sets none).
PERSONALITY_QUERY = 0xffffffff
#: Kernel keyrings: fail.
KEYRING = ('add_key', 'keyctl', 'request_key')
#: io_uring: its operations bypass seccomp; unavailable.
IO_URING = ('io_uring_setup', 'io_uring_enter', 'io_uring_register')

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
#: The fallocate modes allowed (QEMU's block layer and RAM discard).
FALLOCATE_MODES = (0, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                   FALLOC_FL_ZERO_RANGE)
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
#: The socket families allowed.
SOCKET_FAMILIES = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)
NETLINK_ROUTE = 0
#: The netlink protocols allowed.
NETLINK_PROTOCOLS = (NETLINK_ROUTE,)
IPPROTO_IP = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
#: The IPv4/IPv6 protocols allowed: any other number makes a Debian dom0
#: load that protocol's module on request (sctp, dccp, l2tp...).
INET_PROTOCOLS = (IPPROTO_IP, IPPROTO_TCP, IPPROTO_UDP)


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord('T') << 8) | number


_W, _R = 1, 2
#: tun/tap ioctls denied (linux/if_tun.h), and SIOCSIFHWADDR, which the
#: tun driver also takes on a tap descriptor.
TUN_DENIED = {
    'TUNSETNOCSUM': _ioc(_W, 200, 4), 'TUNSETDEBUG': _ioc(_W, 201, 4),
    'TUNSETIFF': _ioc(_W, 202, 4), 'TUNSETPERSIST': _ioc(_W, 203, 4),
    'TUNSETOWNER': _ioc(_W, 204, 4), 'TUNSETLINK': _ioc(_W, 205, 4),
    'TUNSETGROUP': _ioc(_W, 206, 4), 'TUNSETIFINDEX': _ioc(_W, 218, 4),
    'TUNSETSTEERINGEBPF': _ioc(_R, 224, 4),
    'TUNSETFILTEREBPF': _ioc(_R, 225, 4),
    'TUNSETCARRIER': _ioc(_W, 226, 4), 'TUNGETDEVNETNS': _ioc(0, 227, 0),
    'SIOCSIFHWADDR': 0x8924,
}


class ArgCmp(ctypes.Structure):
    """libseccomp's ``struct scmp_arg_cmp``."""

    _fields_ = [('arg', ctypes.c_uint), ('op', ctypes.c_int),
                ('datum_a', ctypes.c_uint64), ('datum_b', ctypes.c_uint64)]


def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL(LIBRARY, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                     ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
        ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


def available() -> str:
    """Empty when the filter can be loaded here, else why not."""
    try:
        _library()
    except OSError as err:
        return '%s cannot be loaded (%s): install libseccomp2' % (
            LIBRARY, err)
    if not os.path.exists('/proc/self/status'):
        return '/proc is not mounted'
    with open('/proc/self/status') as handle:
        if 'Seccomp:' not in handle.read():
            return 'the kernel has no seccomp support'
    return ''


def outside(allowed: typing.Sequence[int]) -> typing.List[
        typing.Tuple[int, int]]:
    """(mask, value) pairs: an int argument ``x`` is outside ``allowed``
    exactly when ``x & mask == value`` for one of them.

    Only the low 32 bits are compared: the kernel reads an ``int``
    argument from them, whatever the upper half of the register holds.
    """
    support = 0
    for value in allowed:
        support |= value
    pairs = [(1 << bit, 1 << bit) for bit in range(32)
             if not support & (1 << bit)]
    bits = [1 << bit for bit in range(32) if support & (1 << bit)]
    for index in range(1 << len(bits)):
        value = 0
        for position, bit in enumerate(bits):
            if index & (1 << position):
                value |= bit
        if value not in allowed:
            pairs.append((support, value))
    return pairs


def rules(uid: int, gid: int) -> typing.List[typing.Tuple[
        str, int, typing.Tuple[typing.Tuple[int, int, int, int], ...]]]:
    """The filter, as (syscall, action, ((arg, op, a, b), ...)) rows.

    Rows for one syscall are alternatives: the first that matches acts.
    """
    rows = [(name, KILL, ()) for name in KILLED]
    rows += [('setuid', EPERM, ((0, SCMP_CMP_NE, uid, 0),)),
             ('setgid', EPERM, ((0, SCMP_CMP_NE, gid, 0),))]
    rows.append(('clone', KILL, ((0, SCMP_CMP_MASKED_EQ, ~CSIGNAL
                                  & 0xffffffffffffffff, 0),)))
    rows += [('clone', KILL, ((0, SCMP_CMP_MASKED_EQ, flag, 0),))
             for flag in CLONE_REQUIRED]
    rows += [('clone', KILL, ((0, SCMP_CMP_MASKED_EQ, flag, flag),))
             for flag in CLONE_FORBIDDEN]
    rows.append(('clone3', ENOSYS, ()))
    rows += [(name, EPERM, ()) for name in REFUSED]
    rows.append(('sched_setscheduler', EPERM,
                 ((1, SCMP_CMP_NE, SCHED_IDLE, 0),)))
    rows += [(name, EPERM, ()) for name in KEYRING]
    rows += [(name, ENOSYS, ()) for name in UNUSED]
    rows.append(('personality', EPERM,
                 ((0, SCMP_CMP_NE, PERSONALITY_QUERY, 0),)))
    rows += [(name, ENOSYS, ()) for name in IO_URING]
    rows += [('fallocate', EOPNOTSUPP, ((1, SCMP_CMP_MASKED_EQ, mask, value),))
             for mask, value in outside(FALLOCATE_MODES)]
    rows += [(name, EAFNOSUPPORT, ((0, SCMP_CMP_MASKED_EQ, mask, value),))
             for name in ('socket', 'socketpair')
             for mask, value in outside(SOCKET_FAMILIES)]
    rows += [('socket', EAFNOSUPPORT, (
        (0, SCMP_CMP_MASKED_EQ, 0xffffffff, AF_NETLINK),
        (2, SCMP_CMP_MASKED_EQ, mask, value)))
        for mask, value in outside(NETLINK_PROTOCOLS)]
    rows += [('socket', EPROTONOSUPPORT, (
        (0, SCMP_CMP_MASKED_EQ, 0xffffffff, family),
        (2, SCMP_CMP_MASKED_EQ, mask, value)))
        for family in (AF_INET, AF_INET6)
        for mask, value in outside(INET_PROTOCOLS)]
    rows += [('ioctl', EPERM, ((1, SCMP_CMP_MASKED_EQ, 0xffffffff, number),))
             for number in sorted(TUN_DENIED.values())]
    return rows


def _check(rc: int, step: str) -> None:
    if rc < 0:
        raise OSError(-rc, 'libseccomp %s failed: %s'
                      % (step, os.strerror(-rc)))


def _context(lib: ctypes.CDLL, uid: int, gid: int) -> int:
    """A libseccomp context holding the filter; the caller releases it."""
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, 'libseccomp seccomp_init failed')
    try:
        _check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1),
               'thread synchronisation')
        for name, action, comparisons in rules(uid, gid):
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number == -1:
                if name == 'clone3':
                    continue  # older libseccomp: glibc falls back anyway
                raise OSError(errno.ENOSYS, 'libseccomp does not know the '
                              'syscall %s' % name)
            array = (ArgCmp * max(1, len(comparisons)))(
                *[ArgCmp(*row) for row in comparisons])
            _check(lib.seccomp_rule_add_array(
                ctx, action, number, len(comparisons), array),
                'rule for %s' % name)
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return ctx


def install(uid: int, gid: int) -> None:
    """Load the filter into this process (and every thread), for good.

    :param uid: the only uid ``setuid`` may switch to.
    :param gid: the only gid ``setgid`` may switch to.
    :raises OSError: libseccomp is missing, does not know a syscall the
        filter must cover, or the kernel refused the filter.
    """
    lib = _library()
    ctx = _context(lib, uid, gid)
    try:
        _check(lib.seccomp_load(ctx), 'load')
    finally:
        lib.seccomp_release(ctx)


def export(uid: int, gid: int) -> bytes:
    """The filter of :func:`install` as the kernel's BPF program (an
    array of ``struct sock_filter``), for the launcher's compiled front,
    which loads it with ``seccomp(SECCOMP_SET_MODE_FILTER)`` after
    setting no_new_privs, as ``seccomp_load`` does.

    :raises OSError: as :func:`install`, or the export failed.
    """
    lib = _library()
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    ctx = _context(lib, uid, gid)
    fd = os.memfd_create('xen-dm-restrict-seccomp', os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), 'export')
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)
        lib.seccomp_release(ctx)
