"""NIC names that Open vSwitch's database holds, against a real database.

Xen's ``vif-openvswitch`` plugs and unplugs a guest's interface with
``ovs-vsctl --if-exists del-port NAME``: a ``<target dev>`` naming
Neutron's ``patch-tun`` would delete it, host-wide.  These ports are no
kernel interfaces, so only the database knows them.  Each test runs a
private ``ovsdb-server`` (tests/functional/ovsdbenv.py) laid out as
Neutron's Open vSwitch agent lays out a compute host, and checks the
refusal at define (the orchestrator's hook, on libvirt's test driver)
and at ``prepare`` (libvirtd's hook, run as libvirtd runs it).
"""

import os
import subprocess

import libvirt
from oslo_config import cfg
import pytest

from tests import base
from tests.functional import hostenv
from tests.functional import libvirtd
from tests.functional import ovsdbenv
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import ovsdb as ovsdb_mod
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks

HOOK = hostenv.module('xen_dm_restrict_plugin.cmd.libvirt_hook')
ACME = hooks.Instance(base.HVM_UUID, 'acme')
#: This instance's port, as os-vif makes it before the domain is defined.
OWN = 'tap6f1c4b9e-2a'
#: Another instance's port on br-int.
OTHERS = 'tapfeedbeef-01'
#: A Neutron-style name nothing holds yet.
FRESH = 'tap0a1b2c3d-4e'


def _neutron_layout(db: ovsdbenv.OvsDb) -> None:
    """br-int, br-tun and br-ex as Neutron's Open vSwitch agent makes
    them, with two instances' ports on br-int.
    """
    db.vsctl(
        'add-br', 'br-int', '--', 'add-br', 'br-tun', '--',
        'add-br', 'br-ex',
        '--', 'add-port', 'br-int', 'patch-tun',
        '--', 'set', 'Interface', 'patch-tun', 'type=patch',
        'options:peer=patch-int',
        '--', 'add-port', 'br-tun', 'patch-int',
        '--', 'set', 'Interface', 'patch-int', 'type=patch',
        'options:peer=patch-tun',
        '--', 'add-port', 'br-tun', 'vxlan-0a000001',
        '--', 'set', 'Interface', 'vxlan-0a000001', 'type=vxlan',
        'options:remote_ip=10.0.0.1', 'options:local_ip=10.0.0.2',
        '--', 'add-port', 'br-int', 'int-br-ex',
        '--', 'set', 'Interface', 'int-br-ex', 'type=patch',
        'options:peer=phy-br-ex',
        '--', 'add-port', 'br-ex', 'phy-br-ex',
        '--', 'set', 'Interface', 'phy-br-ex', 'type=patch',
        'options:peer=int-br-ex',
        '--', 'add-port', 'br-int', OWN,
        '--', 'set', 'Interface', OWN,
        'external-ids:vm-uuid=%s' % base.HVM_UUID,
        'external-ids:iface-id=6f1c4b9e-2a00-4000-8000-000000000001',
        '--', 'add-port', 'br-int', OTHERS, 'tag=7',
        '--', 'set', 'Interface', OTHERS,
        'external-ids:xen-vm-uuid=0b3e3c1a-0000-4000-8000-00000000beef')


@pytest.fixture(scope='module')
def ovsdb():
    with ovsdbenv.running() as db:
        _neutron_layout(db)
        yield db


@pytest.fixture
def use_ovsdb(ovsdb, monkeypatch):
    """This process's ovs-vsctl reads the test's database."""
    for key, value in ovsdb.environ.items():
        monkeypatch.setenv(key, value)
    return ovsdb


def _nic(name, bridge='br-int', ovs=True):
    return ("<interface type='bridge'><mac address='00:16:3e:00:00:01'/>"
            "<source bridge='%s'/>%s<target dev='%s'/>"
            "<model type='netfront'/></interface>" % (
                bridge, "<virtualport type='openvswitch'/>" if ovs else '',
                name))


