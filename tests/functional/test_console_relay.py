"""VNC under ``network_namespace = required``, with a real QEMU (root only).

The launcher rewrites libxl's ``-vnc ADDR:DISPLAY`` to a unix socket in
the device model's chroot; the relay libvirtd's hook starts at
``started begin`` listens at the TCP address and port libvirt reports and
forwards to it.  A client gets QEMU's RFB greeting there while QEMU's own
network namespace has no route anywhere; after the stop nothing of the
relay is left.  Root binds the console's port itself: a port anything
else holds (a local user, another domain's console, a dom0 service) is a
refusal, never a console that reaches someone else.
"""

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.functional import hostenv
from tests.functional import qemuenv
from xen_dm_restrict_plugin.console import relay
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import cgroup as dm_cgroup


def _free_display():
    for _ in range(50):
        probe = socket.socket()
        try:
            display = 40 + int.from_bytes(os.urandom(2), 'big') % 2000
            probe.bind(('127.0.0.1', relay.VNC_PORT_BASE + display))
            return display
        except OSError:
            continue
        finally:
            probe.close()
    pytest.skip('no free VNC port')


@pytest.fixture
def env(tmp_path):
    hostenv.require_root()
    hostenv.require_tool(hostenv.QEMU)
    hostenv.require_tool(relay.PROXYD)
    if dm_cgroup.available():
        pytest.skip(dm_cgroup.available())
    made = hostenv.make_env(tmp_path, with_reaper=False)
    made.relay_user = hostenv.unique_name('xdr-con-')
    made.add_user(made.relay_user, made.first + 600)
    made.local_user = hostenv.unique_name('xdr-loc-')
    made.add_user(made.local_user, made.first + 700)
    made.write_config(network_namespace='required',
                      console_relay_user=made.relay_user)
    yield made
    for uid in (made.first + 1, made.first + 2):
        relay.stop(made.settings(), uid)
        hostenv.kill_uid(uid, rounds=2)
    hostenv.kill_uid(made.first + 700, rounds=2)
    made.remove_users()
    hostenv.remove_cgroup_parents()


def _greeting(port, password=None):
    with socket.create_connection(('127.0.0.1', port), timeout=5) as conn:
        conn.settimeout(5)
        hello = conn.recv(12)
        conn.sendall(hello)
        types = conn.recv(64)
    return hello, types


def _start(env, uid, display, password=False):
    settings = env.settings()
    vnc = '127.0.0.1:%d' % display + (',password=on' if password else '')
    qemu = qemuenv.Qmp(env, qemuenv.BASE_ARGS + ['-display', 'none',
                                                 '-vnc', vnc]
                       + qemuenv.restriction_args(settings, uid))
    assert 'QMP' in qemu.read()
    assert qemu.command('qmp_capabilities') == {'return': {}}
    assert qemu.command('query-status')['return']['running'], \
        qemu.log_text()
    return settings, qemu


def test_rfb_greeting_through_the_relay_while_qemu_has_no_network(env):
    uid = env.first + 1
    display = _free_display()
    port = relay.VNC_PORT_BASE + display
    settings, qemu = _start(env, uid, display)
    try:
        pid = qemu.proc.pid
        # QEMU is in a namespace of its own, with nothing but a loopback
        # device that is down: no route anywhere.
        assert (os.readlink('/proc/%d/ns/net' % pid)
                != os.readlink('/proc/self/ns/net'))
        with open('/proc/%d/net/route' % pid) as handle:
            assert len(handle.read().splitlines()) <= 1  # the header
        with open('/proc/%d/net/dev' % pid) as handle:
            devices = [line.split(':')[0].strip()
                       for line in handle.readlines()[2:]]
        assert devices == ['lo']
        sock = relay.socket_path(settings, uid)
        assert os.path.exists(sock)
        with pytest.raises(OSError):
            socket.create_connection(('127.0.0.1', port), timeout=1)

        relay_pid = relay.start(settings, uid, '127.0.0.1', port, 'test')
        hello, types = _greeting(port)
        assert hello == b'RFB 003.008\n'
        assert types[1:2] == b'\x01'  # security type None: no password
        # The relay is neither root nor the device model's uid, holds the
        # socket only, and runs in a cgroup of its own.
        status = qemuenv.status(relay_pid)
        relay_uid = int(status['Uid'].split()[0])
        assert relay_uid == env.first + 600
        assert status['Groups'].split() == []
        with open('/proc/%d/cgroup' % relay_pid) as handle:
            assert 'console-%d' % uid in handle.read()
        assert os.stat(sock).st_uid == relay_uid
    finally:
        qemu.close()
    assert relay.stop(settings, uid, 'test') >= 1
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, 'the relay outlived its stop'
        time.sleep(0.05)
    assert not any(os.path.isdir(group)
                   for group in relay._groups(settings, uid))


