"""The launcher's seccomp filter: loaded into real processes and into a
real QEMU, with and without QEMU's own ``-sandbox`` (root only).
"""

import ast
import ctypes
import errno
import fcntl
import os
import socket
import struct
import subprocess
import threading

import pytest

from tests.functional import hostenv
from tests.functional import qemuenv
from xen_dm_restrict_plugin.launcher import seccomp as syscall_filter

UID = 3999001
GID = 3999002


def _require_filter():
    hostenv.require_root()
    reason = syscall_filter.available()
    if reason:
        pytest.skip(reason)


PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SYS_SECCOMP = 317  # x86_64


class _SockFprog(ctypes.Structure):
    _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.c_void_p)]


def _load_exported(bpf: bytes) -> None:
    """Load the exported program as the launcher's compiled front does
    (front.c: no_new_privs, then seccomp(SECCOMP_SET_MODE_FILTER)).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    program = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(len(bpf) // 8, ctypes.addressof(program))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'no_new_privs')
    if libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER,
                    SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(fprog)) != 0:
        raise OSError(ctypes.get_errno(), 'seccomp')


@pytest.fixture(autouse=True, params=['libseccomp', 'exported-bpf'])
def _loader(request, monkeypatch):
    """Every filter test runs twice: loaded by libseccomp (the Python
    launcher) and as the BPF the launcher service exports for the
    compiled front.
    """
    if request.param == 'exported-bpf':
        if os.uname().machine != 'x86_64':
            pytest.skip('the seccomp syscall number here is x86_64\'s')
        _require_filter()
        bpf = syscall_filter.export(UID, GID)
        monkeypatch.setattr(
            syscall_filter, 'install', lambda uid, gid: _load_exported(
                bpf if (uid, gid) == (UID, GID)
                else syscall_filter.export(uid, gid)))


def _in_filtered_child(body, install=True):
    """Run ``body()`` in a forked child after loading the filter (without
    it when ``install`` is false); return (exit status or -signal, what
    body returned as text).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        rc = 1
        try:
            os.close(read_fd)
            if install:
                syscall_filter.install(UID, GID)
            os.write(write_fd, str(body()).encode())
            rc = 0
        finally:
            os._exit(rc)
    os.close(write_fd)
    with os.fdopen(read_fd) as handle:
        text = handle.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status), text
    return os.WEXITSTATUS(status), text


def _try(call, *args):
    try:
        call(*args)
    except OSError as err:
        return err.errno
    return 0


def test_ids_switch_only_to_the_device_model_ids():
    _require_filter()

    def body():
        with open('/proc/self/status') as handle:
            mode = [line.split()[1] for line in handle
                    if line.startswith(('Seccomp:', 'NoNewPrivs:'))]
        return [mode, _try(os.setgid, GID + 1), _try(os.setgid, GID),
                _try(os.setgroups, [GID]), _try(os.setuid, UID + 1),
                _try(os.setuid, UID), _try(os.setuid, 0)]

    rc, text = _in_filtered_child(body)
    assert rc == 0, text
    # no_new_privs and seccomp mode 2; other ids EPERM (QEMU's own check
    # that setuid(0) fails after the drop relies on that), the device
    # model's ids work.
    assert text == str([['1', '2'], 1, 0, 0, 1, 0, 1])


def test_threads_work_but_a_new_process_kills():
    _require_filter()

    def body():
        ran = []
        thread = threading.Thread(target=ran.append, args=(1,))
        thread.start()
        thread.join()
        if ran == [1]:
            os.fork()
        return 'forked'

    rc, text = _in_filtered_child(body)
    # The thread ran (clone3 ENOSYS, then clone with the thread flags);
    # fork killed the whole process as QEMU's spawn=deny does.
    assert (rc, text) == (-31, '')


def test_other_abis_and_namespaces_kill():
    _require_filter()
    libc = ctypes.CDLL(None, use_errno=True)
    x32_getpid = 0x40000000 | 39
    unshare, clone_net = 272, 0x40000000
    for call in ((x32_getpid,), (unshare, clone_net)):
        rc, text = _in_filtered_child(lambda: libc.syscall(*call))
        assert (rc, text) == (-31, ''), call


