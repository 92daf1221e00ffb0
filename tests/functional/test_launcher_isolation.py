"""What a compromised device model can still try, against a real QEMU
started through the launcher (root only): fork bombs, memory, the host's
network, and a log past RLIMIT_FSIZE.

The "compromised QEMU" is a process the test starts with exactly the
QEMU's own identity, cgroups and limits (copied from /proc of the running
QEMU), which is what code QEMU was tricked into running would have.
"""

import os
import resource
import socket
import subprocess
import sys
import time
import traceback
import uuid as uuid_mod

import pytest

from tests.functional import hostenv
from tests.functional import qemuenv


@pytest.fixture(params=qemuenv.KINDS)
def env(tmp_path, request):
    """A host configuration; the test runs through the Python launcher
    and through the compiled front with its service.
    """
    hostenv.require_root()
    hostenv.require_tool(hostenv.QEMU)
    hostenv.require_cgroups()
    made = hostenv.make_env(tmp_path, with_reaper=False)
    service = qemuenv.use_front(made) if request.param == 'front' else None
    yield made
    if service is not None:
        service.kill()
        service.wait()
    for uid in range(made.first, made.first + 3):
        hostenv.kill_uid(uid, rounds=1)


def _start(env, uid, extra=(), **config):
    if config:
        env.write_config(**config)
    settings = env.settings()
    qemu = qemuenv.Qmp(env, qemuenv.BASE_ARGS + list(extra)
                       + qemuenv.restriction_args(settings, uid))
    assert 'QMP' in qemu.read()
    assert qemu.command('qmp_capabilities') == {'return': {}}
    assert qemu.command('query-status')['return']['running']
    return settings, qemu


