"""Realistic tenant domains (tests/corpus.py) boot restricted.

Each domain is built the way its orchestrator builds it for Xen, with the
configuration an operator of that deployment would set (the deployment
examples of the documentation), and goes through the dm_restrict hook:
accepted ones come out restricted, raw file disks served by the kernel
backend (``phy``), qcow2 images at the instance's storage-daemon path,
valid for libvirt's schema; refused ones name the right reason.
Block devices (LVM, iSCSI) are loop devices the test creates as root,
named through udev-style symlinks in a temporary directory.
"""

import os
import shutil

import pytest

from tests import base
from tests import corpus
from tests.unit import test_disks
from xen_dm_restrict_plugin.core import disks
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks

UUID = '0d6c3c52-7a41-4a53-9a11-5a0c1d6a0aa1'
#: An 11-character vif name: libxl appends "-emu" for the emulated NIC's
#: tap, and Nova's 14-character names are refused by the NIC rules (see
#: test_nova_vif_names_are_refused_for_their_length).
TAP = 'tap4a5b6c7d'
OTHER = '7f1e9d40-1b2c-4d3e-8f4a-5b6c7d8e9fb2'
#: The bridges the corpus' NICs attach to (Neutron's Linux bridge agent,
#: Eucalyptus, virt-manager's default).
BRIDGES = ['brq4a5b6c7d-8e', 'eucabr0', 'xenbr0']

pytestmark = pytest.mark.skipif(not shutil.which('qemu-img'),
                                reason='qemu-img is not installed '
                                '(qemu-utils, see bindep.txt)')


def nova(*args, **kwargs):
    kwargs.setdefault('tap', TAP)
    return corpus.nova(*args, **kwargs)


def _nova_settings(tmp_path, **extra):
    """Nova with images under /var/lib/nova/instances, as in the docs."""
    instances = tmp_path / 'instances'
    values = dict(
        allowed_host_paths=[str(instances / '{instance}'),
                            str(instances / '_base')],
        storage_daemon='enabled', storage_dir=str(tmp_path / 'storage'),
        allowed_bridges=BRIDGES)
    values.update(extra)
    return base.make_settings(tmp_path, **values)


def _prepare(settings, xml, tenant='acme', uuid=UUID):
    hook = extension.DmRestrictHook(None, settings)
    try:
        return hook.prepare(xml, hooks.Instance(uuid, tenant))
    finally:
        hook.close()


def _accepted(settings, xml, validate=True, **kwargs):
    out = _prepare(settings, xml, **kwargs)
    dom = domain.parse(out, 1 << 20)
    assert restrict.read_record(dom) is not None
    assert '-xen-domid-restrict' in dom.xen_args()
    for disk in dom.root.iterfind('devices/disk'):
        if disk.get('device') == 'disk':
            assert disk.find('driver').get('name') == 'phy', \
                domain.etree.tostring(disk)
    if validate and os.path.exists(base.DOMAIN_RNG):
        base.assert_schema_valid(out)
    return dom


def _refused(settings, xml, *words, **kwargs):
    with pytest.raises(exception.DmRestrictError) as err:
        _prepare(settings, xml, **kwargs)
    for word in words:
        assert word in str(err.value)
    return str(err.value)


@pytest.mark.parametrize('release', ['mitaka', 'train', 'victoria'])
def test_nova_flat_with_a_config_drive(tmp_path, release):
    xml = nova(str(tmp_path), UUID, release, 'flat', iotune=True)
    dom = _accepted(_nova_settings(tmp_path), xml)
    cdrom = dom.root.find("devices/disk[@device='cdrom']/driver")
    assert cdrom.get('name') == 'qemu'


@pytest.mark.parametrize('release', ['train', 'victoria'])
def test_nova_qcow2_is_served_by_the_storage_daemon(tmp_path, release):
    settings = _nova_settings(tmp_path)
    dom = _accepted(settings, nova(str(tmp_path), UUID, release,
                                   'qcow2'))
    assert dom.root.find("devices/disk[@device='disk']/source").get(
        'dev') == disks.stable_path(settings.storage_dir, UUID, 'xvda')
    assert [d.format for d in disks.daemon_disks(dom)] == ['qcow2']


def test_nova_qcow2_without_the_storage_daemon(tmp_path):
    settings = _nova_settings(tmp_path, storage_daemon='disabled')
    _refused(settings, nova(str(tmp_path), UUID, 'train', 'qcow2'),
             'storage_daemon is disabled')


def test_nova_with_the_nwfilter_firewall_is_refused(tmp_path):
    _refused(_nova_settings(tmp_path),
             nova(str(tmp_path), UUID, 'mitaka', 'flat',
                  firewall=True),
             'never instantiates network filters')


