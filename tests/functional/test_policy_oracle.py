"""Every domain the policy accepts holds, as libvirt reads it, only what is
allowed.

Domains are generated from a grammar of libvirt's Xen elements: disks
with every driver, format and source type, serial, console, channel and
parallel devices of every source type, interfaces, displays, host
devices and other devices, kernel, initrd and loader paths, extra QEMU
arguments, and spellings that once made this product read a different
domain than libvirt (comments and CDATA inside text, namespaced
attributes, foreign-namespace elements, repeated elements).  Each is
checked by the policy.  An accepted one is then read by libvirt's own
parser (the embedded ``test:///default`` driver, which parses a
``<domain type='xen'>`` with libvirt's domain parser) and libvirt's
reading, dumped back, must pass the policy too: nothing in it outside the
allowlist.  The normal run uses 200 examples; ``bench/run.py`` sets the
``hostile-bench`` profile of :mod:`tests.unit.test_hostile_input` and
runs 10,000.
"""

import collections
import os
import re

import hypothesis
from hypothesis import strategies as st
import libvirt
from lxml import etree
import pytest

from tests import base
from tests.unit import test_hostile_input as hostile
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import policy
from xen_dm_restrict_plugin import exception

OUTCOMES = collections.Counter()
OTHER_NS = 'urn:example:other'


def _paths():
    images = base.images_dir()
    escape = os.path.join(images, 'escape.img')
    if not os.path.lexists(escape):
        os.symlink('/etc/passwd', escape)
    return [os.path.join(images, 'root-disk.img'),
            os.path.join(images, 'installer.iso'),
            os.path.join(images, 'console.log'), escape,
            images + '/../../etc/shadow', images + '/a,format=qcow2',
            images + '/missing.img', '/etc/shadow', '/dev/sda',
            '/run/libvirt/libvirt-sock', '', images + '/root-disk.img ']


def _mostly(safe, hostile):
    """Three times in four a safe choice.

    So that enough domains pass the policy to be held against libvirt's
    reading.
    """
    return st.one_of(safe, safe, safe, hostile)


PATH = st.deferred(lambda: _mostly(st.sampled_from(_paths()[:3]),
                                   st.sampled_from(_paths())))
TEXT = _mostly(st.sampled_from(['xenbr0', 'e1000', 'vif-bridge']),
               st.sampled_from([
                   'xenbr0', 'br0,script=/bin/sh', 'e1000',
                   'e1000,romfile=/etc/shadow', 'vif-bridge',
                   '/tmp/evil.sh', '127.0.0.1', 'unix:/etc/x', '0.0.0.0',
                   'en-us', '../../etc/keymap', 'hda', 'hdb', 'xvda', 'sdb',
                   'hd,x']))


def _attrs(**values):
    return ''.join(" %s='%s'" % (key, value)
                   for key, value in values.items() if value is not None)


@st.composite
def disks(draw):
    kind = draw(_mostly(st.just('file'), st.sampled_from(
        ['block', 'network', 'dir'])))
    device = draw(_mostly(st.sampled_from(['disk', 'cdrom']),
                          st.sampled_from(['floppy', 'lun'])))
    driver = draw(_mostly(st.sampled_from([None, 'phy']), st.sampled_from(
        ['qemu', 'file', 'tap', 'tap2'])))
    fmt = draw(_mostly(st.sampled_from([None, 'raw']), st.sampled_from(
        ['qcow2', 'qed', 'vhd'])))
    attr = draw(_mostly(st.just('file'), st.sampled_from(['dev', 'name'])))
    source = ('<source%s/>' % _attrs(**{attr: draw(PATH)})
              if draw(_mostly(st.just(True), st.just(False))) else '')
    driver_xml = ('<driver%s/>' % _attrs(name=driver, type=fmt)
                  if driver or fmt else '')
    return ('<disk%s>%s%s<target dev=\'%s\'/></disk>'
            % (_attrs(type=kind, device=device), driver_xml, source,
               draw(st.sampled_from(['hdb', 'hdd', 'xvdb', 'sdb',
                                     'hd,x']))))


