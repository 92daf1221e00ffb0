"""The project's own corpus of realistic tenant domains.

Built here the way the orchestrators build them for Xen (written by the
project, not copied): Nova's ``nova/virt/libvirt/config.py`` objects as
``driver.py`` ``_get_guest_config``, ``imagebackend.py``,
``blockinfo.py``, ``vif.py`` and ``volume/*.py`` fill them for
``virt_type = xen`` (HVM; stable/mitaka, train and victoria differ in
the memballoon statistics, the console log and the bus names),
Eucalyptus's ``libvirt.xsl`` for Xen HVM, virt-manager's Xen HVM output
and libvirt's own libxl test domains.  Each builder returns the XML and
the image files it names, created under a directory the caller gives.

Installing Nova from PyPI to use its own classes was judged too heavy
for the test environments (it pulls most of OpenStack); the builders
follow the element order and attributes of ``LibvirtConfigGuest*``'s
``format_dom`` methods instead.
"""

import os
import subprocess
import typing

from lxml import etree

E = etree.Element
S = etree.SubElement


#: The vif name Nova writes (``get_vif_devname``: "tap" + 11 characters of
#: the port id), 14 characters.
NOVA_TAP = 'tap4a5b6c7d-8e'


def _raw(path: str, size: int = 1 << 20) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as handle:
        handle.truncate(size)
    os.chmod(path, 0o644)
    return path


def _iso(path: str) -> str:
    _raw(path, 1 << 16)
    with open(path, 'r+b') as handle:
        handle.seek(0x8001)
        handle.write(b'CD001')
    return path


def _qcow2(path: str, backing: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                    '-b', backing, path], check=True)
    return path


def _nova_guest(uuid: str, release: str) -> etree._Element:
    """``LibvirtConfigGuest.format_dom`` for a Xen HVM guest."""
    dom = E('domain', type='xen')
    S(dom, 'uuid').text = uuid
    S(dom, 'name').text = 'instance-0000002a'
    S(dom, 'memory').text = '524288'
    S(dom, 'vcpu').text = '1'
    meta = S(dom, 'metadata')
    nova = '{http://openstack.org/xmlns/libvirt/nova/1.0}'
    inst = S(meta, nova + 'instance', nsmap={
        'nova': 'http://openstack.org/xmlns/libvirt/nova/1.0'})
    S(inst, nova + 'package', version=release)
    S(inst, nova + 'name').text = 'web-1'
    owner = S(inst, nova + 'owner')
    S(owner, nova + 'project', uuid='acme').text = 'acme'
    os_ = S(dom, 'os')
    S(os_, 'type').text = 'hvm'
    S(os_, 'loader').text = '/usr/lib/xen/boot/hvmloader'
    S(os_, 'boot', dev='hd')
    features = S(dom, 'features')
    for name in ('acpi', 'apic', 'pae'):
        S(features, name)
    cpu = S(dom, 'cpu')
    S(cpu, 'topology', sockets='1', cores='1', threads='1')
    S(dom, 'clock', offset='utc')
    return dom


def _nova_tail(devices: etree._Element, release: str, mac: str,
               console_log: str, tap: str) -> None:
    """vif.py (bridge, Linux bridge agent), consoles, input, graphics,
    video and the balloon, as ``_get_guest_config`` adds them for Xen.
    """
    nic = S(devices, 'interface', type='bridge')
    S(nic, 'mac', address=mac)
    S(nic, 'source', bridge='brq4a5b6c7d-8e')
    S(nic, 'target', dev=tap)
    if release != 'mitaka':
        S(nic, 'mtu', size='1450')
    serial = S(devices, 'serial', type='pty')
    if release == 'victoria':
        S(serial, 'log', file=console_log, append='off')
    S(devices, 'input', type='tablet', bus='usb')
    S(devices, 'graphics', type='vnc', autoport='yes', keymap='en-us',
      listen='127.0.0.1')
    S(S(devices, 'video'), 'model', type='xen')
    balloon = S(devices, 'memballoon', model='xen')
    S(balloon, 'stats', period='10')


