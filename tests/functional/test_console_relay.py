"""VNC under ``network_namespace = required``, with a real QEMU (root only).

The launcher rewrites libxl's ``-vnc ADDR:DISPLAY`` to a unix socket in
the device model's chroot; the relay libvirtd's hook starts at
``started begin`` listens at the TCP address and port libvirt reports and
forwards to it.  A client gets QEMU's RFB greeting there while QEMU's own
network namespace has no route anywhere; after the stop nothing of the
relay is left.
"""

import os
import socket
import time

import pytest

from tests.functional import hostenv
from tests.functional import qemuenv
from xen_dm_restrict_plugin.console import relay
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
    hostenv.require_tool('socat')
    if dm_cgroup.available():
        pytest.skip(dm_cgroup.available())
    made = hostenv.make_env(tmp_path, with_reaper=False)
    made.relay_user = hostenv.unique_name('xdr-con-')
    made.add_user(made.relay_user, made.first + 600)
    made.write_config(network_namespace='required',
                      console_relay_user=made.relay_user)
    yield made
    relay.stop(made.settings(), made.first + 1)
    hostenv.kill_uid(made.first + 1, rounds=2)
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
