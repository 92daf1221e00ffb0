"""The whole-domain policy allows what is known safe and names the rest."""

import os

import pytest

from tests import base
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import policy
from xen_dm_restrict_plugin import exception

HOSTDEV = ("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
           "<address domain='0x0000' bus='0x0a' slot='0x08' "
           "function='0x0'/></source></hostdev>")
HOSTDEV_NIC = ("<interface type='hostdev' managed='yes'>"
               "<mac address='00:16:3e:2e:e7:fc'/><source>"
               "<address type='pci' domain='0x0000' bus='0x0a' slot='0x10' "
               "function='0x0'/></source></interface>")
EMPTY_CDROM = ("<disk type='file' device='cdrom'><target dev='hdd' "
               "bus='ide'/><readonly/></disk>")


def _disk(driver='', source="file='@IMAGES@/root-disk.img'",
          disk_type='file', device='disk', target='hdb'):
    return ("<disk type='%s' device='%s'>%s<source %s/>"
            "<target dev='%s'/></disk>" % (disk_type, device, driver,
                                           source, target))


@pytest.fixture
def settings(tmp_path):
    return base.make_settings(tmp_path)


def _check(settings, xml, args=()):
    xml = xml.replace(base.IMAGES_TOKEN, base.images_dir())
    policy.check_domain(domain.parse(xml, 1 << 20), list(args), settings)


def _refused(settings, xml, args=()):
    with pytest.raises(exception.FeatureRefused) as err:
        _check(settings, xml, args)
    assert 'Remedy:' in str(err.value)
    return str(err.value)


def _hvm_with(device):
    return base.add_device(base.fixture('hvm.xml'), device)


def test_the_fixture_passes(settings):
    _check(settings, base.fixture('hvm.xml'))


@pytest.mark.parametrize('device,words', [
    (HOSTDEV, ['<hostdev>', 'passthrough', 'remove the <hostdev>']),
    (HOSTDEV_NIC, ['PCI passthrough network interface', 'type="bridge"']),
    (EMPTY_CDROM, ['empty CD-ROM drive', 'hdd', 'media cannot be inserted',
                   '<source file=...>']),
    ("<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/>"
     "</source></hostdev>", ['<hostdev>', 'USB']),
    ("<parallel type='file'><source path='/etc/x'/></parallel>",
     ['<parallel>', 'remove the <parallel>']),
    ("<filesystem type='mount'><source dir='/'/><target dir='r'/>"
     "</filesystem>", ['<filesystem>']),
    ("<controller type='usb' model='qemu-xhci'/>", ["type='usb'",
                                                    'USB controller']),
    ("<graphics type='sdl' display=':0' xauth='/root/.Xauthority'/>",
     ["type='sdl'", 'XAUTHORITY', 'type="vnc"']),
    ("<graphics type='vnc' listen='unix:/etc/x'/>",
     ['listen', 'unix:/etc/x', 'IPv4 address']),
    ("<graphics type='vnc'><listen type='socket' socket='/etc/s'/>"
     "</graphics>", ['socket']),
    # An IPv6 scope id may hold commas: QEMU would add a unix listener
    # relative to its working directory, /, replacing /lib64 as root.
    ("<graphics type='vnc' port='5900' autoport='no' "
     "listen='::1%1:0,vnc=unix:lib64'/>", ['vnc=unix:lib64', 'IPv4']),
    ("<graphics type='vnc' port='5900'><listen type='address' "
     "address='::1%1:0,vnc=unix:lib64'/></graphics>", ['IPv4']),
    ("<graphics type='vnc' listen='::1'/>", ['IPv4']),
    ("<interface type='bridge'><source bridge='br0,script=/bin/sh'/>"
     "</interface>", ['bridge', 'script=/bin/sh', 'Linux interface name']),
    ("<interface type='bridge'><source bridge='br0'/>"
     "<model type='e1000,romfile=/etc/shadow'/></interface>",
     ['romfile', '<model type=']),
    ("<interface type='bridge'><source bridge='br0'/>"
     "<script path='/tmp/evil.sh'/></interface>",
     ['/tmp/evil.sh', 'allowed_interface_scripts']),
    ("<interface type='bridge'><source bridge='br0'/>"
     "<target dev='vif1,fd=3'/></interface>", ['<target dev=']),
    ("<interface type='direct'><source dev='eth0' mode='vepa'/>"
     "</interface>", ["type='direct'"]),
    ("<rng model='virtio'><backend model='random'>/dev/random</backend>"
     "</rng>", ['<rng>']),
    ("<watchdog model='i6300esb'/>", ['<watchdog>', 'not known to be safe']),
])
def test_refused_devices(settings, device, words):
    message = _refused(settings, _hvm_with(device))
    for word in words:
        assert word in message