def _xml(name, **kwargs):
    xml = base.edit(base.fixture('hvm.xml'), lambda root: [
        root.find('devices').remove(node)
        for node in root.findall('devices/interface')])
    return base.add_device(xml, _nic(name, **kwargs))


# -- at define: the orchestrator's hook ------------------------------------
@pytest.fixture
def ovs_conn(tmp_path):
    """test:///default through the dm_restrict hook, br-int allowed."""
    conf = base.make_conf(tmp_path, domain_hooks=['dm_restrict'],
                          allowed_ovs_bridges=['br-int'])
    with libvirtd.hooked_test_driver(conf) as connection:
        yield connection


def _domains(conn):
    return sorted(d.name() for d in conn.conn.listAllDomains(0))


def _lease(conn):
    return conn.hooks.hooks[0][1].store.get(base.HVM_UUID)


@pytest.mark.parametrize('name, what', [
    ('patch-tun', 'port patch-tun (type patch) on bridge br-int'),
    ('int-br-ex', 'port int-br-ex (type patch) on bridge br-int'),
    ('vxlan-0a000001', 'port vxlan-0a000001 (type vxlan) on bridge br-tun'),
    ('br-ex', 'port br-ex (type internal) on bridge br-ex'),
    (OTHERS, 'port %s on bridge br-int' % OTHERS),
])
def test_an_ovs_port_is_refused_at_define(use_ovsdb, ovs_conn, name, what):
    before = (_domains(ovs_conn), use_ovsdb.names())
    with pytest.raises(exception.FeatureRefused) as caught:
        ovs_conn.define_and_start(_xml(name), ACME)
    text = str(caught.value)
    assert "<target dev='%s'>" % name in text
    assert "Open vSwitch's database has a %s" % what in text
    assert '--if-exists del-port %s' % name in text
    assert 'Remedy:' in text and 'remove <target>' in text
    assert (_domains(ovs_conn), use_ovsdb.names()) == before
    assert 'fixture-hvm' not in _domains(ovs_conn)
    assert _lease(ovs_conn) is None


def test_a_linux_bridge_nic_named_after_an_ovs_port_is_refused(
        use_ovsdb, ovs_conn):
    with pytest.raises(exception.FeatureRefused) as caught:
        ovs_conn.define_and_start(_xml('patch-tun', bridge='xenbr0',
                                       ovs=False), ACME)
    assert 'port patch-tun (type patch)' in str(caught.value)
    assert _lease(ovs_conn) is None


@pytest.mark.parametrize('name', [FRESH, OWN])
def test_a_fresh_or_own_neutron_name_is_accepted_at_define(
        use_ovsdb, ovs_conn, name):
    dom = ovs_conn.define_and_start(_xml(name), ACME)
    assert dom.isActive()
    assert _lease(ovs_conn) is not None


