"""Which kind of bridge an interface is, from a sysfs tree made by the
test and what Open vSwitch's database holds (this machine has no Open
vSwitch datapath to make a real bridge; the Xen lab's scenario 8 runs a
real one, whose interface the kernel shows as neither a bridge nor
enslaved).
"""

import pytest

from tests import base
from xen_dm_restrict_plugin.core import nics
from xen_dm_restrict_plugin.host import netfacts


def _iface(root, name, uevent='', bridge=False, master=None):
    path = root / name
    path.mkdir()
    (path / 'uevent').write_text(uevent)
    if bridge:
        (path / 'bridge').mkdir()
    if master:
        (path / 'master').symlink_to(root / master)


@pytest.fixture
def facts(tmp_path, monkeypatch):
    root = tmp_path / 'net'
    root.mkdir()
    monkeypatch.setattr(netfacts, 'SYS_CLASS_NET', str(root))
    _iface(root, 'ovs-system', 'DEVTYPE=openvswitch\n')
    # The kernel's view of an Open vSwitch bridge: an internal port.
    _iface(root, 'ovsbr0', 'INTERFACE=ovsbr0\n')
    _iface(root, 'br-gone', 'INTERFACE=br-gone\n')
    _iface(root, 'xenbr0', 'DEVTYPE=bridge\n', bridge=True)
    _iface(root, 'eth1', 'INTERFACE=eth1\n', master='ovs-system')
    _iface(root, 'eth0', 'INTERFACE=eth0\n')
    facts = netfacts.HostNetwork(base.make_settings(
        tmp_path, allowed_ovs_bridges=['ovsbr0']))
    # The database as ovsdb.parse reads it: the bridge and its own port.
    facts._ovs._ports = {
        'ovsbr0': nics.OvsPort('ovsbr0', 'port', 'ovsbr0', 'internal',
                               'ovsbr0', frozenset())}
    return facts


@pytest.mark.parametrize('name, kind', [
    ('ovsbr0', 'openvswitch'), ('xenbr0', 'linux'), ('eth1', 'openvswitch'),
    ('eth0', 'other'), ('br-gone', 'other'), ('absent', 'missing')])
def test_bridge_kind(facts, name, kind):
    assert facts.bridge_kind(name) == kind
