"""libvirtd's compiled hook and the hook service, at their edges.

Every hook test of test_libvirt_hook.py also runs through the compiled
client and a running service (its ``service`` half); here are what only
this pair does: the fallback to the Python hook, whom the client trusts,
a service that ends without an answer, whom the service answers, and
what ``install-hook`` writes.  Needs root (the service, the compiled
hook's install).
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests import base
from tests.functional import hostenv
from xen_dm_restrict_plugin.daemon_hook import operations
from xen_dm_restrict_plugin.daemon_hook import service as hook_service


@pytest.fixture
def env(tmp_path):
    hostenv.require_root()
    made = hostenv.make_env(tmp_path, with_reaper=False)
    yield made
    made.remove_users()


def _client(tmp: str, python: str = sys.executable, timeout_ms=None,
            acted=operations.ACTED_ON, path=None) -> str:
    return hostenv.compile_hook_client(
        os.path.join(tmp, 'client-%d' % len(os.listdir(tmp))), python,
        acted, timeout_ms, path)


def _run(client, env, operation='prepare', sub='begin', xml=None,
         socket_path=None):
    environ = env.environ()
    if socket_path:
        environ[hook_service.SOCKET_ENV] = socket_path
    return subprocess.run(
        [client, 'fixture-hvm', operation, sub, '-'],
        input=(xml or base.fixture('hvm.xml')).encode(),
        capture_output=True, env=environ, timeout=60)


def test_without_the_service_the_client_runs_the_python_hook(env):
    client = _client(env.tmp)
    proc = _run(client, env)
    # The plain HVM domain is refused by the Python hook itself.
    assert proc.returncode == 2, proc.stderr
    assert b'xen-dm-restrict-libvirt-hook: refused' in proc.stderr


def test_ignored_operations_neither_read_stdin_nor_ask(env):
    client = _client(env.tmp, python=hostenv.NO_FALLBACK)
    for operation, sub in (('start', 'begin'), ('reconnect', 'begin'),
                           ('stopped', 'begin'), ('prepare', 'end')):
        proc = subprocess.Popen([client, 'vm', operation, sub, '-'],
                                stdin=subprocess.PIPE, env={})
        try:
            assert proc.wait(timeout=10) == 0
        finally:
            proc.stdin.close()


def test_started_begin_is_handed_on_only_for_a_console(env):
    """``started begin`` only relays a VNC console: without a graphics
    element the client reads the XML and exits 0 without asking anyone;
    with one, the worker (here the Python hook, no service running) gets
    the whole XML on its stdin, however the pipe cut it.
    """
    client = _client(env.tmp, python=hostenv.NO_FALLBACK)
    missing = os.path.join(env.tmp, 'no-service.sock')
    plain = base.edit(base.fixture('hvm.xml'), lambda root: root.find(
        'devices').remove(root.find('devices/graphics'))).encode()
    assert b'<graphics' not in plain
    big = plain.replace(b'</domain>', b'<!--%s--></domain>' % (
        b'x' * 200000))
    for xml in (plain, big):
        proc = subprocess.run([client, 'vm', 'started', 'begin', '-'],
                              input=xml, capture_output=True, timeout=30,
                              env={hook_service.SOCKET_ENV: missing})
        assert (proc.returncode, proc.stderr) == (0, b'')
    # The Python hook is asked, and reads what libvirtd wrote.
    dump = os.path.join(env.tmp, 'stdin-dump')
    python = os.path.join(env.tmp, 'python-dump')
    with open(python, 'w') as script:
        script.write('#!/bin/sh\ncat > %s\nexit 3\n' % dump)
    os.chmod(python, 0o755)
    client = _client(env.tmp, python=python)
    text = plain.decode()
    handed_on = [
        big.replace(b'<devices>', b'<devices>' + b' ' * cut +
                    b"<graphics type='vnc' port='5900'/>", 1)
        for cut in (0, 65536 - 4, 65536 + 1, 200000)] + [
        # Other encodings need not hold "<graphics" as ASCII bytes (the
        # parser would find it in UTF-16): handed on, as is a declared one.
        text.replace('<devices>', "<devices><graphics type='vnc'/>").encode(
            'utf-16'),
        b"<?xml version='1.0' encoding='latin-1'?>" + plain,
        plain.replace(b'<devices>', b'<devices>\0')]
    for xml in handed_on:
        proc = subprocess.run([client, 'vm', 'started', 'begin', '-'],
                              input=xml, capture_output=True, timeout=30,
                              env={hook_service.SOCKET_ENV: missing})
        assert proc.returncode == 3, proc.stderr
        with open(dump, 'rb') as handle:
            assert handle.read() == xml


def _wait_for_spares(server_pid: int, count: int = 2) -> list:
    """The pids of ``count`` spare workers of the service, once each
    waits for a call (it imported the hook's modules): spares start
    under SCHED_IDLE, so on a busy host that takes a while.
    """
    deadline = time.monotonic() + 120
    while True:
        with open('/proc/%d/task/%d/children' % (
                server_pid, server_pid)) as handle:
            pids = [int(x) for x in handle.read().split()]
        waits = []
        for pid in pids:
            try:
                with open('/proc/%d/wchan' % pid) as handle:
                    waits.append(handle.read())
            except OSError:
                waits.append('')
        if len(pids) == count and all(
                'skb_wait' in wait or 'recv' in wait for wait in waits):
            return pids
        assert time.monotonic() < deadline, list(zip(pids, waits))
        time.sleep(0.05)


def _listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(path)
    sock.listen(4)
    return sock


def test_a_service_not_run_by_root_is_not_asked(env):
    """A socket of another user's answering "allowed" is never asked:
    the client runs the Python hook, which refuses.
    """
    path = os.path.join(env.tmp, 'fake.sock')
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            # The peer's credentials are those of listen().
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.bind(path)
            os.setgid(65534)
            os.setuid(65534)
            with sock:
                sock.listen(4)
                os.write(ready_w, b'x')
                while True:
                    conn, _ = sock.accept()
                    conn.sendall(hook_service.MAGIC + b'\0\0\0\0')
                    conn.close()
        finally:
            os._exit(0)
    try:
        os.close(ready_w)
        assert os.read(ready_r, 1) == b'x'
        proc = _run(_client(env.tmp), env, socket_path=path)
        assert proc.returncode == 2, proc.stderr
        assert b'refused' in proc.stderr
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(ready_r)


def test_a_service_that_never_takes_the_call_is_not_waited_for(env):
    """A service that is stopped (or its queue full) never says it holds
    the call: after the timeout the client runs the Python hook.
    """
    path = os.path.join(env.tmp, 'stopped.sock')
    with _listener(path):
        proc = _run(_client(env.tmp, timeout_ms=300), env, socket_path=path)
    assert proc.returncode == 2, proc.stderr
    assert b'xen-dm-restrict-libvirt-hook: refused' in proc.stderr


def test_a_service_that_ends_without_answering_fails_the_call(env):
    """Once a worker may have read its request the client never falls
    back (it may have read the XML and acted): no answer is an error.
    """
    path = os.path.join(env.tmp, 'mute.sock')
    with _listener(path) as sock:
        client = _client(env.tmp)
        proc = subprocess.Popen(
            [client, 'fixture-hvm', 'prepare', 'begin', '-'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env.environ(), **{hook_service.SOCKET_ENV: path}))
        conn, _ = sock.accept()
        conn.send(hook_service.ACCEPTED)
        data, ancillary, _, _ = conn.recvmsg(
            hook_service.MAX_REQUEST, socket.CMSG_SPACE(16))
        call = hook_service.parse(data)
        assert call.args == ['fixture-hvm', 'prepare', 'begin', '-']
        assert call.environ[b'XEN_DM_RESTRICT_CONFIG'] == \
            env.config.encode()
        assert call.build == hook_service.build_id(operations.ACTED_ON)
        fds = ancillary[0][2]
        assert len(fds) == 16
        for fd in memoryview(fds).cast('i'):
            os.close(fd)
        conn.close()
        out, err = proc.communicate(base.fixture('hvm.xml').encode(),
                                    timeout=30)
    assert proc.returncode == 1
    assert b'ended without an answer' in err
    assert b'refused' not in err


@pytest.fixture
def service():
    # Outside pytest's root-only temporary tree: other users reach it.
    tmp = tempfile.mkdtemp(prefix='xdr-hook-')
    os.chmod(tmp, 0o755)
    try:
        made = hostenv.HookService(os.path.join(tmp, 'svc'))
        os.chmod(made.tmp, 0o755)
        yield made
        made.stop()
    finally:
        shutil.rmtree(tmp)


def test_the_service_answers_root_only(env, service):
    os.chmod(os.path.dirname(service.socket), 0o755)
    os.chmod(service.socket, 0o777)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.connect(service.socket)
                s.settimeout(10)
                status = 0 if s.recv(16) == b'' else 3
        finally:
            os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0
    assert 'answers root only' in service.log_text()


PROBE = """import atexit, os, resource, sys, time


def main(args):
    # libvirtd reads the hook's output until every copy of its pipes is
    # closed: whatever the worker does after the call must not hold them.
    atexit.register(time.sleep, 60)
    print(os.getpid(), os.getppid(), oct(os.umask(0)), os.getcwd(),
          '%d/%d' % (os.getpriority(os.PRIO_PROCESS, 0),
                     os.sched_getscheduler(0)),
          resource.getrlimit(resource.RLIMIT_NOFILE)[0],
          hash('xen-dm-restrict'), os.environ.get('PROBE'), args,
          file=sys.stderr)
    print(sys.stdin.read().strip(), file=sys.stderr)
    return 7
"""

SERVE_PROBE = """import sys
sys.path.insert(0, sys.argv[2])
from xen_dm_restrict_plugin.daemon_hook import service
from xen_dm_restrict_plugin.launcher import service as launch_service
listener = launch_service.listen(sys.argv[1])
print('ready', flush=True)
service.Service(2, 'xdr_probe:main',
                *[float(x) for x in sys.argv[3:]]).serve(listener)
"""


@pytest.mark.parametrize('sys_nice', [True, False],
                         ids=['with-cap-sys-nice', 'without-cap-sys-nice'])
def test_each_call_is_a_fresh_process_with_the_callers_attributes(
        env, tmp_path, sys_nice):
    """Each call runs in a worker of its own, started ahead with a fresh
    exec (its own hash seed and address-space layout), with the client's
    umask, working directory, nice value, limits, environment and
    descriptors, under the normal scheduling policy.  Spare workers wait
    under SCHED_IDLE, unless the service could not take them out of it
    again (no CAP_SYS_NICE: a unit with a reduced bounding set).
    """
    prefix = []
    if not sys_nice:
        hostenv.require_tool('setpriv')
        prefix = ['setpriv', '--bounding-set=-sys_nice']
    probe_dir = tmp_path / 'probe'
    probe_dir.mkdir()
    (probe_dir / 'xdr_probe.py').write_text(PROBE)
    path = os.path.join(env.tmp, 'probe.sock')
    server = subprocess.Popen(
        prefix + [sys.executable, '-c', SERVE_PROBE, path, str(probe_dir)],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=hostenv.ROOT))
    try:
        assert server.stdout.readline() == b'ready\n'
        client = _client(env.tmp, python=hostenv.NO_FALLBACK)
        workdir = tmp_path / 'cwd'
        workdir.mkdir()
        seen = []
        for _ in range(2):
            proc = subprocess.run(
                ['/bin/sh', '-c', 'umask 027; ulimit -n 333; exec nice -n 3 '
                 '"$@"', 'sh', client, 'vm', 'prepare', 'begin', '-'],
                input=b'<domain/>', capture_output=True, cwd=str(workdir),
                env={hook_service.SOCKET_ENV: path, 'PROBE': 'seen',
                     'PATH': os.environ['PATH']}, timeout=30)
            assert proc.returncode == 7, proc.stderr
            first, second = proc.stderr.decode().splitlines()
            pid, ppid, mask, cwd, nice, files, seed, probe, args = \
                first.split(' ', 8)
            assert int(ppid) == server.pid
            # The caller's nice value, under the normal policy.
            assert (mask, cwd, nice, files, probe) == (
                '0o27', str(workdir), '3/%d' % os.SCHED_OTHER, '333',
                'seen')
            assert args == "['vm', 'prepare', 'begin', '-']"
            assert second == '<domain/>'
            seen.append((pid, seed))
        assert seen[0][0] != seen[1][0]
        # A fresh interpreter each: another hash seed.
        assert seen[0][1] != seen[1][1]
        # The spare workers started after the calls wait under
        # SCHED_IDLE: they take no CPU time from the domain's start.
        # setpriv execs the server: its pid stays the server's.
        spare = _wait_for_spares(server.pid)
        assert [os.sched_getscheduler(pid) for pid in spare] == [
            os.SCHED_IDLE if sys_nice else os.SCHED_OTHER] * 2
    finally:
        server.kill()
        server.wait()


def test_spent_workers_are_replaced_when_calls_pause_or_none_is_left(
        env, tmp_path):
    """A start's calls come seconds apart: while a spare is left, the
    worker a call spent is replaced only after a pause (here 60 s, so
    never during the test); once none is left, at once.
    """
    probe_dir = tmp_path / 'probe'
    probe_dir.mkdir()
    (probe_dir / 'xdr_probe.py').write_text(PROBE)
    path = os.path.join(env.tmp, 'refill.sock')
    server = subprocess.Popen(
        [sys.executable, '-c', SERVE_PROBE, path, str(probe_dir), '60'],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=hostenv.ROOT))
    try:
        assert server.stdout.readline() == b'ready\n'
        client = _client(env.tmp, python=hostenv.NO_FALLBACK)
        first = _wait_for_spares(server.pid)

        def call():
            proc = subprocess.run(
                [client, 'vm', 'prepare', 'begin', '-'], input=b'<domain/>',
                capture_output=True, timeout=60,
                env={hook_service.SOCKET_ENV: path,
                     'PATH': os.environ['PATH']})
            assert proc.returncode == 7, proc.stderr
            return int(proc.stderr.split()[0])

        served = call()
        assert served in first
        left = [pid for pid in first if pid != served]
        # The other spare, and no replacement yet.
        assert _wait_for_spares(server.pid, 1) == left
        time.sleep(2)
        assert _wait_for_spares(server.pid, 1) == left
        assert call() == left[0]
        # No spare left: two new ones at once.
        again = _wait_for_spares(server.pid)
        assert not set(again) & set(first)
    finally:
        server.kill()
        server.wait()


def test_a_client_built_otherwise_is_refused_with_the_remedy(env, service):
    client = _client(env.tmp, python=hostenv.NO_FALLBACK,
                     acted=operations.ACTED_ON + (('start', 'begin'),))
    proc = _run(client, env, socket_path=service.socket)
    assert proc.returncode == 1
    assert b'run xen-dm-restrict install-hook again' in proc.stderr


def test_an_upgraded_package_is_used_from_the_next_call(env, tmp_path):
    """The service's workers find their package changed on disk: the
    call runs the Python hook (the new code) and the service exits, for
    its init system to start it again.
    """
    copy = tmp_path / 'site'
    shutil.copytree(os.path.join(hostenv.ROOT, 'xen_dm_restrict_plugin'),
                    str(copy / 'xen_dm_restrict_plugin'),
                    ignore=shutil.ignore_patterns('__pycache__'))
    os.chmod(str(tmp_path), 0o755)
    socket_path = os.path.join(env.tmp, 'run', 'upgrade.sock')
    os.makedirs(os.path.dirname(socket_path), mode=0o700)
    environ = dict(env.environ(), PYTHONPATH=str(copy))
    environ[hook_service.SOCKET_ENV] = socket_path
    server = subprocess.Popen(
        [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.hook_service'],
        env=environ, cwd=str(copy), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(socket_path):
            assert server.poll() is None and time.monotonic() < deadline, \
                server.stderr.read()
            time.sleep(0.05)
        path = [str(copy)] + [entry for entry in sys.path[1:]
                              if os.path.isabs(entry)]
        client = _client(env.tmp, path=path)
        proc = _run(client, env, socket_path=socket_path)
        assert proc.returncode == 2, proc.stderr
        # The spares hold the code of before the upgrade (a spare that
        # imports after it serves the new code, and is not stale).
        _wait_for_spares(server.pid)
        hook = copy / 'xen_dm_restrict_plugin' / 'daemon_hook' / 'hook.py'
        hook.write_text(hook.read_text().replace(
            "def handle(self, domain", "def handle(self, domain", 1)
            + '\n# upgraded\n')
        proc = _run(client, env, socket_path=socket_path)
        # The Python hook answered (the service's workers did not).
        assert proc.returncode == 2, proc.stderr
        assert server.wait(timeout=30) == hook_service.EXIT_STALE
        assert b'changed on disk' in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_service_with_an_import_path_others_can_write_does_not_start(
        env, tmp_path):
    open_dir = tmp_path / 'open'
    open_dir.mkdir()
    os.chmod(str(open_dir), 0o777)
    proc = subprocess.run(
        hostenv.module('xen_dm_restrict_plugin.cmd.hook_service')
        + ['--socket', os.path.join(env.tmp, 'never.sock')],
        env=dict(env.environ(), PYTHONPATH=str(open_dir) + os.pathsep
                 + hostenv.ROOT), capture_output=True, timeout=60)
    assert proc.returncode != 0
    assert b'is not root\'s alone' in proc.stderr
    assert not os.path.exists(os.path.join(env.tmp, 'never.sock'))


def test_install_hook_compiles_the_client_or_writes_the_script(env):
    path = os.path.join(env.tmp, 'libxl')
    made = subprocess.run(
        hostenv.module('xen_dm_restrict_plugin.cmd.cli')
        + ['install-hook', path], env=env.environ(),
        capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    with open(path, 'rb') as handle:
        assert handle.read(4) == b'\x7fELF'
    assert 'compiled hook' in made.stdout
    script = os.path.join(env.tmp, 'libxl-script')
    made = subprocess.run(
        hostenv.module('xen_dm_restrict_plugin.cmd.cli')
        + ['install-hook', '--script-only', script], env=env.environ(),
        capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    with open(script, 'rb') as handle:
        assert handle.read(9) == b'#!/bin/sh'
    for hook in (path, script):
        proc = _run(hook, env)
        assert proc.returncode == 2, proc.stderr
        assert b'xen-dm-restrict-libvirt-hook: refused' in proc.stderr


def test_preflight_says_whether_the_compiled_hook_is_served(env, service):
    from xen_dm_restrict_plugin.host import preflight

    hooks = os.path.join(env.tmp, 'hooks')
    os.mkdir(hooks)
    with open(os.path.join(hooks, 'libxl'), 'wb') as handle:
        handle.write(open(_client(env.tmp), 'rb').read())
    os.chmod(os.path.join(hooks, 'libxl'), 0o755)
    saved = os.environ.get(hook_service.SOCKET_ENV)
    try:
        os.environ[hook_service.SOCKET_ENV] = os.path.join(env.tmp, 'none')
        found, startup = preflight.check_hook(hooks)
        assert (found.status, startup.status) == (preflight.OK,
                                                  preflight.WARN)
        assert 'no hook service answers' in startup.detail
        os.environ[hook_service.SOCKET_ENV] = service.socket
        assert preflight.check_hook(hooks)[1].status == preflight.OK
    finally:
        if saved is None:
            os.environ.pop(hook_service.SOCKET_ENV)
        else:
            os.environ[hook_service.SOCKET_ENV] = saved


def test_preflight_fails_a_compiled_hook_of_another_build(env):
    from xen_dm_restrict_plugin.host import preflight

    hooks = os.path.join(env.tmp, 'hooks-stale')
    os.mkdir(hooks)
    stale = _client(env.tmp, acted=operations.ACTED_ON + (('start',
                                                           'begin'),))
    shutil.copy(stale, os.path.join(hooks, 'libxl'))
    build = hook_service.build_id(operations.ACTED_ON)
    found, startup = preflight.check_hook(hooks, build)
    assert (found.status, startup.status) == (preflight.OK, preflight.FAIL)
    assert 'install-hook again' in startup.detail
    shutil.copy(_client(env.tmp), os.path.join(hooks, 'libxl'))
    assert preflight.check_hook(hooks, build)[1].status != preflight.FAIL