def _disk(devices, kind, device, driver, source, target, bus, extra=()):
    disk = S(devices, 'disk', type=kind, device=device)
    if driver:
        S(disk, 'driver', **driver)
    S(disk, 'source', **source)
    S(disk, 'target', dev=target, bus=bus)
    for tag, attrs, text in extra:
        node = S(disk, tag, **attrs)
        if text:
            node.text = text
    return disk


def nova(root: str, uuid: str, release: str, backend: str,
         config_drive: bool = True, volume: typing.Optional[str] = None,
         firewall: bool = False, iotune: bool = False,
         vg: str = '/dev/nova-vg', tap: str = NOVA_TAP) -> str:
    """A Nova guest for ``virt_type = xen`` with ``images_type`` backend
    ``flat`` (raw files), ``qcow2`` or ``lvm``.

    :param tap: the ``<target dev>`` of the vif; Nova writes ``tap`` and
        the first 11 characters of the port id (:data:`NOVA_TAP`).
    """
    inst = os.path.join(root, 'instances', uuid)
    dom = _nova_guest(uuid, release)
    devices = S(dom, 'devices')
    # pick_disk_driver_name: qemu for files on Xen >= 4.2, phy for blocks.
    extra = [('iotune', {}, None)] if iotune else []
    if backend == 'flat':
        _disk(devices, 'file', 'disk', dict(name='qemu', type='raw',
                                            cache='none'),
              dict(file=_raw(os.path.join(inst, 'disk'))), 'xvda', 'xen',
              extra)
    elif backend == 'qcow2':
        base = _raw(os.path.join(root, 'instances', '_base', 'a1b2c3'))
        _disk(devices, 'file', 'disk', dict(name='qemu', type='qcow2',
                                            cache='none'),
              dict(file=_qcow2(os.path.join(inst, 'disk'), base)), 'xvda',
              'xen', extra)
    elif backend == 'lvm':
        _disk(devices, 'block', 'disk', dict(name='phy', type='raw',
                                             cache='none', io='native'),
              dict(dev='%s/%s_disk' % (vg, uuid)), 'xvda', 'xen')
    if iotune:
        node = devices.find('disk/iotune')
        S(node, 'total_bytes_sec').text = '10485760'
    if config_drive:
        _disk(devices, 'file', 'cdrom', dict(name='qemu', type='raw',
                                             cache='none'),
              dict(file=_iso(os.path.join(inst, 'disk.config'))), 'hdd',
              'ide', [('readonly', {}, None)])
    if volume:
        # volume/iscsi.py: a block device by path, the volume id as serial.
        _disk(devices, 'block', 'disk', dict(name='phy', type='raw',
                                             cache='none', io='native'),
              dict(dev=volume), 'xvdb', 'xen',
              [('serial', {}, '6f1c3b0e-volume')])
    _nova_tail(devices, release, 'fa:16:3e:12:34:56',
               os.path.join(inst, 'console.log'), tap)
    if firewall:
        nic = devices.find('interface')
        S(nic, 'filterref', filter='nova-instance-instance-0000002a-fa163e')
    return etree.tostring(dom, encoding='unicode')