def test_scheduling_changes_fail():
    _require_filter()

    def body():
        return [_try(os.setpriority, os.PRIO_PROCESS, 0, 5),
                _try(os.sched_setaffinity, 0, {0})]

    rc, text = _in_filtered_child(body)
    assert (rc, text) == (0, str([1, 1]))


# x86_64 numbers, as above.
SYS_SOCKET, SYS_ADD_KEY, SYS_KEYCTL, SYS_FALLOCATE = 41, 248, 250, 285
SYS_IO_URING_SETUP = 425
AF_VSOCK = 40
HIGH = 1 << 32  # set in the register, not in the int the kernel reads


def _syscall(number, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(ctypes.c_long(number),
                      *[ctypes.c_long(arg) for arg in args])
    if rc >= 0:
        if number in (SYS_SOCKET, SYS_IO_URING_SETUP):
            os.close(rc)
        return 0
    return ctypes.get_errno()


def test_io_uring_is_unavailable():
    # A ring's operations (socket, fallocate, ...) never pass seccomp.
    _require_filter()
    params = ctypes.create_string_buffer(120)

    def body():
        return _syscall(SYS_IO_URING_SETUP, 4, ctypes.addressof(params))

    control = body()  # without the filter
    if control != 0:
        pytest.skip('io_uring is not available here (errno %d)' % control)
    rc, text = _in_filtered_child(body)
    assert (rc, text) == (0, '38')  # ENOSYS


def test_fallocate_cannot_reserve_space_past_the_size_limit(tmp_path):
    _require_filter()
    target = tmp_path / 'log'
    target.write_bytes(b'x' * 8192)
    keep, punch, zero = 0x01, 0x02, 0x10

    def body():
        fd = os.open(str(target), os.O_WRONLY | os.O_APPEND)
        try:
            return [_syscall(SYS_FALLOCATE, fd, mode, 0, 4096) for mode in (
                0, punch | keep, zero, keep, keep | HIGH, zero | keep,
                0x20, HIGH | 0x80)]
        finally:
            os.close(fd)

    control = body()  # without the filter
    rc, text = _in_filtered_child(body)
    assert rc == 0, text
    eopnotsupp = 95
    # The modes QEMU uses do what they do unfiltered; KEEP_SIZE (which
    # allocates past the end without meeting RLIMIT_FSIZE) and unknown
    # modes fail with EOPNOTSUPP, whatever the upper register half holds.
    assert control[3] == 0
    assert text == str(control[:3] + [eopnotsupp] * 5)


def test_keyrings_and_foreign_socket_families_fail():
    _require_filter()

    def body():
        return [_syscall(SYS_ADD_KEY, 0, 0, 0, 0, 0),
                _syscall(SYS_KEYCTL, 0, 0),
                _syscall(SYS_SOCKET, AF_VSOCK, socket.SOCK_STREAM, 0),
                _syscall(SYS_SOCKET, AF_VSOCK | HIGH, socket.SOCK_STREAM, 0),
                _syscall(SYS_SOCKET, socket.AF_PACKET, socket.SOCK_RAW, 0),
                _syscall(SYS_SOCKET, socket.AF_UNIX, socket.SOCK_STREAM, 0),
                _syscall(SYS_SOCKET, socket.AF_INET, socket.SOCK_DGRAM, 0),
                _syscall(SYS_SOCKET, socket.AF_INET6, socket.SOCK_DGRAM, 0)]

    control = body()  # without the filter
    rc, text = _in_filtered_child(body)
    assert rc == 0, text
    eperm, eafnosupport = 1, 97
    # Unfiltered, add_key with a NULL type fails with EFAULT, not EPERM.
    assert control[0] != eperm and control[5:] == [0, 0, 0]
    assert text == str([eperm, eperm] + [eafnosupport] * 3 + [0, 0, 0])


@pytest.fixture
def env(tmp_path):
    hostenv.require_root()
    hostenv.require_tool(hostenv.QEMU)
    hostenv.require_cgroups()
    _require_filter()
    made = hostenv.make_env(tmp_path, with_reaper=False)
    yield made
    for uid in range(made.first, made.first + 3):
        hostenv.kill_uid(uid, rounds=1)


def _qemu_filters(env, uid, args):
    qemu = qemuenv.Qmp(env, qemuenv.BASE_ARGS + args)
    try:
        assert 'QMP' in qemu.read()
        assert qemu.command('qmp_capabilities') == {'return': {}}
        assert qemu.command('query-status')['return']['running']
        status = qemuenv.status(qemu.pid)
        assert status['Uid'].split() == [str(uid)] * 4
        return (status['Seccomp'].strip(),
                int(status['Seccomp_filters'].strip()))
    finally:
        qemu.close()


def _without_sandbox(settings, uid):
    args = qemuenv.restriction_args(settings, uid)
    at = args.index('-sandbox')
    return args[:at] + args[at + 2:]


def test_a_qemu_without_sandbox_gets_the_launchers_filter(env):
    uid = env.first + 1
    settings = env.settings()
    assert _qemu_filters(env, uid, _without_sandbox(settings, uid)) == (
        '2', 1)
    # With its own -sandbox, QEMU adds its filter to the launcher's.
    assert _qemu_filters(env, uid, qemuenv.restriction_args(
        settings, uid)) == ('2', 2)
    env.write_config(launcher_seccomp='false')
    settings = env.settings()
    assert _qemu_filters(env, uid, _without_sandbox(settings, uid)) == (
        '0', 0)


@pytest.mark.parametrize('value', ['off', 'on', 'on,spawn=allow'])
def test_a_weaker_sandbox_is_not_taken_for_qemus_filter(env, value):
    # Only the hook's -sandbox policy is accepted: "off" or a weaker one
    # would leave QEMU with the launcher's filter alone.
    settings = env.settings()
    uid = env.first + 1
    args = _without_sandbox(settings, uid) + ['-sandbox', value]
    proc = subprocess.run(qemuenv.launch_argv(env) + qemuenv.BASE_ARGS + args,
                          env=env.environ(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert '-sandbox %s is not the policy' % value in proc.stderr
    assert not os.path.exists(settings.chroot_dir(uid))


CLONE_NEWNET = 0x40000000
NETLINK_KOBJECT_UEVENT = 15
TAP = 'vif%d.0-emu' % (40000 + os.getpid() % 60000)


def _tap_attack(filtered: bool):
    """In a network namespace of its own (gone with the child), open a tap
    as the launcher does, then, as the device model would, try to keep,
    give away and rename it; report each call's errno (0: it worked).
    """
    from xen_dm_restrict_plugin.launcher import network

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        rc = 1
        try:
            os.close(read_fd)
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.unshare(CLONE_NEWNET) == 0
            fd = network.open_tap(TAP)
            if filtered:
                syscall_filter.install(UID, GID)
            deny = syscall_filter.TUN_DENIED
            mac = struct.pack('16sH6s8x', TAP.encode(), 1,
                              bytes.fromhex('02aabbccddee'))
            found = {
                'TUNSETPERSIST': _try(fcntl.ioctl, fd,
                                      deny['TUNSETPERSIST'], 1),
                'TUNSETOWNER': _try(fcntl.ioctl, fd, deny['TUNSETOWNER'],
                                    UID),
                'TUNSETGROUP': _try(fcntl.ioctl, fd, deny['TUNSETGROUP'],
                                    GID),
                'SIOCSIFHWADDR': _try(fcntl.ioctl, fd,
                                      deny['SIOCSIFHWADDR'], mac),
                'TUNSETLINK': _try(fcntl.ioctl, fd, deny['TUNSETLINK'], 1),
                # What QEMU does with the descriptor keeps working.
                'TUNSETSNDBUF': _try(fcntl.ioctl, fd, 0x400454d4,
                                     struct.pack('i', 1 << 20)),
                'TUNGETIFF': _try(fcntl.ioctl, fd, 0x800454d2,
                                  bytearray(40)),
            }
            os.write(write_fd, repr(found).encode())
            rc = 0
        finally:
            os._exit(rc)
    os.close(write_fd)
    with os.fdopen(read_fd) as handle:
        text = handle.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, text
    return eval(text)  # noqa: S307 - our own child's repr of a dict


def test_the_tap_descriptor_cannot_be_kept_given_away_or_renamed():
    _require_filter()
    if not os.path.exists('/dev/net/tun'):
        pytest.skip('no /dev/net/tun')
    found = _tap_attack(filtered=True)
    for name in ('TUNSETPERSIST', 'TUNSETOWNER', 'TUNSETGROUP',
                 'SIOCSIFHWADDR', 'TUNSETLINK'):
        assert found[name] == errno.EPERM, (name, found)
    assert found['TUNSETSNDBUF'] == 0 and found['TUNGETIFF'] == 0


def test_the_same_tap_calls_work_unfiltered():
    # The control: without the filter each call does what the attack
    # needs (the tap, persistent now, dies with the child's namespace).
    _require_filter()
    if not os.path.exists('/dev/net/tun'):
        pytest.skip('no /dev/net/tun')
    found = _tap_attack(filtered=False)
    assert set(found.values()) == {0}, found


def _netlink(protocol):
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    sock.close()


def test_only_route_netlink_is_open_to_the_device_model():
    _require_filter()
    assert _try(_netlink, NETLINK_KOBJECT_UEVENT) == 0  # the control

    def body():
        return [_try(_netlink, NETLINK_KOBJECT_UEVENT),
                _try(_netlink, socket.NETLINK_ROUTE)]

    rc, text = _in_filtered_child(body)
    assert rc == 0, text
    assert text == str([errno.EAFNOSUPPORT, 0])


SYS_MODIFY_LDT, SYS_PERSONALITY, SYS_USERFAULTFD = 154, 135, 323
SYS_PIDFD_OPEN, SYS_IOPRIO_SET, SYS_SCHED_SETATTR = 434, 251, 314
IPPROTO_SCTP, IPPROTO_DCCP = 132, 33
ADDR_NO_RANDOMIZE = 0x0040000


def test_calls_a_device_model_never_makes_are_unavailable():
    """Issue 20: each allowed before, each an exploitation aid or a way
    around the resource limits, none used by a Xen device model.
    """
    _require_filter()
    ioprio_class_rt = (1 << 13) | 0

    def body():
        return [_syscall(SYS_USERFAULTFD, 0),
                _syscall(SYS_MODIFY_LDT, 0, 0, 0),
                _syscall(SYS_PIDFD_OPEN, 1, 0),
                # who = IOPRIO_WHO_PROCESS, pid 0: the calling child only
                _syscall(SYS_IOPRIO_SET, 1, 0, ioprio_class_rt),
                _syscall(SYS_SCHED_SETATTR, 0, 0, 0),
                _syscall(SYS_PERSONALITY, ADDR_NO_RANDOMIZE),
                _syscall(SYS_PERSONALITY, 0xffffffff) >= 0,
                _syscall(SYS_SOCKET, socket.AF_INET, socket.SOCK_STREAM,
                         IPPROTO_SCTP),
                _syscall(SYS_SOCKET, socket.AF_INET6, socket.SOCK_DGRAM,
                         IPPROTO_DCCP | HIGH),
                _syscall(SYS_SOCKET, socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP),
                _syscall(SYS_SOCKET, socket.AF_INET6, socket.SOCK_DGRAM,
                         socket.IPPROTO_UDP)]

    # The control runs in a child too: it changes its own personality.
    _, control = _in_filtered_child(body, install=False)
    control = ast.literal_eval(control)
    rc, text = _in_filtered_child(body)
    assert rc == 0, text
    enosys, eperm, eprotonosupport = 38, 1, 93
    # Unfiltered, each call gets past the filter's answer (root may even
    # succeed, or fail for its arguments): never the filter's errno.
    assert control[0] != enosys and control[2] != enosys
    assert control[5] != eperm and control[6]
    assert text == str([enosys, enosys, enosys, eperm, eperm, eperm, True,
                        eprotonosupport, eprotonosupport, 0, 0])
