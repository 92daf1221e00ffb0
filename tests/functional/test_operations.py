"""Refused and allowed operations on domains, through libvirt's test driver.
"""

import os

import libvirt
import pytest

from tests import base
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import virt

ACME = hooks.Instance(base.HVM_UUID, 'acme')
PV_UUID = '5e6f7a8b-1c2d-4e3f-8a9b-0c1d2e3f4a5b'
CDROM = ("<disk type='file' device='cdrom'><source file='%s'/>"
         "<target dev='hdc' bus='ide'/><readonly/></disk>")
HOSTDEV = ("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
           "<address domain='0x0000' bus='0x0a' slot='0x08' "
           "function='0x0'/></source></hostdev>")
HOSTDEV_NIC = ("<interface type='hostdev' managed='yes'><source>"
               "<address type='pci' domain='0x0000' bus='0x0a' slot='0x10' "
               "function='0x0'/></source></interface>")
DISK = ("<disk type='file' device='disk'><driver name='phy'/>"
        "<source file='%s/root-disk.img'/><target dev='hdb' bus='ide'/>"
        "</disk>" % base.images_dir())


@pytest.fixture
def restricted(conn):
    return conn.define_and_start(base.fixture('hvm.xml'), ACME)


def _state(dom):
    return dom.dom.isActive(), dom.dom.XMLDesc(0), dom.dom.ID()


REFUSED = [
    ('migrate', lambda d, p: d.migrateToURI(
        'xen+ssh://other/system', libvirt.VIR_MIGRATE_LIVE, None, 0)),
    ('migrate', lambda d, p: d.migrateToURI3('xen+ssh://other/system', {},
                                             0)),
    ('migrate', lambda d, p: d.migrate(
        None, libvirt.VIR_MIGRATE_OFFLINE, None, None, 0)),
    ('save', lambda d, p: d.save(p)),
    ('save', lambda d, p: d.saveFlags(p, None, 0)),
    ('managed-save', lambda d, p: d.managedSave(0)),
    ('snapshot-memory', lambda d, p: d.snapshotCreateXML(
        '<domainsnapshot><name>s1</name></domainsnapshot>', 0)),
    ('cdrom-media-change', lambda d, p: d.updateDeviceFlags(
        CDROM % '/srv/iso/other.iso', libvirt.VIR_DOMAIN_AFFECT_LIVE)),
    ('cdrom-media-change', lambda d, p: d.updateDeviceFlags(
        "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/>"
        "</disk>", 0)),
    ('cdrom-media-change', lambda d, p: d.attachDevice(
        CDROM % '/srv/iso/new.iso')),
    ('cdrom-media-change', lambda d, p: d.detachDeviceFlags(
        CDROM % '/srv/iso/installer.iso', libvirt.VIR_DOMAIN_AFFECT_LIVE)),
    ('attach-device', lambda d, p: d.attachDevice(HOSTDEV)),
    ('attach-device', lambda d, p: d.attachDeviceFlags(
        HOSTDEV, libvirt.VIR_DOMAIN_AFFECT_CONFIG)),
    ('attach-device', lambda d, p: d.attachDeviceFlags(
        HOSTDEV_NIC, libvirt.VIR_DOMAIN_AFFECT_LIVE)),
    ('redefine', lambda d, p: d.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT, '<restriction/>', 'x',
        restrict.META_NS, 0)),
    ('migrateSetMaxSpeed', lambda d, p: d.migrateSetMaxSpeed(1, 0)),
]


@pytest.mark.parametrize('operation,call', REFUSED,
                         ids=['%s-%d' % (r[0], i)
                              for i, r in enumerate(REFUSED)])
def test_refused_operations_leave_the_domain_as_it_was(
        restricted, tmp_path, operation, call):
    before = _state(restricted)
    path = str(tmp_path / 'state.save')
    with pytest.raises(exception.OperationRefused) as err:
        call(restricted, path)
    message = str(err.value)
    assert operation in message and 'fixture-hvm' in message
    assert 'Remedy:' in message and message.split('Remedy:')[1].strip()
    assert _state(restricted) == before
    assert not os.path.exists(path)


