"""Disks as clouds write them, and host paths scoped per instance.

Real files with real headers; block devices are loop devices the test
creates as root (skipped with the reason elsewhere), named through
udev-style symlinks in a temporary directory.
"""

import contextlib
import dataclasses
import os
import subprocess

from lxml import etree
import pytest

from tests import base
from xen_dm_restrict_plugin.core import blockdev
from xen_dm_restrict_plugin.core import disks
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import hostpaths
from xen_dm_restrict_plugin.core import imageformat
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin.core import policy
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks

UUID_A = '0d6c3c52-7a41-4a53-9a11-5a0c1d6a0aa1'
UUID_B = '7f1e9d40-1b2c-4d3e-8f4a-5b6c7d8e9fb2'

#: Headers of the formats QEMU probes, as their first bytes.
HEADERS = {
    'qcow2': b'QFI\xfb\x00\x00\x00\x03' + b'\x00' * 96,
    'qed': b'QED\x00' + b'\x00' * 60,
    'vmdk': b'KDMV' + b'\x00' * 60,
    'vpc': b'conectix' + b'\x00' * 56,
    'vdi': b'<<< Oracle VM VirtualBox Disk Image >>>\n'.ljust(0x40, b'\x00')
    + b'\x7f\x10\xda\xbe',
    'vhdx': b'vhdxfile' + b'\x00' * 56,
    'luks': b'LUKS\xba\xbe' + b'\x00' * 58,
}


def _write(path, data=b'', size=1 << 20):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as handle:
        handle.write(data)
        handle.truncate(max(size, len(data)))
    return str(path)


def _qcow2(path, backing=None, backing_fmt=None, size=1 << 20):
    """A qcow2 image made by qemu-img (the real thing), or by hand when
    qemu-img is missing.
    """
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    cmd = ['qemu-img', 'create', '-q', '-f', 'qcow2']
    if backing:
        cmd += ['-u', '-b', backing, '-F', backing_fmt or 'raw']
    cmd += [str(path), str(size)]
    subprocess.run(cmd, check=True)
    return str(path)


def _domain(*devices, os_extra=''):
    xml = base.fixture('hvm.xml')
    root = etree.fromstring(xml.encode())
    for disk in root.findall('devices/disk'):
        disk.getparent().remove(disk)
    for device in devices:
        root.find('devices').append(etree.fromstring(device))
    for element in os_extra and [os_extra] or []:
        root.find('os').append(etree.fromstring(element))
    return domain.parse(etree.tostring(root), 1 << 20)


def _file_disk(path, driver="<driver name='qemu' type='raw' cache='none'/>",
               target='xvda', device='disk', extra=''):
    return ("<disk type='file' device='%s'>%s<source file='%s'/>"
            "<target dev='%s' bus='xen'/>%s</disk>"
            % (device, driver, path, target, extra))


def _block_disk(path, target='xvdb'):
    return ("<disk type='block' device='disk'><driver name='phy' type='raw' "
            "cache='none' io='native'/><source dev='%s'/><target dev='%s' "
            "bus='xen'/><serial>volume-1</serial></disk>" % (path, target))


def _problems(settings, dom, scope=None):
    """The refusals of ``dom`` once rendered, as the hook does."""
    disks.render(dom, settings, scope)
    return policy.Checker(settings, scope=scope).problems(dom, [])


def _text(problems):
    return ' | '.join('%s: %s' % (p.subject, p.reason) for p in problems)


# -- formats ------------------------------------------------------------------
@pytest.mark.parametrize('fmt', sorted(HEADERS))
def test_the_format_comes_from_the_header(tmp_path, fmt):
    path = _write(tmp_path / 'disk', HEADERS[fmt])
    assert imageformat.sniff(path) == fmt


def test_an_iso_and_zeros_are_raw(tmp_path):
    iso = _write(tmp_path / 'cd.iso', b'\x00' * 0x8001 + b'CD001')
    assert imageformat.sniff(iso) == 'raw'
    assert imageformat.sniff(_write(tmp_path / 'zero')) == 'raw'


@pytest.fixture
def settings(tmp_path):
    images = str(tmp_path / 'images')
    os.makedirs(images)
    return base.make_settings(
        tmp_path, allowed_host_paths=[images],
        writable_shared_host_paths=[images])