class DeviceModelCode:
    """Python ``code`` run in a forked child with the identity, cgroups and
    rlimits of the process ``pid`` (a device model); what the code prints
    comes back through a pipe.
    """

    def __init__(self, pid: int, code: str):
        status = qemuenv.status(pid)
        uid = int(status['Uid'].split()[0])
        gid = int(status['Gid'].split()[0])
        limit = int(qemuenv.limits(pid)['Max processes'][0])
        groups = []
        with open('/proc/%d/cgroup' % pid) as handle:
            for line in handle:
                _, controllers, path = line.rstrip('\n').split(':', 2)
                groups.append((controllers, path))
        read_fd, write_fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            code_rc = 1
            try:
                os.close(read_fd)
                sys.stdout = os.fdopen(write_fd, 'w')
                for mount in hostenv.cgroup_mounts():
                    for controllers, path in groups:
                        procs = os.path.join(mount + path, 'cgroup.procs')
                        if _mount_has(mount, controllers) and \
                                os.path.exists(procs):
                            with open(procs, 'w') as handle:
                                handle.write(str(os.getpid()))
                resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
                # Should anything run out of memory, it is this child.
                with open('/proc/self/oom_score_adj', 'w') as handle:
                    handle.write('1000')
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                exec(code, {})
                code_rc = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code_rc)
        os.close(write_fd)
        self.output = os.fdopen(read_fd)

    def wait(self, timeout: float):
        """(exit status or -signal, printed text)."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
                raise AssertionError('device-model code ran too long')
            time.sleep(0.05)
        text = self.output.read()
        self.output.close()
        if os.WIFSIGNALED(status):
            return -os.WTERMSIG(status), text
        return os.WEXITSTATUS(status), text


def _mount_has(mount: str, controllers: str) -> bool:
    with open('/proc/self/mounts') as handle:
        for line in handle:
            fields = line.split()
            if fields[1] != mount:
                continue
            if fields[2] == 'cgroup2':
                return controllers == ''
            return bool(controllers) and set(controllers.split(',')) <= \
                set(fields[3].split(','))
    return False


FORK_LOOP = '''
import os, errno, time
children, refused = [], 0
for _ in range(400):
    try:
        pid = os.fork()
    except OSError as err:
        refused += err.errno == errno.EAGAIN
        continue
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
print(len(children), refused, flush=True)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
'''


def test_a_fork_loop_of_the_device_model_uid_is_capped(env):
    uid = env.first + 1
    _, qemu = _start(env, uid, device_model_max_processes='32')
    try:
        pid = qemu.pid
        threads = int(qemuenv.status(pid)['Threads'])
        returncode, out = DeviceModelCode(pid, FORK_LOOP).wait(60)
        assert returncode == 0, out
        forked, refused = map(int, out.split())
        # The uid's processes and threads (QEMU's, the loop and its
        # children) stay within 32; every other fork failed.
        assert forked + 1 + threads <= 32
        assert forked >= 1
        assert refused == 400 - forked
        assert qemu.command('query-status')['return']['running']
    finally:
        qemu.close()


MEMORY_HOG = '''
chunks = []
for _ in range(512):
    chunks.append(bytearray(1 << 20))
print('allocated', sum(map(len, chunks)) >> 20, flush=True)
'''


def test_memory_above_the_cgroup_limit_is_refused(env):
    uid = env.first + 1
    _, qemu = _start(env, uid, device_model_memory_mib='128')
    try:
        pid = qemu.pid
        returncode, out = DeviceModelCode(pid, MEMORY_HOG).wait(120)
        # 512 MiB never fit in the 128 MiB of the device model's cgroup:
        # the kernel killed the allocating process, not the host's memory.
        assert 'allocated' not in out
        assert returncode == -9
        assert qemu.command('query-status')['return']['running']
    finally:
        qemu.close()


def _tap_name() -> str:
    # libxl's name for a domain's emulated NIC, for a domain id no real
    # domain has (Xen's are below 32752), so tests cannot collide.
    return 'vif%d.0-emu' % (40000 + uuid_mod.uuid4().int % 60000)


def test_qemu_gets_its_tap_but_not_the_host_network(env):
    hostenv.require_tun()
    uid = env.first + 1
    ifname = _tap_name()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(('127.0.0.1', 0))
    listener.listen(4)
    listener.settimeout(2)
    port = listener.getsockname()[1]
    _, qemu = _start(env, uid, extra=[
        '-netdev', 'type=tap,id=net0,ifname=%s,script=no,downscript=no'
        % ifname])
    try:
        pid = qemu.pid
        assert (os.readlink('/proc/%d/ns/net' % pid)
                != os.readlink('/proc/self/ns/net'))
        # The tap is in the host's namespace, held open by QEMU: once up
        # it has a carrier, which a tap has only while a process holds it.
        subprocess.run(['ip', 'link', 'set', ifname, 'up'], check=True)
        with open('/sys/class/net/%s/carrier' % ifname) as handle:
            assert handle.read().strip() == '1'
        held = []
        for fd in os.listdir('/proc/%d/fdinfo' % pid):
            with open('/proc/%d/fdinfo/%s' % (pid, fd)) as handle:
                if 'iff:\t%s' % ifname in handle.read():
                    held.append(fd)
        assert len(held) == 1
        reply = qemu.command_args('chardev-add', {
            'id': 'probe', 'backend': {'type': 'socket', 'data': {
                'addr': {'type': 'inet', 'data': {
                    'host': '127.0.0.1', 'port': str(port)}},
                'server': False}}})
        assert 'error' in reply, reply
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        qemu.close()
        listener.close()
    deadline = time.monotonic() + 5
    while os.path.exists('/sys/class/net/%s' % ifname):
        assert time.monotonic() < deadline, 'the tap outlived QEMU'
        time.sleep(0.05)


@pytest.mark.parametrize('mode, display', [
    ('required', []),
    ('except-vnc', ['-display', 'none', '-vnc', '127.0.0.1:99']),
    ('off', [])])
def test_an_existing_tap_of_that_name_is_not_attached(env, mode, display):
    hostenv.require_tun()
    # Another user's persistent tap, or one a domain named after
    # another's: neither the launcher nor QEMU (root when it would open
    # the tap by name) may hand it to this domain, whatever the namespace.
    env.write_config(network_namespace=mode)
    uid = env.first + 1
    ifname = _tap_name()
    subprocess.run(['ip', 'tuntap', 'add', 'dev', ifname, 'mode', 'tap',
                    'user', str(uid + 1)], check=True)
    try:
        proc = subprocess.run(
            qemuenv.launch_argv(env) + qemuenv.BASE_ARGS + [
                '-netdev', 'type=tap,id=net0,ifname=%s,script=no,'
                'downscript=no' % ifname] + display
            + qemuenv.restriction_args(env.settings(), uid),
            env=env.environ(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert 'cannot open tap device %s: Device or resource busy' % (
            ifname) in proc.stderr
        assert 'exists already' in proc.stderr
        assert not os.path.exists(env.settings().chroot_dir(uid))
    finally:
        subprocess.run(['ip', 'tuntap', 'del', 'dev', ifname, 'mode',
                        'tap'], check=True)


def test_the_same_probe_connects_without_a_namespace(env):
    # The control of the test above: the probe does reach the listener
    # when the operator turned the namespace off.
    uid = env.first + 1
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(('127.0.0.1', 0))
    listener.listen(4)
    listener.settimeout(5)
    port = listener.getsockname()[1]
    _, qemu = _start(env, uid, network_namespace='off')
    try:
        reply = qemu.command_args('chardev-add', {
            'id': 'probe', 'backend': {'type': 'socket', 'data': {
                'addr': {'type': 'inet', 'data': {
                    'host': '127.0.0.1', 'port': str(port)}},
                'server': False}}})
        assert 'return' in reply, reply
        conn, _ = listener.accept()
        conn.close()
    finally:
        qemu.close()
        listener.close()


def test_a_log_past_the_file_size_limit_does_not_kill_qemu(env, tmp_path):
    uid = env.first + 1
    log = str(tmp_path / 'qemu-dm-guest.log')
    # As libxl: the log, opened for appending, is QEMU's stdout and stderr.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    settings = env.settings()
    proc = subprocess.Popen(
        qemuenv.launch_argv(env) + qemuenv.BASE_ARGS[:-2] + [
            '-qmp', 'stdio'] + qemuenv.restriction_args(settings, uid),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fd,
        env=env.environ())
    os.close(fd)
    qemu = qemuenv.Qmp.attach(proc, log)
    try:
        assert 'QMP' in qemu.read()
        qemu.command('qmp_capabilities')
        # Each reply is traced to stderr in full; the schema is large.
        assert 'return' in qemu.command_args(
            'trace-event-set-state',
            {'name': 'monitor_qmp_respond', 'enable': True})
        for _ in range(8):
            assert 'return' in qemu.command('query-qmp-schema')
        assert os.path.getsize(log) == 256 * 1024
        assert qemu.command('query-status')['return']['running']
        assert proc.poll() is None
    finally:
        qemu.close()


def _cgroup_dirs(pid: int) -> list:
    """The directories of pid's pids, memory and cpu cgroups."""
    found = []
    with open('/proc/%d/cgroup' % pid) as handle:
        for line in handle:
            _, controllers, path = line.rstrip('\n').split(':', 2)
            for mount in hostenv.cgroup_mounts():
                if path != '/' and _mount_has(mount, controllers) and (
                        set(controllers.split(',')) & {'pids', 'memory',
                                                       'cpu', ''}):
                    found.append(mount + path)
    return found


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read().strip()