@pytest.mark.parametrize('chardev', [
    "<serial type='file'><source path='/etc/cron.d/x'/></serial>",
    "<serial type='dev'><source path='/dev/sda'/></serial>",
    "<serial type='pipe'><source path='/etc/p'/></serial>",
    "<serial type='unix'><source mode='connect' path='/run/x.sock'/>"
    "</serial>",
    "<serial type='tcp'><source mode='bind' host='0.0.0.0' service='1'/>"
    "</serial>",
    "<console type='file'><source path='/etc/passwd'/></console>",
    "<channel type='unix'><source mode='bind' path='/etc/s'/>"
    "<target type='xen' name='org.x'/></channel>",
])
def test_chardevs_other_than_pty_are_refused(settings, chardev):
    message = _refused(settings, _hvm_with(chardev))
    assert 'allowed_chardev_types' in message


def test_allowed_chardev_type_still_needs_an_allowed_path(tmp_path):
    settings = base.make_settings(tmp_path,
                                  allowed_chardev_types=['pty', 'dev'])
    message = _refused(settings, _hvm_with(
        "<serial type='dev'><source path='/dev/ttyS0'/></serial>"))
    assert '/dev/ttyS0' in message and 'allowed_host_paths' in message


@pytest.mark.parametrize('kind', ['file', 'unix', 'pipe'])
def test_chardevs_that_reuse_host_objects_cannot_be_allowed(
        tmp_path, kind):
    # file: QEMU opens an existing file with O_TRUNC as root (a shared
    # ISO emptied); unix: it unlinks an existing socket (another guest's
    # console) and binds its own; pipe: PATH.in and PATH.out.
    with pytest.raises(ValueError):
        base.make_settings(tmp_path, allowed_chardev_types=['pty', kind])


@pytest.mark.parametrize('driver,source,disk_type,device,words', [
    ("<driver name='qemu' type='raw'/>", None, 'file', 'disk',
     ['qdisk backend', "'qemu'"]),
    ("<driver name='file'/>", None, 'file', 'disk', ['qdisk', "'file'"]),
    ("<driver name='tap' type='qcow2'/>", None, 'file', 'disk',
     ['qdisk', "'tap'"]),
    ("<driver name='tap2' type='qed'/>", None, 'file', 'disk', ['qdisk']),
    ("<driver name='tap' type='raw'/>", None, 'file', 'disk', ['blktap']),
    ('', "protocol='rbd' name='pool/img'", 'network', 'disk',
     ["'network'"]),
    ("<driver name='phy' type='qcow2'/>", None, 'file', 'disk',
     ["format 'qcow2'"]),
    ('', "file='/etc/shadow'", 'file', 'disk',
     ['/etc/shadow', 'allowed_host_paths']),
    ('', "file='@IMAGES@/../../etc/shadow'", 'file', 'disk',
     ['normal form']),
    ('', "file='@IMAGES@/a,format=qcow2'", 'file', 'disk', ['unescaped']),
    ('', "file='@IMAGES@/missing.img'", 'file', 'disk', ['does not exist']),
    ('', "dev='@IMAGES@/root-disk.img'", 'block', 'disk',
     ['not a block device']),
    ('', "file='@IMAGES@/root-disk.img'", 'file', 'floppy',
     ['disk and cdrom']),
    ("<driver name='phy'/>", "file='@IMAGES@/installer.iso'", 'file',
     'cdrom', ["driver 'phy'"]),
])
def test_disks(settings, driver, source, disk_type, device, words):
    message = _refused(settings, _hvm_with(_disk(
        driver, source or "file='@IMAGES@/root-disk.img'", disk_type,
        device)))
    for word in words:
        assert word in message