def test_vnc_password_still_applies_through_the_relay(env):
    # libxl writes ",password=on" and sets the password by QMP
    # (change-vnc-password); both survive the rewrite to a unix socket.
    uid = env.first + 1
    display = _free_display()
    port = relay.VNC_PORT_BASE + display
    settings, qemu = _start(env, uid, display, password=True)
    try:
        reply = qemu.command_args('change-vnc-password',
                                  {'password': 'sekrit'})
        assert reply == {'return': {}}, reply
        relay.start(settings, uid, '127.0.0.1', port, 'test')
        hello, types = _greeting(port)
        assert hello == b'RFB 003.008\n'
        assert types[1:2] == b'\x02'  # VNC authentication
    finally:
        qemu.close()
        relay.stop(settings, uid, 'test')


def test_a_stale_socket_does_not_block_the_next_start(env):
    uid = env.first + 1
    display = _free_display()
    settings, qemu = _start(env, uid, display)
    qemu.proc.kill()  # as the reaper would: QEMU cannot clean up
    qemu.close()
    assert os.path.exists(relay.socket_path(settings, uid))
    settings, qemu = _start(env, uid, display)
    qemu.close()


def _relay_left(settings, uid):
    return any(os.path.isdir(group) for group in relay._groups(settings, uid))


SQUATTER = r'''
import os, socket, sys
os.setgroups([]); os.setresgid(%(uid)d, %(uid)d, %(uid)d)
os.setresuid(%(uid)d, %(uid)d, %(uid)d)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if %(reuseport)r:
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
srv.bind((%(address)r, %(port)d)); srv.listen(8)
print('ready', flush=True)
while True:
    conn, _ = srv.accept()
    conn.sendall(b'SQUATTER ' + conn.recv(200))
    conn.close()
'''