def test_nova_naming_another_instances_disk_is_refused(tmp_path):
    nova(str(tmp_path), OTHER, 'train', 'flat')
    xml = nova(str(tmp_path), UUID, 'train', 'flat').replace(
        'instances/%s/disk"' % UUID, 'instances/%s/disk"' % OTHER)
    _refused(_nova_settings(tmp_path), xml, OTHER, 'not under')


def test_nova_rbd_is_refused_with_the_kernel_mapping(tmp_path):
    xml = nova(str(tmp_path), UUID, 'victoria', 'flat',
               config_drive=False)
    xml = base.edit(xml, lambda root: _to_rbd(root.find('devices/disk')))
    _refused(_nova_settings(tmp_path), xml, 'rbd disk', 'cephx key',
             'rbd map')


def _to_rbd(disk):
    disk.set('type', 'network')
    source = disk.find('source')
    del source.attrib['file']
    source.set('protocol', 'rbd')
    source.set('name', 'vms/%s_disk' % UUID)
    host = domain.etree.SubElement(source, 'host', name='10.0.0.5',
                                   port='6789')
    assert host is not None


def test_nova_lvm_and_a_cinder_iscsi_volume(tmp_path):
    vg = tmp_path / 'dev' / 'nova-vg'
    by_path = tmp_path / 'dev' / 'disk' / 'by-path'
    vg.mkdir(parents=True)
    by_path.mkdir(parents=True)
    with test_disks.loop_device(tmp_path) as root_dev, \
            test_disks.loop_device(tmp_path / 'v') as volume_dev:
        (vg / ('%s_disk' % UUID)).symlink_to(root_dev)
        lun = by_path / ('ip-10.0.0.2:3260-iscsi-iqn.2010-10.org.openstack:'
                         'volume-6f1c3b0e-lun-1')
        lun.symlink_to(volume_dev)
        settings = _nova_settings(
            tmp_path, allowed_host_paths=[
                str(tmp_path / 'instances' / '{instance}'), str(vg),
                str(by_path)],
            writable_shared_host_paths=[str(vg), str(by_path)])
        _accepted(settings, nova(str(tmp_path), UUID, 'train', 'lvm',
                                 volume=str(lun), vg=str(vg)))
        # Without the volume group among the writable shared paths.
        settings = _nova_settings(
            tmp_path, allowed_host_paths=[
                str(tmp_path / 'instances' / '{instance}'), str(vg)])
        _refused(settings, nova(str(tmp_path), UUID, 'train', 'lvm',
                                vg=str(vg)), 'may only read')


def test_eucalyptus(tmp_path):
    settings = base.make_settings(
        tmp_path, allowed_host_paths=[str(tmp_path / 'instances' /
                                          '{instance}')],
        allowed_bridges=BRIDGES)
    _accepted(settings, corpus.eucalyptus(str(tmp_path), UUID))


def _pool_settings(tmp_path, **extra):
    pools = tmp_path / 'pools'
    values = dict(allowed_host_paths=[str(pools / 'default' / '{instance}'),
                                      str(pools / 'default' / '_base'),
                                      str(pools / 'iso')],
                  storage_daemon='enabled',
                  storage_dir=str(tmp_path / 'storage'),
                  allowed_bridges=BRIDGES)
    values.update(extra)
    return base.make_settings(tmp_path, **values)


def test_virt_manager_dir_pool_qcow2(tmp_path):
    # Newer libvirt writes <loader format='raw'>, which libvirt 9.0's
    # schema does not know yet: not validated against it.
    _accepted(_pool_settings(tmp_path),
              corpus.virt_manager(str(tmp_path), UUID, 'dir'),
              validate=False)


def test_virt_manager_logical_pool(tmp_path):
    vg = tmp_path / 'dev' / 'vg-guests'
    vg.mkdir(parents=True)
    with test_disks.loop_device(tmp_path) as dev:
        (vg / 'debian12').symlink_to(dev)
        settings = _pool_settings(
            tmp_path, allowed_host_paths=[str(vg), str(tmp_path / 'pools' /
                                                       'iso')],
            writable_shared_host_paths=[str(vg)])
        _accepted(settings, corpus.virt_manager(str(tmp_path), UUID,
                                                'logical', vg=str(vg)),
                  validate=False)


def test_nova_vif_names_are_refused_for_their_length(tmp_path):
    """Nova names the vif "tap" + 11 characters of the port id; libxl
    appends "-emu" for an HVM guest's emulated NIC, past the kernel's 15
    characters.  That is the only refusal of an otherwise accepted guest.
    """
    text = _refused(_nova_settings(tmp_path),
                    corpus.nova(str(tmp_path), UUID, 'train', 'flat'),
                    "<target dev='%s'>" % corpus.NOVA_TAP)
    assert 'refused features' not in text