def eucalyptus(root: str, uuid: str) -> str:
    """``libvirt.xsl`` for a Xen HVM instance: file disks with driver
    ``file``, a bridged vif with its script.
    """
    inst = os.path.join(root, 'instances', uuid)
    dom = E('domain', type='xen')
    S(dom, 'name').text = 'i-3A2B1C0D'
    S(dom, 'uuid').text = uuid
    S(dom, 'description').text = 'Eucalyptus instance i-3A2B1C0D'
    os_ = S(dom, 'os')
    S(os_, 'type').text = 'hvm'
    S(os_, 'loader').text = '/usr/lib/xen/boot/hvmloader'
    S(os_, 'boot', dev='hd')
    features = S(dom, 'features')
    for name in ('acpi', 'apic', 'pae'):
        S(features, name)
    S(dom, 'memory').text = '262144'
    S(dom, 'vcpu').text = '1'
    devices = S(dom, 'devices')
    _disk(devices, 'file', 'disk', dict(name='file'),
          dict(file=_raw(os.path.join(inst, 'root'))), 'hda', 'ide')
    _disk(devices, 'file', 'disk', dict(name='file'),
          dict(file=_raw(os.path.join(inst, 'ephemeral0'))), 'hdb', 'ide')
    nic = S(devices, 'interface', type='bridge')
    S(nic, 'source', bridge='eucabr0')
    S(nic, 'mac', address='d0:0d:3a:2b:1c:0d')
    S(nic, 'script', path='/etc/xen/scripts/vif-bridge')
    S(devices, 'serial', type='pty')
    S(devices, 'graphics', type='vnc', port='-1', autoport='yes',
      listen='127.0.0.1')
    return etree.tostring(dom, encoding='unicode')


def virt_manager(root: str, uuid: str, pool: str,
                 vg: str = '/dev/vg-guests') -> str:
    """virt-manager's Xen HVM output for a volume of a storage pool
    (``dir`` pool: a qcow2 file; ``logical``: an LV) and an ISO install.
    """
    dom = E('domain', type='xen')
    S(dom, 'name').text = 'debian12'
    S(dom, 'uuid').text = uuid
    S(dom, 'memory', unit='KiB').text = '1048576'
    S(dom, 'currentMemory', unit='KiB').text = '1048576'
    S(dom, 'vcpu', placement='static').text = '2'
    os_ = S(dom, 'os')
    S(os_, 'type', arch='x86_64', machine='xenfv').text = 'hvm'
    S(os_, 'loader', type='rom', format='raw').text = \
        '/usr/lib/xen/boot/hvmloader'
    S(os_, 'boot', dev='cdrom')
    S(os_, 'boot', dev='hd')
    features = S(dom, 'features')
    for name in ('acpi', 'apic', 'pae'):
        S(features, name)
    S(dom, 'clock', offset='utc', adjustment='reset')
    S(dom, 'on_poweroff').text = 'destroy'
    S(dom, 'on_reboot').text = 'restart'
    S(dom, 'on_crash').text = 'destroy'
    devices = S(dom, 'devices')
    images = os.path.join(root, 'pools', 'default')
    if pool == 'dir':
        base = _raw(os.path.join(images, '_base', 'debian-base.raw'))
        _disk(devices, 'file', 'disk', dict(name='qemu', type='qcow2'),
              dict(file=_qcow2(os.path.join(images, uuid, 'debian12.qcow2'),
                               base)), 'xvda', 'xen')
    else:
        _disk(devices, 'block', 'disk', dict(name='phy', type='raw'),
              dict(dev='%s/debian12' % vg), 'xvda', 'xen')
    _disk(devices, 'file', 'cdrom', dict(name='qemu', type='raw'),
          dict(file=_iso(os.path.join(root, 'pools', 'iso',
                                      'debian-12.iso'))),
          'hdc', 'ide', [('readonly', {}, None)])
    nic = S(devices, 'interface', type='bridge')
    S(nic, 'mac', address='00:16:3e:5a:6b:7c')
    S(nic, 'source', bridge='xenbr0')
    S(nic, 'model', type='netfront')
    console = S(devices, 'console', type='pty')
    S(console, 'target', type='xen', port='0')
    S(devices, 'input', type='mouse', bus='ps2')
    S(devices, 'graphics', type='vnc', port='-1', autoport='yes',
      listen='127.0.0.1')
    S(S(devices, 'video'), 'model', type='xen', vram='16384', heads='1',
      primary='yes')
    S(devices, 'memballoon', model='xen')
    return etree.tostring(dom, encoding='unicode')