def test_symlink_out_of_the_allowed_prefix_is_refused(settings):
    link = os.path.join(base.images_dir(), 'escape.img')
    os.symlink('/etc/shadow', link)
    try:
        message = _refused(settings, _hvm_with(_disk(
            source="file='%s'" % link)))
    finally:
        os.unlink(link)
    assert 'symlink' in message and '/etc/shadow' in message


def test_a_block_device_under_an_allowed_prefix_passes(tmp_path):
    blocks = [os.path.join('/dev', name) for name in sorted(
        os.listdir('/dev')) if name.startswith(('loop', 'vd', 'sd'))]
    blocks = [path for path in blocks
              if os.path.exists(path) and os.stat(path).st_mode & 0o60000
              == 0o60000]
    if not blocks:
        pytest.skip('no block device node in /dev on this machine')
    settings = base.make_settings(
        tmp_path, allowed_host_paths=[blocks[0], base.images_dir()],
        writable_shared_host_paths=[blocks[0], base.images_dir()])
    _check(settings, _hvm_with(_disk(source="dev='%s'" % blocks[0],
                                     disk_type='block')))


@pytest.mark.parametrize('element,words', [
    ('<kernel>/etc/shadow</kernel>', ['<kernel>', '/etc/shadow']),
    ('<initrd>/root/.ssh/id_rsa</initrd>', ['<initrd>']),
    ("<acpi><table type='slic'>/etc/shadow</table></acpi>",
     ['ACPI table']),
])
def test_os_host_files(settings, element, words):
    xml = base.edit(base.fixture('hvm.xml'), lambda root: root.find(
        'os').append(domain.etree.fromstring(element)))
    message = _refused(settings, xml)
    for word in words:
        assert word in message


def test_kernel_and_initrd_under_an_allowed_prefix_pass(settings):
    def add(root):
        for tag, name in (('kernel', 'vmlinuz'), ('initrd', 'initrd.img')):
            node = domain.etree.SubElement(root.find('os'), tag)
            node.text = os.path.join(base.images_dir(), name)
    _check(settings, base.edit(base.fixture('hvm.xml'), add))


@pytest.mark.parametrize('loader,ok', [
    ('/usr/lib/xen/boot/hvmloader', True),
    ('/usr/lib/xen-4.17/boot/hvmloader', True),
    ('/etc/shadow', False),
    ('/usr/lib/xen/boot/../../../../etc/shadow', False),
])
def test_loader(settings, loader, ok):
    xml = base.fixture('hvm.xml').replace(
        '<loader>/usr/lib/xen/boot/hvmloader</loader>',
        '<loader>%s</loader>' % loader)
    if ok:
        _check(settings, xml)
    else:
        assert '<loader>' in _refused(settings, xml)


def test_emulator_must_be_the_configured_one(settings):
    message = _refused(settings, _hvm_with('<emulator>/bin/sh</emulator>'))
    assert '<emulator>/bin/sh</emulator>' in message
    _check(settings, _hvm_with('<emulator>%s</emulator>'
                               % settings.qemu_binary))


def test_traditional_device_model_is_refused(tmp_path):
    settings = base.make_settings(tmp_path,
                                  qemu_binary='/usr/lib/xen/bin/qemu-dm')
    message = _refused(settings, _hvm_with(
        '<emulator>/usr/lib/xen/bin/qemu-dm</emulator>'))
    assert 'qemu-xen-traditional' in message and 'qemu-dm' in message


def test_non_xen_domain_is_refused(settings):
    xml = base.fixture('hvm.xml').replace("type='xen'", "type='kvm'", 1)
    assert "type='kvm'" in _refused(settings, xml)


@pytest.mark.parametrize('xml_edit,words', [
    # libvirt reads "hvm": comments are not text.
    (lambda x: x.replace('>hvm</type>', '>h<!-- c -->vm</type>'), []),
    (lambda x: x.replace("<driver name='phy'/>",
                         "<driver xmlns:a='urn:a' a:name='qemu'/>"),
     ['namespaced attribute', 'a:name'.replace('a:', '{urn:a}')]),
    (lambda x: x.replace('<devices>', "<devices><x:hostdev xmlns:x='urn:x'"
                         " type='pci'/>"), ['namespace urn:x']),
    (lambda x: x.replace('<vcpu>1</vcpu>', '<vcpu>1</vcpu><vcpu>4</vcpu>'),
     ['second <vcpu>']),
    (lambda x: x.replace('<on_crash>', '<seclabel type="static"/>'
                         '<on_crash>'), ['<seclabel>']),
    (lambda x: x.replace("<disk type='file' device='disk'>",
                         "<disk type='file' device='disk' snapshot='x'>"),
     ["snapshot='x'"]),
    (lambda x: x.replace('<name>fixture-hvm</name>',
                         '<name>a,process=x</name>'), ['-name']),
])
def test_xml_is_read_as_libvirt_reads_it(settings, xml_edit, words):
    xml = xml_edit(base.fixture('hvm.xml'))
    if not words:
        _check(settings, xml)
        return
    message = _refused(settings, xml)
    for word in words:
        assert word in message