def test_a_hot_attached_nic_is_checked_against_the_database_too(
        use_ovsdb, ovs_conn):
    dom = ovs_conn.define_and_start(_xml(FRESH), ACME)
    with pytest.raises(exception.OperationRefused) as caught:
        dom.attachDeviceFlags(_nic('patch-tun'),
                              libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert 'port patch-tun (type patch)' in str(caught.value)
    # The domain's own port passes the policy and reaches libvirt, whose
    # test driver has no device hotplug.
    with pytest.raises(libvirt.libvirtError) as err:
        dom.attachDeviceFlags(_nic(OWN), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert 'not supported by the connection driver' in str(err.value)


def test_an_unreadable_database_refuses_at_define_when_ovs_is_configured(
        ovs_conn, tmp_path, monkeypatch):
    hostenv.require_tool(ovsdbenv.OVS_VSCTL)
    monkeypatch.setenv('OVS_RUNDIR', str(tmp_path / 'no-ovsdb'))
    with pytest.raises(exception.Unavailable) as caught:
        ovs_conn.define_and_start(_xml(FRESH), ACME)
    text = str(caught.value)
    assert text.startswith('Open vSwitch database: ')
    assert 'allowed_ovs_bridges lists br-int' in text
    assert 'database connection failed' in text
    assert 'Remedy: start ovsdb-server' in text
    assert 'fixture-hvm' not in _domains(ovs_conn)
    assert _lease(ovs_conn) is None


def test_no_ovs_vsctl_refuses_at_define_when_ovs_is_configured(
        ovs_conn, tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path))
    with pytest.raises(exception.Unavailable) as caught:
        ovs_conn.define_and_start(_xml(FRESH), ACME)
    assert 'ovs-vsctl is not on PATH' in str(caught.value)
    assert _lease(ovs_conn) is None


def test_an_unreadable_database_is_no_ovs_when_none_is_configured(
        conn, tmp_path, monkeypatch):
    # conn allows no Open vSwitch bridge: a host without Open vSwitch.
    monkeypatch.setenv('OVS_RUNDIR', str(tmp_path / 'no-ovsdb'))
    dom = conn.define_and_start(_xml('web0', bridge='xenbr0', ovs=False),
                                ACME)
    assert dom.isActive()


def test_no_database_is_asked_without_a_target_dev(ovs_conn, tmp_path,
                                                   monkeypatch):
    monkeypatch.setenv('OVS_RUNDIR', str(tmp_path / 'no-ovsdb'))
    xml = base.edit(_xml(FRESH), lambda root: root.find(
        'devices/interface').remove(root.find('devices/interface/target')))
    assert ovs_conn.define_and_start(xml, ACME).isActive()


# -- at prepare: libvirtd's hook --------------------------------------------
@pytest.fixture
def env(tmp_path):
    made = hostenv.make_env(tmp_path, with_reaper=os.geteuid() == 0)
    made.write_config(allowed_ovs_bridges='br-int')
    made.uids = set()
    yield made
    if os.geteuid() == 0:
        for uid in made.uids:
            hostenv.kill_uid(uid, rounds=2)
    made.remove_users()


def _rendered(env, name):
    """The domain as the orchestrator defined it (with a name it
    accepted), then renamed as a client editing it in libvirt would.
    """
    hook = extension.DmRestrictHook(cfg.ConfigOpts(), env.settings())
    try:
        xml = hook.prepare(_xml(FRESH), ACME)
    finally:
        hook.close()
    env.uids.add(restrict.read_record(domain.parse(xml, 1 << 20)).uid)
    return base.edit(xml, lambda root: root.find(
        'devices/interface/target').set('dev', name))


def _prepare(env, xml, environ):
    return subprocess.run(
        HOOK + ['fixture-hvm', 'prepare', 'begin', '-'], input=xml.encode(),
        capture_output=True, env=dict(env.environ(), **environ), timeout=60)


def _chroot(env, xml):
    uid = restrict.read_record(domain.parse(xml, 1 << 20)).uid
    return env.settings().chroot_dir(uid)


@pytest.mark.parametrize('name, what', [
    ('patch-tun', b'port patch-tun (type patch) on bridge br-int'),
    ('vxlan-0a000001', b'port vxlan-0a000001 (type vxlan) on bridge br-tun'),
    ('br-ex', b'port br-ex (type internal) on bridge br-ex'),
    (OTHERS, b'port tapfeedbeef-01 on bridge br-int'),
])
def test_an_ovs_port_is_refused_at_prepare(use_ovsdb, env, name, what):
    xml = _rendered(env, name)
    before = use_ovsdb.names()
    proc = _prepare(env, xml, use_ovsdb.environ)
    assert proc.returncode == 2, proc.stderr
    assert ("<target dev='%s'>" % name).encode() in proc.stderr
    assert b"Open vSwitch's database has a " + what in proc.stderr
    assert b'del-port' in proc.stderr and b'Remedy:' in proc.stderr
    assert base.HVM_UUID.encode() in proc.stderr
    # Nothing was started for it: no chroot, the database untouched.
    assert not os.path.lexists(_chroot(env, xml))
    assert use_ovsdb.names() == before


@pytest.mark.parametrize('name', [FRESH, OWN])
def test_a_fresh_or_own_neutron_name_is_accepted_at_prepare(
        use_ovsdb, env, name):
    hostenv.require_root()  # the accepted start creates the chroot, reaps
    xml = _rendered(env, name)
    proc = _prepare(env, xml, use_ovsdb.environ)
    assert proc.returncode == 0, proc.stderr
    assert os.path.isdir(_chroot(env, xml))


def test_a_name_vif_openvswitch_would_split_is_refused_at_prepare(
        use_ovsdb, env):
    # Renamed in libvirt after define: vif-openvswitch would put the name
    # unquoted on ovs-vsctl's command line, deleting patch-tun and br-ex.
    evil = '" -- del-port patch-tun -- del-br br-ex -- comment x'
    xml = base.edit(_rendered(env, FRESH), lambda root: setattr(
        root.find('name'), 'text', evil))
    before = use_ovsdb.names()
    proc = _prepare(env, xml, use_ovsdb.environ)
    assert proc.returncode == 2, proc.stderr
    assert b'vif-openvswitch' in proc.stderr and b'<name>' in proc.stderr
    assert not os.path.lexists(_chroot(env, xml))
    assert use_ovsdb.names() == before


def test_an_unreadable_database_stops_the_start_at_prepare(
        use_ovsdb, env, tmp_path):
    xml = _rendered(env, FRESH)
    proc = _prepare(env, xml, {'OVS_RUNDIR': str(tmp_path / 'no-ovsdb')})
    assert proc.returncode == 1, proc.stderr
    assert b'error: Open vSwitch database: ' in proc.stderr
    assert b'allowed_ovs_bridges lists br-int' in proc.stderr
    assert b'database connection failed' in proc.stderr
    assert base.HVM_UUID.encode() in proc.stderr
    assert not os.path.lexists(_chroot(env, xml))


# -- the reading itself -----------------------------------------------------
def test_the_database_is_read_as_neutron_laid_it_out(use_ovsdb):
    ports = ovsdb_mod.read_ports()
    assert ports['patch-tun'].describe() == \
        'port patch-tun (type patch) on bridge br-int'
    assert ports[OWN].owners == frozenset([base.HVM_UUID])
    assert ports[OWN].owned_by(base.HVM_UUID.upper())
    assert ports[OTHERS].owners == frozenset(
        ['0b3e3c1a-0000-4000-8000-00000000beef'])
    assert not ports['patch-tun'].owned_by(base.HVM_UUID)
    assert {'br-int', 'br-tun', 'br-ex', 'patch-int', 'phy-br-ex'} <= set(
        ports)


def test_bond_members_are_named_by_their_interfaces(monkeypatch):
    with ovsdbenv.running() as db:
        db.vsctl('add-br', 'br-ex', '--', 'add-bond', 'br-ex', 'bond0',
                 'ethx1', 'ethx2')
        monkeypatch.setenv('OVS_RUNDIR', db.rundir)
        ports = ovsdb_mod.read_ports()
    assert ports['bond0'].kind == 'port'
    assert ports['ethx1'].describe() == \
        'interface ethx1 of port bond0 on bridge br-ex'


def test_output_that_is_not_ovs_vsctls_json_is_a_failed_query(tmp_path):
    fake = tmp_path / 'ovs-vsctl'
    fake.write_text('#!/bin/sh\necho "not json"\n')
    fake.chmod(0o755)
    with pytest.raises(ovsdb_mod.QueryFailed):
        ovsdb_mod.read_ports(str(fake))
