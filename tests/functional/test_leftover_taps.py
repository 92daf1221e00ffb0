"""The reap removes the taps a device model left behind (root only).

A tap the launcher opened lives as long as a descriptor holds it, unless
it was made persistent (TUNSETPERSIST, which the launcher's filter now
denies, or with ``launcher_seccomp = false``).  The launcher records each
tap it opens per uid; the reap removes those that outlived the device
model and leaves any tap still held.
"""

import os
import socket
import subprocess
import uuid as uuid_mod

import pytest

from tests.functional import hostenv
from xen_dm_restrict_plugin.launcher import network


def _name():
    return 'vif%d.0-emu' % (40000 + uuid_mod.uuid4().int % 60000)


@pytest.fixture
def base_dir(tmp_path):
    hostenv.require_root()
    if not os.path.exists(network.TUN_DEVICE):
        pytest.skip('no %s' % network.TUN_DEVICE)
    return str(tmp_path)


def _exists(name):
    return os.path.exists('/sys/class/net/%s' % name)


def test_a_persistent_leftover_tap_is_removed(base_dir):
    name = _name()
    fd = network.open_tap(name)
    try:
        network.record_taps(base_dir, 4242, [network.Tap('net0', name, fd)])
        # What a device model could do with its descriptor unfiltered.
        import fcntl
        fcntl.ioctl(fd, network.TUNSETPERSIST, 1)
    finally:
        os.close(fd)
    try:
        assert _exists(name)
        # The hotplug script renames it; the record's index still finds it.
        renamed = name.replace('vif', 'web')[:11] + '-emu'
        subprocess.run(['ip', 'link', 'set', name, 'name', renamed],
                       check=True)
        assert network.remove_leftover_taps(base_dir, 4242) == [renamed]
        assert not _exists(renamed)
        assert not os.path.exists(network.tap_record(base_dir, 4242))
    finally:
        for each in (name, renamed):
            if _exists(each):
                subprocess.run(['ip', 'tuntap', 'del', 'dev', each, 'mode',
                                'tap'], capture_output=True)


def test_a_tap_still_held_is_left_alone(base_dir):
    name = _name()
    fd = network.open_tap(name)
    try:
        network.record_taps(base_dir, 4243, [network.Tap('net0', name, fd)])
        assert network.remove_leftover_taps(base_dir, 4243) == []
        assert _exists(name)
    finally:
        os.close(fd)
    assert not _exists(name)


def test_the_record_holds_index_and_name(base_dir):
    name = _name()
    fd = network.open_tap(name)
    try:
        network.record_taps(base_dir, 4244, [network.Tap('net0', name, fd)])
        with open(network.tap_record(base_dir, 4244)) as handle:
            assert handle.read() == '%d %s\n' % (
                socket.if_nametoindex(name), name)
        assert os.stat(network.tap_record(base_dir, 4244)).st_mode \
            & 0o777 == 0o600
    finally:
        os.close(fd)
    assert network.remove_leftover_taps(base_dir, 4244) == []