def test_comment_split_type_is_hvm_for_the_policy(settings):
    xml = _hvm_with(HOSTDEV).replace('>hvm</type>', '>h<!-- c -->vm</type>')
    assert '<hostdev>' in _refused(settings, xml)


@pytest.mark.parametrize('args,words', [
    (['-incoming', 'exec:sh -c id'], ['-incoming', 'exec:']),
    (['-chardev', 'file,id=x,path=/etc/x'], ['-chardev']),
    (['-fsdev', 'local,id=f,path=/,security_model=none'], ['-fsdev']),
    (['/root/secret.img'], ['bare argument']),
    (['-drive', 'file=/etc/shadow'], ['-drive']),
    (['-device', 'vfio-pci,host=0000:00:01.0'], ['-device']),
    (['-object', 'memory-backend-file,id=m,mem-path=/etc'], ['-object']),
    (['-netdev', 'tap,id=n,script=/tmp/x'], ['-netdev']),
    (['-runas', '0:0'], ['-runas', 'restriction']),
    (['-runas=1000'], ['-runas=1000']),
    (['-name'], ['last extra argument']),
    (['-rtc', 'base=utc'], ['allowed_qemu_options']),
    (['-readconfig', '/tmp/x.cfg'], ['-readconfig']),
    (['-set', 'sandbox.x.enable=off'], ['-set']),
])
def test_extra_arguments_are_default_deny(settings, args, words):
    message = _refused(settings, base.fixture('hvm.xml'), args)
    for word in words:
        assert word in message


def test_coredump_on_crash_is_refused(settings):
    xml = base.fixture('hvm.xml').replace(
        '<on_crash>destroy</on_crash>',
        '<on_crash>coredump-restart</on_crash>')
    assert 'coredump-restart' in _refused(settings, xml)


@pytest.mark.parametrize('option,value', [
    ('boot', 'splash=vmlinuz'), ('boot', 'order=c,splash=boot'),
    ('rtc', 'driver.romfile=x'), ('rtc', 'x.chardev=serial0'),
])
def test_allowed_option_keys_naming_files_are_refused(tmp_path, option,
                                                      value):
    settings = base.make_settings(tmp_path, allowed_qemu_options=[option])
    assert '-%s' % option in _refused(settings, base.fixture('hvm.xml'),
                                      ['-%s' % option, value])


@pytest.mark.parametrize('option', ['global', 'icount', 'display', 's',
                                    'dump-vmstate', 'qtest', 'qtest-log',
                                    'usbdevice', 'k'])
def test_options_that_reach_files_indirectly_cannot_be_allowed(tmp_path,
                                                               option):
    with pytest.raises(exception.ConfigError):
        base.make_settings(tmp_path, allowed_qemu_options=[option])


def test_allowed_options_pass_only_with_safe_values(tmp_path):
    settings = base.make_settings(tmp_path,
                                  allowed_qemu_options=['rtc', 'no-hpet'])
    _check(settings, base.fixture('hvm.xml'), ['-rtc', 'base=utc'])
    for value in ('base=utc,file=/etc/x', 'driftfix=/etc',
                  'x=unix:/run/s', 'a,,file=/etc/x'):
        assert '-rtc' in _refused(settings, base.fixture('hvm.xml'),
                                  ['-rtc', value])


def test_pipe_chardevs_cannot_be_allowed(tmp_path):
    # QEMU opens PATH.in and PATH.out, which the path rules do not see.
    with pytest.raises(ValueError):
        base.make_settings(tmp_path, allowed_chardev_types=['pty', 'pipe'])