@st.composite
def chardevs(draw):
    role = draw(st.sampled_from(['serial', 'console', 'channel',
                                 'parallel']))
    kind = draw(_mostly(st.sampled_from(['pty', 'file', 'unix']),
                        st.sampled_from(['dev', 'pipe', 'tcp', 'null',
                                         'stdio', 'vc'])))
    source = ''
    if kind in ('file', 'unix', 'dev', 'pipe'):
        safe = {'unix': 'console.sock', 'file': 'console.log'}.get(
            kind, 'root-disk.img')
        path = draw(_mostly(st.just(os.path.join(base.images_dir(), safe)),
                            PATH))
        source = '<source%s/>' % _attrs(path=path,
                                        mode=draw(st.sampled_from(
                                            [None, 'bind', 'connect'])))
    elif kind == 'tcp':
        source = "<source mode='bind' host='0.0.0.0' service='4555'/>"
    target = ("<target type='xen' name='org.x'/>" if role == 'channel'
              else "<target port='0'/>")
    return '<%s type=\'%s\'>%s%s</%s>' % (role, kind, source, target, role)


@st.composite
def interfaces(draw):
    kind = draw(_mostly(st.just('bridge'), st.sampled_from(
        ['network', 'ethernet', 'hostdev', 'direct'])))
    parts = ['<mac address=\'00:16:3e:00:00:%02x\'/>'
             % draw(st.integers(1, 250))]

    def text(*safe):
        return draw(_mostly(st.sampled_from(safe), TEXT))
    if kind == 'bridge':
        parts.append("<source bridge='%s'/>" % text('xenbr0', 'br-ten1'))
    elif kind == 'network':
        parts.append("<source network='default'/>")
    if draw(st.booleans()):
        parts.append("<model type='%s'/>" % text('e1000', 'rtl8139'))
    if draw(st.booleans()):
        parts.append("<script path='%s'/>" % text('vif-bridge'))
    if draw(st.booleans()):
        parts.append("<target dev='%s'/>" % text('vif7.0'))
    return "<interface type='%s'>%s</interface>" % (kind, ''.join(parts))


OTHER = st.sampled_from([
    "<graphics type='vnc' listen='127.0.0.1'/>",
    "<graphics type='vnc' listen='unix:/etc/x'/>",
    "<graphics type='vnc' keymap='../../etc/x'/>",
    "<graphics type='sdl' display=':0' xauth='/root/.Xauthority'/>",
    "<graphics type='spice' autoport='yes'/>",
    "<hostdev mode='subsystem' type='pci'><source><address domain='0' "
    "bus='1' slot='0' function='0'/></source></hostdev>",
    "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/>"
    "<product id='0x2'/></source></hostdev>",
    "<controller type='usb' model='qemu-xhci'/>",
    "<controller type='xenbus' maxGrantFrames='64'/>",
    "<input type='tablet' bus='usb'/>", "<sound model='ac97'/>",
    "<sound model='ich9'/>", "<watchdog model='i6300esb'/>",
    "<rng model='virtio'><backend model='random'>/dev/random</backend>"
    "</rng>",
    "<filesystem type='mount'><source dir='/'/><target dir='r'/>"
    "</filesystem>",
    "<video><model type='vga' vram='16384' heads='1'/></video>",
    "<emulator>/bin/sh</emulator>",
    "<emulator>/usr/libexec/xen-qemu-system-i386</emulator>",
])
OS_EXTRA = st.sampled_from(['', '<kernel>%s</kernel>', '<initrd>%s</initrd>',
                            "<acpi><table type='slic'>%s</table></acpi>"])
ARGS = st.lists(_mostly(
    st.sampled_from([['-no-hpet'], ['-rtc', 'base=utc'], ['-name', 'vm']]),
    st.sampled_from([
        ['-incoming', 'exec:id'], ['-chardev', 'file,id=c,path=/etc/x'],
        ['-name'], ['/root/x.img'], ['-runas', '0:0'],
        ['-drive', 'file=/etc/shadow'], ['-device', 'e1000,romfile=/etc/x'],
        ['-rtc', 'base=utc,,file=/etc/x'], ['-rtc'], ['base=utc']])),
    max_size=3).map(lambda groups: [arg for group in groups
                                    for arg in group])