def _squat(uid, port, address='127.0.0.1', reuseport=False):
    proc = subprocess.Popen(
        [sys.executable, '-c', SQUATTER % dict(
            uid=uid, port=port, address=address, reuseport=reuseport)],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'ready'
    return proc


def _answer(port, data=b'RFB 003.008\n'):
    with socket.create_connection(('127.0.0.1', port), timeout=5) as conn:
        conn.settimeout(5)
        conn.sendall(data)
        return conn.recv(200)


@pytest.mark.parametrize('address,reuseport', [
    ('127.0.0.1', False), ('127.0.0.1', True), ('0.0.0.0', True)])
def test_a_console_port_a_local_user_holds_is_refused(env, address,
                                                      reuseport):
    """A local user of dom0 listening on the console's port before
    ``started begin`` (even with SO_REUSEADDR/SO_REUSEPORT, or on every
    address) makes the relay refuse the start; the user's server never
    becomes the console libvirt reports.
    """
    uid = env.first + 1
    display = _free_display()
    port = relay.VNC_PORT_BASE + display
    settings, qemu = _start(env, uid, display)
    squatter = _squat(env.first + 700, port, address, reuseport)
    try:
        with pytest.raises(exception.CapabilityMissing) as caught:
            relay.start(settings, uid, '127.0.0.1', port, 'squatted')
        assert 'another process already listens' in caught.value.reason
        assert 'autoport' in caught.value.remedy
        assert not _relay_left(settings, uid)
        assert _answer(port).startswith(b'SQUATTER')  # untouched
    finally:
        squatter.kill()
        squatter.wait()
        qemu.close()
        relay.stop(settings, uid, 'squatted')


def _start_named(env, uid, display, name):
    settings = env.settings()
    qemu = qemuenv.Qmp(env, qemuenv.BASE_ARGS + [
        '-name', name, '-display', 'none', '-vnc', '127.0.0.1:%d' % display]
        + qemuenv.restriction_args(settings, uid))
    assert 'QMP' in qemu.read()
    assert qemu.command('qmp_capabilities') == {'return': {}}
    return settings, qemu


def _desktop_name(port):
    """A full RFB 3.8 handshake (security None): ServerInit's name."""
    with socket.create_connection(('127.0.0.1', port), timeout=5) as conn:
        conn.settimeout(5)
        hello = conn.recv(12)
        conn.sendall(hello)
        count = conn.recv(1)[0]
        types = conn.recv(count)
        assert 1 in types, types
        conn.sendall(b'\x01')
        assert conn.recv(4) == b'\0\0\0\0'
        conn.sendall(b'\x01')  # ClientInit, shared
        data = b''
        while len(data) < 24:
            data += conn.recv(24 - len(data))
        length = int.from_bytes(data[20:24], 'big')
        name = b''
        while len(name) < length:
            name += conn.recv(length - len(name))
        return name.decode()


def test_another_domains_console_port_is_refused(env):
    """Tenant B's ``<graphics type='vnc' autoport='no' port='PA'>`` with
    PA the console of tenant A's running domain: libvirt's libxlMakeVfb
    takes a fixed port as given, but B's relay refuses the start, A's
    console stays A's.
    """
    uid_a, uid_b = env.first + 1, env.first + 2
    display_a = _free_display()
    port_a = relay.VNC_PORT_BASE + display_a
    settings, qemu_a = _start_named(env, uid_a, display_a, 'tenant-A-vm')
    _, qemu_b = _start_named(env, uid_b, _free_display(), 'tenant-B-vm')
    try:
        relay.start(settings, uid_a, '127.0.0.1', port_a, 'A')
        assert _desktop_name(port_a) == 'QEMU (tenant-A-vm)'
        with pytest.raises(exception.CapabilityMissing):
            relay.start(settings, uid_b, '127.0.0.1', port_a, 'B')
        assert not _relay_left(settings, uid_b)
        assert _desktop_name(port_a) == 'QEMU (tenant-A-vm)'
    finally:
        qemu_a.close()
        qemu_b.close()
        relay.stop(settings, uid_a, 'A')
        relay.stop(settings, uid_b, 'B')


SERVICE = r'''
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', %(port)d)); srv.listen(8)
print('ready', flush=True)
while True:
    conn, _ = srv.accept()
    conn.sendall(b'ROOT-SERVICE got: ' + conn.recv(200))
    conn.close()
'''


def test_a_dom0_service_port_is_refused(env):
    """A root service of dom0 on 127.0.0.1:P (ovsdb-server's 6640, say)
    named as a fixed console port: the start is refused, the service
    keeps its port and no console client reaches it through libvirt's
    report.
    """
    uid = env.first + 1
    display = _free_display()
    port = relay.VNC_PORT_BASE + _free_display()
    settings, qemu = _start(env, uid, display)
    service = subprocess.Popen(
        [sys.executable, '-c', SERVICE % dict(port=port)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout.readline().strip() == 'ready'
        with pytest.raises(exception.CapabilityMissing):
            relay.start(settings, uid, '127.0.0.1', port, 'tenant')
        assert not _relay_left(settings, uid)
        assert _answer(port, b'x').startswith(b'ROOT-SERVICE got: x')
    finally:
        service.kill()
        service.wait()
        qemu.close()
        relay.stop(settings, uid, 'tenant')


def test_a_symlink_in_place_of_the_socket_is_not_followed(env, tmp_path):
    """The relay hands over the socket inode itself: a symbolic link
    where the socket should be is refused, and what it names is neither
    chowned to the relay user nor relayed.
    """
    uid = env.first + 1
    settings = env.settings()
    chroot_dir = settings.chroot_dir(uid)
    os.makedirs(chroot_dir, exist_ok=True)
    target = tmp_path / 'elsewhere.sock'
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(target))
    path = relay.socket_path(settings, uid)
    os.symlink(str(target), path)
    port = relay.VNC_PORT_BASE + _free_display()
    try:
        with pytest.raises(exception.CapabilityMissing) as caught:
            relay.start(settings, uid, '127.0.0.1', port, 'link', timeout=1)
        assert 'symbolic link' in caught.value.reason
        assert os.stat(str(target)).st_uid == 0
        assert not _relay_left(settings, uid)
        with pytest.raises(OSError):
            socket.create_connection(('127.0.0.1', port), timeout=1)
    finally:
        server.close()
        os.unlink(path)


def test_the_relay_is_one_process_holding_only_its_two_sockets(env):
    uid = env.first + 1
    display = _free_display()
    port = relay.VNC_PORT_BASE + display
    settings, qemu = _start(env, uid, display)
    try:
        pid = relay.start(settings, uid, '127.0.0.1', port, 'fds')
        assert os.path.basename(os.readlink('/proc/%d/exe' % pid)) == \
            'systemd-socket-proxyd'
        targets = {fd: os.readlink('/proc/%d/fd/%s' % (pid, fd))
                   for fd in os.listdir('/proc/%d/fd' % pid)}
        assert targets['0'] == targets['1'] == '/dev/null'
        assert targets['3'].startswith('socket:')
        assert targets['4'] == relay.socket_path(settings, uid)
        for _ in range(3):
            assert _answer(port).startswith(b'RFB 003.008')
        with open(os.path.join(relay._groups(settings, uid)[0],
                               'cgroup.procs')) as handle:
            assert handle.read().split() == [str(pid)]
    finally:
        qemu.close()
        relay.stop(settings, uid, 'fds')