def test_never_allowed_options_cannot_be_configured(tmp_path):
    with pytest.raises(exception.ConfigError) as err:
        base.make_settings(tmp_path, allowed_qemu_options=['chardev'])
    assert 'allowed_qemu_options' in str(err.value)


def test_pv_guest_needing_a_dom0_qemu_is_refused_by_default(tmp_path):
    xml = base.add_device(base.fixture('pv.xml'),
                          "<graphics type='vnc' listen='127.0.0.1'/>")
    settings = base.make_settings(tmp_path)
    message = _refused(settings, xml)
    assert 'dom0 QEMU' in message and 'pv_dom0_qemu' in message
    allowing = base.make_settings(tmp_path, pv_dom0_qemu='allow')
    _check(allowing, xml)
    # Its extra arguments reach that QEMU too, so they are still checked.
    assert '-incoming' in _refused(allowing, xml, ['-incoming', 'exec:x'])


@pytest.mark.parametrize('name', ['pv.xml', 'pvh.xml'])
def test_pv_guests_go_through_the_same_policy(settings, name):
    _check(settings, base.fixture(name))
    assert '<hostdev>' in _refused(settings, base.add_device(
        base.fixture(name), HOSTDEV))


def test_pv_bootloader_and_its_arguments(settings):
    def add(tag, text):
        def edit(root):
            node = domain.etree.Element(tag)
            node.text = text
            root.find('os').addprevious(node)
        return base.edit(base.fixture('pv.xml'), edit)
    assert 'allowed_bootloaders' in _refused(settings, base.fixture(
        'pv.xml').replace('/usr/lib/xen/bin/pygrub', '/bin/sh'))
    assert '<bootloader_args>' in _refused(
        settings, add('bootloader_args', '--output=/etc/passwd'))


def test_every_refused_feature_is_named_at_once(settings):
    xml = _hvm_with(HOSTDEV)
    xml = base.add_device(xml, EMPTY_CDROM)
    message = _refused(settings, xml, ['-runas', '0:0'])
    assert '3 refused features' in message
    assert '(1)' in message and '(3)' in message


# -- fixed VNC ports --------------------------------------------------------
@pytest.mark.parametrize('graphics', [
    "<graphics type='vnc' port='-1' autoport='yes'/>",
    "<graphics type='vnc'/>",
    "<graphics type='vnc' port='-1'/>",
    "<graphics type='vnc' port='6640' autoport='yes'/>",
])
def test_vnc_ports_libvirt_allocates_pass(settings, graphics):
    _check(settings, _vnc(graphics))


def _vnc(graphics):
    return base.edit(base.fixture('hvm.xml'), lambda root: root.find(
        'devices').remove(root.find('devices/graphics'))).replace(
            '</devices>', graphics + '</devices>')


@pytest.mark.parametrize('graphics', [
    "<graphics type='vnc' port='6640' autoport='no'/>",
    "<graphics type='vnc' port='5901'/>",
    "<graphics type='vnc' autoport='no'/>",
    "<graphics type='vnc' port='5901' autoport='maybe'/>",
    "<graphics type='vnc' port='\u0665901' autoport='no'/>",
])
def test_a_fixed_vnc_port_is_refused_by_default(settings, graphics):
    message = _refused(settings, _vnc(graphics))
    assert 'fixed port' in message and 'vnc_fixed_ports' in message
    assert 'autoport="yes"' in message


def test_a_fixed_vnc_port_in_the_operators_range_passes(tmp_path):
    settings = base.make_settings(tmp_path,
                                  vnc_fixed_ports=['5900-5999', '7000'])
    assert settings.vnc_fixed_ports == ((5900, 5999), (7000, 7000))
    _check(settings, _vnc("<graphics type='vnc' port='5901' "
                          "autoport='no'/>"))
    _check(settings, _vnc("<graphics type='vnc' port='7000'/>"))
    assert '5900-5999, 7000-7000' in _refused(
        settings, _vnc("<graphics type='vnc' port='6640' autoport='no'/>"))


@pytest.mark.parametrize('value', ['0', '5999-5900', 'a-b', '65536',
                                   '5900-\u0665'])
def test_bad_vnc_fixed_ports_are_refused(tmp_path, value):
    with pytest.raises(exception.ConfigError) as err:
        base.make_settings(tmp_path, vnc_fixed_ports=[value])
    assert 'vnc_fixed_ports' in str(err.value)