# -- raw files, whatever the driver -------------------------------------------
@pytest.mark.parametrize('driver', [
    "<driver name='qemu' type='raw' cache='none' io='native'/>",
    "<driver name='file' type='raw'/>",
    "<driver name='qemu'/>",
    '',
])
def test_a_raw_file_is_served_by_the_kernel_backend(settings, tmp_path,
                                                    driver):
    path = _write(tmp_path / 'images' / 'disk')
    dom = _domain(_file_disk(path, driver))
    changed = disks.render(dom, settings, None)
    node = dom.root.find('devices/disk/driver')
    if driver and "'phy'" not in driver:
        assert node.get('name') == 'phy' and changed
    assert _problems(settings, dom) == []
    base.assert_schema_valid(dom.to_string())


@pytest.mark.parametrize('fmt', sorted(HEADERS))
def test_a_file_declared_raw_with_another_header_is_refused(settings,
                                                            tmp_path, fmt):
    path = _write(tmp_path / 'images' / 'disk', HEADERS[fmt])
    dom = _domain(_file_disk(path))
    assert disks.render(dom, settings, None) == []
    text = _text(_problems(settings, dom))
    assert "declared raw but its header says %s" % fmt in text


def test_a_qcow2_disk_without_the_storage_daemon_is_refused(
        settings, tmp_path):
    path = _qcow2(tmp_path / 'images' / 'disk.qcow2')
    dom = _domain(_file_disk(path, "<driver name='qemu' type='qcow2'/>"))
    assert disks.render(dom, settings, None) == []
    text = _text(_problems(settings, dom))
    assert 'storage_daemon is disabled' in text


# -- CD-ROMs ------------------------------------------------------------------
@pytest.mark.parametrize('driver', [
    "<driver name='qemu' type='raw' cache='none'/>", "<driver name='qemu'/>",
    '',
])
def test_a_config_drive_is_accepted_as_libxl_decides(settings, tmp_path,
                                                     driver):
    iso = _write(tmp_path / 'images' / 'disk.config', b'\x00' * 0x8001
                 + b'CD001')
    dom = _domain(_file_disk(iso, driver, 'hdd', 'cdrom', '<readonly/>'))
    assert _problems(settings, dom) == []


@pytest.mark.parametrize('driver,words', [
    ("<driver name='qemu' type='qcow2'/>", "format 'qcow2'"),
    ("<driver name='phy'/>", "driver 'phy'"),
])
def test_other_cdrom_drivers_are_refused(settings, tmp_path, driver, words):
    iso = _write(tmp_path / 'images' / 'cd.iso')
    dom = _domain(_file_disk(iso, driver, 'hdc', 'cdrom'))
    assert words in _text(_problems(settings, dom))


def test_a_cdrom_image_with_a_qcow2_header_is_refused(settings, tmp_path):
    iso = _write(tmp_path / 'images' / 'cd.iso', HEADERS['qcow2'])
    dom = _domain(_file_disk(iso, '', 'hdc', 'cdrom'))
    assert 'header says qcow2' in _text(_problems(settings, dom))


# -- colons, rbd --------------------------------------------------------------
def test_a_colon_is_allowed_in_a_disk_path_only(settings, tmp_path):
    path = _write(tmp_path / 'images' / 'ip-10.0.0.2:3260-lun-1')
    assert _problems(settings, _domain(_file_disk(path))) == []
    dom = _domain(os_extra='<kernel>%s</kernel>' % path)
    assert 'letters, digits' in _text(_problems(settings, dom))


def test_rbd_is_refused_with_the_kernel_mapping_as_remedy(settings):
    dom = _domain(
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<source protocol='rbd' name='vms/disk'><host name='10.0.0.1' "
        "port='6789'/></source><target dev='xvda' bus='xen'/></disk>")
    problems = _problems(settings, dom)
    rbd = [p for p in problems if p.subject.startswith('rbd disk')]
    assert rbd and 'cephx key' in rbd[0].reason
    assert 'rbd map' in rbd[0].remedy