def test_restore_of_a_restricted_save_image_is_refused(restricted, conn,
                                                       tmp_path):
    path = str(tmp_path / 'raw.save')
    restricted.dom.save(path)  # bypassing the wrapper, as a rogue tool
    assert not restricted.dom.isActive()
    with pytest.raises(exception.OperationRefused) as err:
        conn.restore(path)
    assert 'restore' in str(err.value)
    assert not conn.conn.lookupByUUIDString(base.HVM_UUID).isActive()


def _passed_to_libvirt(call):
    """Assert ``call`` reached libvirt (the wrapper let it through).

    The test driver has no device hotplug, so reaching it fails there.
    """
    with pytest.raises(libvirt.libvirtError) as err:
        call()
    assert 'not supported by the connection driver' in str(err.value)


def test_allowed_operations_pass_through(restricted, conn):
    _passed_to_libvirt(lambda: restricted.attachDeviceFlags(
        DISK, libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    _passed_to_libvirt(lambda: restricted.attachDevice(DISK))
    _passed_to_libvirt(lambda: restricted.updateDeviceFlags(
        CDROM % (base.images_dir() + '/installer.iso'),
        libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    _passed_to_libvirt(lambda: restricted.detachDeviceFlags(
        DISK, libvirt.VIR_DOMAIN_AFFECT_LIVE))
    restricted.reboot(0)
    assert restricted.isActive()
    restricted.shutdown()
    assert not restricted.isActive()
    restricted.create()
    assert restricted.isActive()
    restricted.destroy()
    assert not restricted.isActive()
    snap = restricted.snapshotCreateXML(
        '<domainsnapshot><name>cold</name></domainsnapshot>', 0)
    assert snap.getName() == 'cold'
    snap.delete(0)


def test_unrestricted_domains_are_not_affected(conn, tmp_path):
    pv = conn.define_and_start(base.fixture('pv.xml'),
                               hooks.Instance(PV_UUID, 'acme'))
    path = str(tmp_path / 'pv.save')
    pv.save(path)
    assert os.path.exists(path)
    conn.restore(path)
    assert conn.lookup(hooks.Instance(PV_UUID, 'acme')).isActive()
    pv.managedSave(0)
    assert not pv.isActive()


def test_undefine_of_a_running_domain_is_refused(restricted):
    with pytest.raises(exception.OperationRefused) as err:
        restricted.undefine()
    assert 'destroy' in str(err.value)
    assert restricted.isActive()


def test_lease_state_through_stop_and_undefine(restricted, conn):
    store = conn.hooks.hooks[0][1].store
    uid = store.get(base.HVM_UUID).uid
    restricted.destroy()
    assert store.get(base.HVM_UUID).uid == uid
    restricted.create()
    restricted.destroy()
    assert store.get(base.HVM_UUID).uid == uid
    restricted.undefine()
    assert store.get(base.HVM_UUID) is None
    assert conn.lookup(ACME) is None


def test_start_without_a_lease_is_refused(restricted, conn):
    store = conn.hooks.hooks[0][1].store
    restricted.destroy()
    store.release(base.HVM_UUID)
    with pytest.raises(exception.OperationRefused) as err:
        restricted.create()
    assert 'reconcile' in str(err.value)
    assert not restricted.isActive()


def test_start_of_a_domain_defined_around_the_hooks_is_refused(conn):
    raw = conn.conn.defineXML(base.fixture('hvm.xml'))
    dom = virt.HookedDomain(conn, raw, ACME)
    with pytest.raises(exception.OperationRefused) as err:
        dom.create()
    assert 'no dm_restrict record' in str(err.value)
    assert not raw.isActive()
