"""libvirtd's compiled hook and the hook service, at their edges.

Every hook test of test_libvirt_hook.py also runs through the compiled
client and a running service (its ``service`` half); here are what only
this pair does: the fallback to the Python hook, whom the client trusts,
a service that ends without an answer, whom the service answers, and
what ``install-hook`` writes.  Needs root (the service, the compiled
hook's install).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from tests import base
from tests.functional import hostenv
from xen_dm_restrict_plugin.cmd import host
from xen_dm_restrict_plugin.daemon_hook import operations
from xen_dm_restrict_plugin.daemon_hook import service as hook_service


@pytest.fixture
def env(tmp_path):
    hostenv.require_root()
    made = hostenv.make_env(tmp_path, with_reaper=False)
    yield made
    made.remove_users()


def _client(tmp: str, python: str = sys.executable) -> str:
    program = host.HOOK_PROGRAM % {
        'path': json.dumps([entry for entry in sys.path[1:]
                            if os.path.isabs(entry)] + [hostenv.ROOT])}
    path = os.path.join(tmp, 'client-%d' % len(os.listdir(tmp)))
    with open(path, 'wb') as handle:
        handle.write(host.compile_hook(python, program, operations.ACTED_ON))
    os.chmod(path, 0o755)
    return path


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


def test_a_service_that_ends_without_answering_fails_the_call(env):
    """Once its request is sent the client never falls back (the service
    may have read the XML and acted): no answer is an error.
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
        data, ancillary, _, _ = conn.recvmsg(
            hook_service.MAX_REQUEST, socket.CMSG_SPACE(12))
        mask, args, environ = hook_service.parse(data)
        assert args == ['fixture-hvm', 'prepare', 'begin', '-']
        assert environ[b'XEN_DM_RESTRICT_CONFIG'] == env.config.encode()
        assert mask == os.umask(mask)
        fds = ancillary[0][2]
        assert len(fds) == 12
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


def test_each_call_is_a_process_of_its_own_not_the_services_child(
        env, service):
    script = os.path.join(env.tmp, 'probe.py')
    # A hook main that reports its own process: run through the real
    # service code with a main of the test's.
    with open(script, 'w') as handle:
        handle.write(
            'import os, sys\n'
            'from xen_dm_restrict_plugin.daemon_hook import service\n'
            'from xen_dm_restrict_plugin.launcher import service as ls\n'
            'def main(args):\n'
            '    print(os.getpid(), os.getppid(), oct(os.umask(0)),\n'
            '          os.environ.get("PROBE"), args, file=sys.stderr)\n'
            '    print(sys.stdin.read().strip(), file=sys.stderr)\n'
            '    return 7\n'
            'service.standard_descriptors()\n'
            'listener = ls.listen(sys.argv[1])\n'
            'print("ready", flush=True)\n'
            'service.serve(listener, main)\n')
    path = os.path.join(env.tmp, 'probe.sock')
    probe = subprocess.Popen(
        [sys.executable, script, path], stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=hostenv.ROOT))
    try:
        assert probe.stdout.readline() == b'ready\n'
        client = _client(env.tmp, python=hostenv.NO_FALLBACK)
        environ = {hook_service.SOCKET_ENV: path, 'PROBE': 'seen'}
        proc = subprocess.run(
            ['/bin/sh', '-c', 'umask 027; exec "$@"', 'sh', client,
             'vm', 'prepare', 'begin', '-'], input=b'<domain/>',
            capture_output=True, env=environ, timeout=30)
        assert proc.returncode == 7, proc.stderr
        first, second = proc.stderr.decode().splitlines()
        pid, ppid, mask, seen, args = first.split(' ', 4)
        assert int(pid) != probe.pid
        assert int(ppid) != probe.pid
        assert (mask, seen) == ('0o27', 'seen')
        assert args == "['vm', 'prepare', 'begin', '-']"
        assert second == '<domain/>'
    finally:
        probe.kill()
        probe.wait()


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