# -- block devices by identity ------------------------------------------------
@contextlib.contextmanager
def loop_device(tmp_path, data=b''):
    if os.geteuid() != 0:
        pytest.skip('creating a loop device needs root')
    backing = _write(tmp_path / 'loop-backing', data, 4 << 20)
    try:
        dev = subprocess.run(['losetup', '--find', '--show', backing],
                             check=True, capture_output=True,
                             text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip('no loop device here: %s' % err)
    try:
        yield dev
    finally:
        subprocess.run(['losetup', '-d', dev], check=False)


def test_a_lun_through_an_allowed_by_path_directory(tmp_path):
    with loop_device(tmp_path) as dev:
        by_path = tmp_path / 'disk' / 'by-path'
        by_path.mkdir(parents=True)
        link = by_path / ('ip-10.0.0.2:3260-iscsi-iqn.2010-10.org.openstack:'
                          'volume-1-lun-1')
        link.symlink_to(dev)
        other = tmp_path / 'elsewhere'
        other.mkdir()
        (other / 'lun').symlink_to(dev)
        settings = base.make_settings(
            tmp_path, allowed_host_paths=[str(by_path)],
            writable_shared_host_paths=[str(by_path)])
        assert _problems(settings, _domain(_block_disk(str(link)))) == []
        text = _text(_problems(settings, _domain(_block_disk(
            str(other / 'lun')))))
        assert 'not under' in text


def test_a_device_dom0_uses_is_refused(tmp_path):
    with loop_device(tmp_path) as dev:
        major, minor = blockdev._devnum(dev)
        proc = tmp_path / 'proc'
        (proc / 'self').mkdir(parents=True)
        (proc / 'self' / 'mountinfo').write_text(
            '29 1 %d:%d / /srv rw - ext4 %s rw\n' % (major, minor, dev))
        (proc / 'swaps').write_text('Filename Type Size Used Priority\n')
        assert 'mounted in dom0' in blockdev.dom0_use(dev, str(proc))
        (proc / 'self' / 'mountinfo').write_text('')
        (proc / 'swaps').write_text(
            'Filename Type Size Used Priority\n%s partition 4092 0 -2\n'
            % dev)
        assert 'swap' in blockdev.dom0_use(dev, str(proc))
        (proc / 'swaps').write_text('Filename Type Size Used Priority\n')
        sys_root = tmp_path / 'sys'
        holders = sys_root / 'dev' / 'block' / ('%d:%d' % (major, minor)) \
            / 'holders'
        holders.mkdir(parents=True)
        assert blockdev.dom0_use(dev, str(proc), str(sys_root)) is None
        (holders / 'dm-3').mkdir()
        assert 'held by dm-3' in blockdev.dom0_use(dev, str(proc),
                                                   str(sys_root))
        # The real /proc and /sys: a fresh loop device is nobody's.
        assert blockdev.dom0_use(dev) is None


def _root_device():
    """The block device node dom0's / is mounted from, or skip."""
    with open('/proc/self/mountinfo') as handle:
        for line in handle:
            fields = line.split()
            if fields[4] == '/':
                devnum = fields[2]
                break
        else:
            pytest.skip('no root mount found')
    try:
        with open('/sys/dev/block/%s/uevent' % devnum) as handle:
            name = dict(line.strip().split('=', 1) for line in handle
                        if '=' in line).get('DEVNAME')
    except OSError:
        pytest.skip('/ is not mounted from a block device here')
    if not name or not os.path.exists('/dev/%s' % name):
        pytest.skip('no device node for /')
    return '/dev/%s' % name


@pytest.mark.parametrize('device', [
    # Every kind of disk that may name a block device, through one check.
    "<disk type='block' device='disk'><driver name='phy'/><source dev='%s'/>"
    "<target dev='xvdb' bus='xen'/></disk>",
    "<disk type='block' device='disk'><driver name='phy'/><source dev='%s'/>"
    "<target dev='xvdb' bus='xen'/><readonly/></disk>",
    "<disk type='block' device='cdrom'><source dev='%s'/>"
    "<target dev='hdc' bus='ide'/><readonly/></disk>",
    "<disk type='block' device='cdrom'><driver name='qemu' type='raw'/>"
    "<source dev='%s'/><target dev='hdc' bus='ide'/><readonly/></disk>",
], ids=['disk', 'readonly-disk', 'cdrom', 'cdrom-qemu-raw'])
def test_dom0s_mounted_disk_is_refused_as_any_disk_kind(tmp_path, device):
    """A by-path link in an allowed (shared) directory may resolve to
    any block device node; a CD-ROM, opened by QEMU as root at start-up,
    goes through the same identity and dom0-use checks as a disk.
    """
    dev = _root_device()
    by_path = tmp_path / 'disk' / 'by-path'
    by_path.mkdir(parents=True)
    link = by_path / 'pci-0000:00:1f.2-ata-1'
    link.symlink_to(dev)
    settings = base.make_settings(
        tmp_path, allowed_host_paths=[str(by_path)],
        writable_shared_host_paths=[str(by_path)])
    text = _text(_problems(settings, _domain(device % link)))
    assert 'mounted in dom0' in text, text


def _blkback(sys_root, name, devnum):
    vbd = sys_root / 'bus' / 'xen-backend' / 'devices' / name
    vbd.mkdir(parents=True)
    # As xen-blkback's VBD_SHOW(physical_device, "%x:%x\n", ...) writes it.
    (vbd / 'physical_device').write_text('%x:%x\n' % devnum)


def test_a_device_a_running_guest_has_is_refused(tmp_path):
    """blkback does not register as a holder of the device it serves, so
    another instance's LUN in a shared by-path directory looks unused to
    dom0; the backend's own sysfs attribute shows it.
    """
    with loop_device(tmp_path) as dev:
        devnum = blockdev._devnum(dev)
        sys_root = tmp_path / 'sys'
        _blkback(sys_root, 'vbd-3-51712', (devnum[0], devnum[1] + 1))
        _blkback(sys_root, 'vif-3-0', devnum)
        assert blockdev.guest_use(dev, str(sys_root)) is None
        _blkback(sys_root, 'vbd-7-51728', devnum)
        reason = blockdev.guest_use(dev, str(sys_root))
        assert 'served to a running guest' in reason
        assert 'vbd-7-51728' in reason
        proc = tmp_path / 'proc'
        (proc / 'self').mkdir(parents=True)
        (proc / 'self' / 'mountinfo').write_text('')
        (proc / 'swaps').write_text('Filename Type Size Used Priority\n')
        assert 'vbd-7-51728' in blockdev.problem(
            '/dev/disk/by-path/ip-10.0.0.2:3260-iscsi-iqn.x-lun-1', dev,
            str(proc), str(sys_root))
        # The real /sys: no guest has a fresh loop device.
        assert blockdev.guest_use(dev) is None


def test_an_lvm_name_must_reach_that_volume(tmp_path):
    with loop_device(tmp_path) as dev:
        major, minor = blockdev._devnum(dev)
        dm = tmp_path / 'sys' / 'dev' / 'block' / ('%d:%d' % (major, minor)) \
            / 'dm'
        dm.mkdir(parents=True)
        (dm / 'name').write_text('nova--vg-inst_disk\n')
        sys_root = str(tmp_path / 'sys')
        assert blockdev.identity_problem('/dev/nova-vg/inst_disk', dev,
                                         sys_root) is None
        assert 'not the device-mapper device' in blockdev.identity_problem(
            '/dev/nova-vg/other_disk', dev, sys_root)
        assert blockdev.identity_problem('/dev/disk/by-id/x', dev,
                                         sys_root) is None


# -- scoped paths -------------------------------------------------------------
@pytest.fixture
def scoped(tmp_path):
    instances = tmp_path / 'instances'
    base_dir = instances / '_base'
    settings = base.make_settings(
        tmp_path, allowed_host_paths=[str(instances / '{instance}'),
                                      str(base_dir),
                                      str(tmp_path / 'tenants' / '{tenant}')])
    return settings, instances, base_dir


def test_an_instance_may_use_its_own_disk_and_not_anothers(scoped):
    settings, instances, _ = scoped
    own = _write(instances / UUID_A / 'disk')
    other = _write(instances / UUID_B / 'disk')
    scope = pathscope.Scope('acme', UUID_A)
    assert _problems(settings, _domain(_file_disk(own)), scope) == []
    text = _text(_problems(settings, _domain(_file_disk(other)), scope))
    assert 'not under' in text and UUID_B in text


def test_a_tenant_may_use_its_own_files_and_not_anothers(scoped, tmp_path):
    settings, _, _ = scoped
    own = _write(tmp_path / 'tenants' / 'acme' / 'vmlinuz')
    other = _write(tmp_path / 'tenants' / 'globex' / 'vmlinuz')
    scope = pathscope.Scope('acme', UUID_A)
    assert _problems(settings, _domain(os_extra='<kernel>%s</kernel>' % own),
                     scope) == []
    assert 'not under' in _text(_problems(settings, _domain(
        os_extra='<kernel>%s</kernel>' % other), scope))


def test_a_shared_entry_is_read_only(scoped):
    settings, _, base_dir = scoped
    image = _write(base_dir / 'image')
    scope = pathscope.Scope('acme', UUID_A)
    text = _text(_problems(settings, _domain(_file_disk(image)), scope))
    assert 'may only read' in text
    assert _problems(settings, _domain(_file_disk(
        image, extra='<readonly/>')), scope) == []
    assert _problems(settings, _domain(
        os_extra='<kernel>%s</kernel>' % image), scope) == []


def test_writable_shared_paths_must_be_shared_entries(tmp_path):
    with pytest.raises(exception.ConfigError):
        base.make_settings(tmp_path, allowed_host_paths=['/srv/a'],
                           writable_shared_host_paths=['/srv/b'])
    with pytest.raises(exception.ConfigError):
        base.make_settings(
            tmp_path, allowed_host_paths=['/srv/{instance}'],
            writable_shared_host_paths=['/srv/{instance}'])
    with pytest.raises(exception.ConfigError):
        base.make_settings(tmp_path, allowed_host_paths=['/srv/{user}'])


def test_a_shared_entry_above_a_scoped_one_is_refused_at_load(tmp_path):
    images = str(tmp_path / 'images')
    for shared in (images, str(tmp_path)):
        with pytest.raises(exception.ConfigError) as err:
            base.make_settings(tmp_path, allowed_host_paths=[
                images + '/{instance}', shared])
        assert shared in str(err.value)
        assert images + '/{instance}' in str(err.value)
    with pytest.raises(exception.ConfigError):
        base.make_settings(tmp_path, allowed_host_paths=[
            images + '/inst-{instance}', images])
    # Nova's _base beside the instance directories is no such pair.
    base.make_settings(tmp_path, allowed_host_paths=[
        images + '/{instance}', images + '/_base'])


@pytest.fixture
def above(tmp_path):
    """Settings with a shared entry above a scoped one, as a
    configuration not loaded through oslo.config could still hold.
    """
    images = tmp_path / 'images'
    settings = dataclasses.replace(
        base.make_settings(tmp_path),
        allowed_host_paths=(str(images / '{instance}'), str(images)))
    return settings, images


@pytest.mark.parametrize('as_what', ['readonly-disk', 'cdrom', 'backing'])
def test_another_instances_directory_is_refused_under_a_shared_entry(
        above, tmp_path, as_what):
    settings, images = above
    own = _write(images / UUID_A / 'own.img')
    other = _write(images / UUID_B / 'disk.img')
    scope = pathscope.Scope('acme', UUID_A)
    if as_what == 'readonly-disk':
        def make(path):
            return _domain(_file_disk(path, extra='<readonly/>'))
    elif as_what == 'cdrom':
        def make(path):
            return _domain(_file_disk(
                path, driver='', target='hdc', device='cdrom',
                extra='<readonly/>').replace("bus='xen'", "bus='ide'"))
    else:
        def make(path):
            top = _qcow2(images / UUID_A / ('top-%s.qcow2'
                                            % os.path.basename(path)),
                         backing=path)
            return _domain(_file_disk(top, "<driver name='qemu' "
                                      "type='qcow2'/>"))
        settings = dataclasses.replace(
            settings, storage_daemon='enabled',
            storage_dir=str(tmp_path / 'storage'))
    assert _problems(settings, make(own), scope) == []
    text = _text(_problems(settings, make(other), scope))
    assert 'another instance or tenant' in text and UUID_B in text, text


def test_a_link_into_another_instances_directory_is_refused(above):
    settings, images = above
    other = _write(images / UUID_B / 'disk.img')
    link = images / UUID_A / 'disk.img'
    link.parent.mkdir(parents=True)
    link.symlink_to(other)
    text = _text(_problems(settings, _domain(_file_disk(
        str(link), extra='<readonly/>')), pathscope.Scope('acme', UUID_A)))
    assert 'another instance or tenant' in text and UUID_B in text, text


def test_without_a_scope_a_placeholder_stands_for_one_component(scoped):
    settings, instances, _ = scoped
    other = _write(instances / UUID_B / 'disk')
    assert _problems(settings, _domain(_file_disk(other))) == []


def test_the_hook_renders_and_scopes(scoped, tmp_path):
    settings, instances, _ = scoped
    own = _write(instances / UUID_A / 'disk')
    other = _write(instances / UUID_B / 'disk')
    hook = extension.DmRestrictHook(None, settings)
    try:
        xml = base.edit(_domain(_file_disk(own)).to_string(),
                        lambda root: root.find('uuid').set('x', 'y') or
                        root.remove(root.find('uuid')))
        out = hook.prepare(xml, hooks.Instance(UUID_A, 'acme'))
        assert "name=\"phy\"" in out or "name='phy'" in out
        xml = base.edit(_domain(_file_disk(other)).to_string(),
                        lambda root: root.remove(root.find('uuid')))
        with pytest.raises(exception.FeatureRefused) as err:
            hook.prepare(xml, hooks.Instance(UUID_A, 'acme'))
        assert UUID_B in str(err.value)
    finally:
        hook.close()


def test_a_host_view_reads_the_host_once_for_its_check_only(settings,
                                                            tmp_path):
    """One view answers its check's second question about a disk as the
    first (render and the policy of one prepare); a new view, the next
    check's, sees the disk as it is now.
    """
    path = _write(tmp_path / 'images' / 'disk')
    view = disks.HostView(settings, None)
    dom = _domain(_file_disk(path))
    disks.render(dom, settings, None, view)
    assert policy.Checker(settings, view=view).problems(dom, []) == []
    _write(path, HEADERS['qcow2'])
    assert view.sniff(path) == 'raw'
    assert "declared raw but its header says qcow2" in _text(
        _problems(settings, dom))
    os.unlink(path)
    os.symlink('/etc/passwd', path)
    assert view.path_problem(path, hostpaths.Expect.FILE, True,
                             disk=True) is None
    assert 'outside [dm_restrict] allowed_host_paths' in _text(
        _problems(settings, dom))


def test_a_host_view_serves_only_the_check_it_was_made_for(settings):
    view = disks.HostView(settings, pathscope.Scope('acme', UUID_A))
    with pytest.raises(ValueError):
        policy.Checker(settings, scope=pathscope.Scope('acme', UUID_B),
                       view=view)
    with pytest.raises(ValueError):
        disks.render(_domain(), settings, None, view)


@pytest.mark.parametrize('change', ['header', 'symlink'])
def test_a_disk_changed_after_a_boot_is_refused_at_the_next(settings,
                                                            tmp_path,
                                                            change):
    """Nothing the hook read of a disk at one prepare is kept for the
    next: an image given a qcow2 header, or swapped for a symlink out of
    the allowed paths, after a boot is refused at the next boot.
    """
    path = _write(tmp_path / 'images' / 'disk')
    xml = base.edit(_domain(_file_disk(path)).to_string(),
                    lambda root: root.remove(root.find('uuid')))
    hook = extension.DmRestrictHook(None, settings)
    try:
        hook.prepare(xml, hooks.Instance(UUID_A, 'acme'))
        if change == 'header':
            _write(path, HEADERS['qcow2'])
            expected = 'declared raw but its header says qcow2'
        else:
            os.unlink(path)
            os.symlink('/etc/passwd', path)
            expected = 'outside [dm_restrict] allowed_host_paths'
        with pytest.raises(exception.FeatureRefused) as err:
            hook.prepare(xml, hooks.Instance(UUID_B, 'acme'))
        assert expected in str(err.value)
        assert [lease.uuid for lease in hook.store.list()] == [UUID_A]
    finally:
        hook.close()


# -- qcow2 through the storage daemon -----------------------------------------
def _qcow2_settings(tmp_path, **extra):
    instances = tmp_path / 'instances'
    return base.make_settings(
        tmp_path, allowed_host_paths=[str(instances / '{instance}'),
                                      str(instances / '_base')],
        storage_daemon='enabled', storage_dir=str(tmp_path / 'storage'),
        **extra)


def _nova_qcow2(tmp_path, backing=None):
    base_file = _write(tmp_path / 'instances' / '_base' / 'abc')
    return _qcow2(tmp_path / 'instances' / UUID_A / 'disk',
                  backing or base_file, 'raw')


def test_a_qcow2_overlay_renders_to_the_instances_stable_path(tmp_path):
    settings = _qcow2_settings(tmp_path)
    overlay = _nova_qcow2(tmp_path)
    xml = _domain(_file_disk(overlay, "<driver name='qemu' type='qcow2' "
                             "cache='none'/>")).to_string()
    xml = base.edit(xml, lambda root: root.remove(root.find('uuid')))
    hook = extension.DmRestrictHook(None, settings)
    try:
        out = hook.prepare(xml, hooks.Instance(UUID_A, 'acme'))
        again = hook.prepare(out, hooks.Instance(UUID_A, 'acme'))
    finally:
        hook.close()
    assert again == out
    dom = domain.parse(out, 1 << 20)
    disk = dom.root.find('devices/disk')
    assert disk.get('type') == 'block'
    assert disk.find('driver').get('name') == 'phy'
    assert disk.find('source').get('dev') == disks.stable_path(
        settings.storage_dir, UUID_A, 'xvda')
    assert disks.daemon_disks(dom) == [
        disks.DaemonDisk('xvda', overlay, 'qcow2')]
    base.assert_schema_valid(out)
    policy.check_domain(dom, [], settings,
                        scope=pathscope.Scope('acme', UUID_A))


def test_a_qcow2_whose_backing_file_points_outside_is_refused(tmp_path):
    settings = _qcow2_settings(tmp_path)
    overlay = _nova_qcow2(tmp_path, backing='/etc/shadow')
    xml = base.edit(_domain(_file_disk(
        overlay, "<driver name='qemu' type='qcow2'/>")).to_string(),
        lambda root: root.remove(root.find('uuid')))
    hook = extension.DmRestrictHook(None, settings)
    try:
        with pytest.raises(exception.FeatureRefused) as err:
            hook.prepare(xml, hooks.Instance(UUID_A, 'acme'))
    finally:
        hook.close()
    assert '/etc/shadow' in str(err.value)
    assert not os.path.exists(settings.lease_db) or not hook.store.list()


# -- the storage record is the product's, never the tenant's -----------------
def _with_record(dom, *entries):
    dom.set_metadata(disks._record([disks.DaemonDisk(*entry)
                                    for entry in entries]))
    return dom


def _storage_nodes(xml):
    return etree.fromstring(xml.encode()).findall(
        'metadata/{%s}*' % disks.STORAGE_NS)


def _prepare(settings, xml):
    xml = base.edit(xml, lambda root: root.remove(root.find('uuid')))
    hook = extension.DmRestrictHook(None, settings)
    try:
        return hook.prepare(xml, hooks.Instance(UUID_A, 'acme'))
    finally:
        hook.close()


@pytest.mark.parametrize('target', [
    '/etc/pam', '../%s/xvda' % UUID_B, 'xvda/../../x', '..', 'xvdb'])
def test_a_storage_record_the_tenant_wrote_is_dropped(tmp_path, target):
    settings = _qcow2_settings(tmp_path)
    image = _qcow2(tmp_path / 'instances' / UUID_A / 'disk')
    out = _prepare(settings, _with_record(
        _domain(), (target, image, 'qcow2')).to_string())
    assert _storage_nodes(out) == []


def test_a_rendered_domain_keeps_only_its_own_storage_entries(tmp_path):
    settings = _qcow2_settings(tmp_path)
    overlay = _nova_qcow2(tmp_path)
    out = _prepare(settings, _domain(_file_disk(
        overlay, "<driver name='qemu' type='qcow2'/>")).to_string())
    dom = domain.parse(out, 1 << 20)
    forged = _with_record(dom, ('xvda', overlay, 'qcow2'),
                          ('/etc/pam', overlay, 'qcow2'),
                          ('xvdc', overlay, 'qcow2'))
    again = _prepare(settings, forged.to_string())
    assert again == out
    assert disks.daemon_disks(domain.parse(again, 1 << 20)) == [
        disks.DaemonDisk('xvda', overlay, 'qcow2')]


@pytest.mark.parametrize('entries,words', [
    ([('/etc/pam', 'IMAGE', 'qcow2')], 'not a disk target name'),
    ([('../%s/xvda' % UUID_B, 'IMAGE', 'qcow2')], 'not a disk target name'),
    ([('xvda', 'IMAGE', 'qcow2'), ('xvda', 'IMAGE', 'qcow2')],
     'more than once'),
    ([('xvda', 'IMAGE', 'qcow2'), ('xvdc', 'IMAGE', 'qcow2')],
     'names the stable path'),
])
def test_the_libvirt_hooks_policy_refuses_a_forged_storage_record(
        tmp_path, entries, words):
    """The daemon hook checks a domain defined in libvirt directly: every
    entry of its storage record needs a disk target name, once, and a
    ``<disk type='block'>`` at the instance's stable path.
    """
    settings = _qcow2_settings(tmp_path)
    overlay = _nova_qcow2(tmp_path)
    stable = disks.stable_path(settings.storage_dir, _domain().uuid,
                               'xvda')
    dom = _domain(_block_disk(stable, target='xvda'))
    _with_record(dom, *[(target, overlay, fmt)
                        for target, _, fmt in entries])
    scope = pathscope.Scope('acme', dom.uuid)
    found = policy.Checker(settings, scope=scope).problems(dom, [])
    assert words in _text([p for p in found
                           if 'storage record' in p.subject])


def test_a_second_element_of_the_storage_namespace_is_refused(tmp_path):
    settings = _qcow2_settings(tmp_path)
    dom = _domain()
    _with_record(dom, ('xvda', '/x', 'qcow2'))
    dom.root.find('metadata').append(etree.Element(disks.STORAGE + 'other'))
    found = policy.Checker(settings, scope=None).problems(dom, [])
    assert 'exactly one' in _text(found)


@pytest.mark.parametrize('instance,target', [
    (UUID_A, '/etc/pam'), (UUID_A, '..'), (UUID_A, '.'), (UUID_A, ''),
    (UUID_A, 'xvda/../../etc'), ('..', 'xvda'), ('a/b', 'xvda'),
    (UUID_A, 'pam'),
])
def test_storage_paths_never_leave_the_instances_directory(tmp_path,
                                                           instance, target):
    from xen_dm_restrict_plugin.storage import daemon
    storage = str(tmp_path / 'storage')
    for func in (disks.stable_path, daemon.disk_dir, daemon.socket_path):
        with pytest.raises(ValueError):
            func(storage, instance, target)
    assert daemon.disk_dir(storage, UUID_A, 'xvda') == os.path.join(
        storage, UUID_A, 'xvda.d')


@pytest.mark.parametrize('offset,length', [
    ((1 << 63) + 5, 10), ((1 << 64) - 1, 1023), (1 << 40, 10), (100, 1023)])
def test_a_backing_name_past_the_end_of_the_image_is_refused(
        tmp_path, offset, length):
    """The offsets come from the image: a huge one is a refusal that
    names the image, not an OverflowError out of ``pread``.
    """
    import struct
    header = bytearray(b'QFI\xfb' + struct.pack('>IQI', 3, offset, length)
                       + b'\0' * 200)
    struct.pack_into('>I', header, 100, 104)
    path = tmp_path / 'crafted.qcow2'
    path.write_bytes(bytes(header))
    with pytest.raises(imageformat.ImageProblem) as err:
        imageformat.read_qcow2_header(str(path))
    assert 'past its end' in str(err.value)
    assert str(path) in str(err.value)


# -- root reads nothing before the path is checked ---------------------------
def _aged(path):
    """A file whose next read would move its atime (relatime included)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_mtime_ns - 10 ** 12, st.st_mtime_ns))
    return os.stat(path).st_atime_ns


@pytest.mark.parametrize('driver', [
    "<driver name='qemu' type='raw'/>", "<driver name='file'/>", ''])
def test_a_file_outside_the_allowed_paths_is_never_read(tmp_path, driver):
    """Neither render (root, for virt-manager domains) nor the policy
    (the libvirt hook, root) reads a file before its path is allowed:
    /proc/kmsg would block and swallow dom0's kernel log, a hung NFS file
    would hang libvirtd's synchronous hook.
    """
    (tmp_path / 'allowed').mkdir()
    secret = _write(tmp_path / 'outside' / 'secret', b'x' * 4096, 4096)
    before = _aged(secret)
    settings = base.make_settings(
        tmp_path, allowed_host_paths=[str(tmp_path / 'allowed')])
    dom = _domain(_file_disk(secret, driver))
    assert policy.Checker(settings, scope=None).problems(dom, [])
    text = _text(_problems(settings, dom))
    assert secret in text and 'allowed_host_paths' in text, text
    assert os.stat(secret).st_atime_ns == before


def test_only_a_regular_file_is_ever_opened_for_its_header(tmp_path):
    fifo = str(tmp_path / 'fifo')
    os.mkfifo(fifo)
    # Held open with data in it, so that a regression reads (and fails
    # here) instead of blocking the test.
    holder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(holder, b'QFI\xfb')
        link = tmp_path / 'link'
        link.symlink_to(fifo)
        # /proc and /sys files are "regular" to stat() (never /proc/kmsg
        # here: a regression would swallow the host's kernel log).
        for path in (fifo, str(link), '/dev/null', '/proc/self/status',
                     '/sys/kernel/uevent_seqnum'):
            if not os.path.exists(path):
                continue
            with pytest.raises(OSError):
                imageformat.sniff(path)
    finally:
        os.close(holder)
    assert imageformat.sniff(_write(tmp_path / 'raw')) == 'raw'
    raw_link = tmp_path / 'raw-link'
    raw_link.symlink_to(tmp_path / 'raw')
    assert imageformat.sniff(str(raw_link)) == 'raw'