def _spell(draw, xml: str) -> str:
    """Respell the document as libvirt reads it but a naive reader not."""
    choice = draw(st.sampled_from(['none', 'none', 'none', 'comment',
                                   'cdata', 'nsattr', 'nselement', 'dup-os',
                                   'pi']))
    if choice == 'comment':
        return xml.replace('>hvm</type>', '>h<!-- x -->vm</type>')
    if choice == 'cdata':
        return xml.replace('>hvm</type>', '><![CDATA[hv]]>m</type>')
    if choice == 'pi':
        return xml.replace('>hvm</type>', '>hv<?x y?>m</type>')
    if choice == 'nsattr':
        return xml.replace("<driver name='phy'/>",
                           "<driver xmlns:a='%s' a:name='qemu'/>"
                           % OTHER_NS, 1)
    if choice == 'nselement':
        return xml.replace('<devices>', "<devices><o:hostdev xmlns:o='%s' "
                           "type='pci'/>" % OTHER_NS, 1)
    if choice == 'dup-os':
        return xml.replace('<features>', '<os><type>xen</type></os>'
                           '<features>', 1)
    return xml


@st.composite
def domains(draw):
    xml = base.fixture('hvm.xml')
    devices = draw(st.lists(st.one_of(disks(), chardevs(), interfaces(),
                                      OTHER), max_size=3))
    for device in devices:
        xml = xml.replace('</devices>', device + '</devices>', 1)
    extra = draw(OS_EXTRA)
    if extra:
        path = draw(_mostly(st.just(os.path.join(base.images_dir(),
                                                 'vmlinuz')), PATH))
        xml = xml.replace('</os>', extra % path + '</os>', 1)
    if draw(_mostly(st.just(False), st.just(True))):
        # A PV guest; without the fixture's display, it needs no QEMU.
        xml = re.sub(r'<graphics [^>]*/>', '', xml.replace(
            '>hvm</type>', '>xen</type>', 1), count=1)
    return _spell(draw, xml), draw(ARGS)


@pytest.fixture(scope='module')
def oracle():
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open('test:///default')
    yield conn
    conn.close()


def libvirt_reading(conn, xml: str) -> str:
    """The domain as libvirt parsed it, dumped back; None if refused."""
    try:
        dom = conn.defineXML(xml)
    except libvirt.libvirtError:
        return None
    try:
        return dom.XMLDesc(0)
    finally:
        dom.undefine()


def check(conn, settings, xml: str, args) -> None:
    try:
        parsed = domain.parse(xml, 1 << 20)
        policy.check_domain(parsed, args, settings)
    except exception.Refused as err:
        OUTCOMES['refused: %s' % type(err).__name__] += 1
        return
    read = libvirt_reading(conn, parsed.to_string())
    if read is None:
        OUTCOMES['accepted, then refused by libvirt'] += 1
        return
    # What libvirt will act on must pass the same allowlist.
    problems = policy.Checker(settings).problems(
        domain.parse(read, 1 << 20), args)
    assert problems == [], (xml, read, [str(p) for p in problems])
    OUTCOMES['accepted; libvirt\'s reading allowed'] += 1


def run_property(directory) -> None:
    """Hold generated domains against libvirt's reading.

    The hypothesis profile is :mod:`tests.unit.test_hostile_input`'s;
    ``directory`` takes the lease database path, which nothing writes.
    """
    settings = base.make_settings(
        directory, allowed_chardev_types=['pty', 'dev'],
        allowed_qemu_options=['no-hpet', 'rtc', 'name'])
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open('test:///default')

    @hypothesis.settings(hostile.SETTINGS)
    @hypothesis.given(case=domains())
    def accepted_domains_hold_only_what_is_allowed(case):
        check(conn, settings, *case)

    try:
        accepted_domains_hold_only_what_is_allowed()
    finally:
        conn.close()


def test_accepted_domains_hold_only_what_is_allowed(tmp_path):
    before = sum(OUTCOMES.values())
    run_property(tmp_path)
    assert sum(OUTCOMES.values()) > before


def test_the_oracle_sees_what_lxml_alone_would_miss(oracle, tmp_path):
    # libvirt reads a namespaced driver name as the driver name; the
    # policy must read the same and refuse.
    settings = base.make_settings(tmp_path)
    xml = base.fixture('hvm.xml').replace(
        "<driver name='phy'/>",
        "<driver xmlns:a='%s' a:name='qemu'/>" % OTHER_NS)
    read = etree.fromstring(libvirt_reading(oracle, xml).encode())
    assert read.find('devices/disk/driver').get('name') == 'qemu'
    with pytest.raises(exception.FeatureRefused):
        policy.check_domain(domain.parse(xml, 1 << 20), [], settings)