@pytest.fixture
def reaper_env(tmp_path):
    hostenv.require_root()
    hostenv.require_tool(hostenv.QEMU)
    hostenv.require_cgroups()
    made = hostenv.make_env(tmp_path, with_reaper=True)
    yield made
    for uid in range(made.first, made.first + 3):
        hostenv.kill_uid(uid, rounds=1)
    made.remove_users()


def test_the_cgroup_has_the_limits_and_goes_with_the_reap(reaper_env):
    from xen_dm_restrict_plugin.host import reaper

    env = reaper_env
    uid = env.first + 1
    settings, qemu = _start(env, uid, device_model_max_processes='40',
                            device_model_memory_mib='200',
                            device_model_cpu_weight='50')
    try:
        dirs = _cgroup_dirs(qemu.pid)
        assert dirs
        for path in dirs:
            assert path.endswith('/%s/dm-%d' % (env.cgroup_parent, uid))
            files = os.listdir(path)
            if 'pids.max' in files:
                assert _read(os.path.join(path, 'pids.max')) == '40'
            if 'memory.max' in files:
                assert _read(os.path.join(path, 'memory.max')) == str(
                    200 << 20)
            if 'memory.limit_in_bytes' in files:
                assert _read(os.path.join(
                    path, 'memory.limit_in_bytes')) == str(200 << 20)
            if 'cpu.weight' in files:
                assert _read(os.path.join(path, 'cpu.weight')) == '50'
            if 'cpu.shares' in files:
                assert _read(os.path.join(path, 'cpu.shares')) == '512'
        # A second device model of the same uid is refused while the
        # first one's processes are in the group.
        second = qemuenv.Qmp(env, qemuenv.BASE_ARGS
                             + qemuenv.restriction_args(settings, uid))
        assert second.proc.wait(timeout=30) != 0
        assert 'still holds processes' in second.log_text()

        result = reaper.Reaper(env.settings()).reap(uid, 'test')
        assert qemu.proc.wait(timeout=10) == -9
        assert result.found
        for path in dirs:
            assert not os.path.exists(path)
        assert os.path.isdir(os.path.dirname(dirs[0]))
    finally:
        qemu.close()
