"""The safe parser and the guest classification."""

from lxml import etree
import pytest

from tests import base
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin import exception

LIMIT = 1 << 20


def _with_emulator(path):
    return base.edit(base.fixture('hvm.xml'), lambda root: root.find(
        'devices').insert(0, _element('<emulator>%s</emulator>' % path)))


def _element(text):
    return etree.fromstring(text)


@pytest.mark.parametrize('xml,kind', [
    (base.fixture('hvm.xml'), domain.GuestKind.HVM_QEMU_XEN),
    (_with_emulator('/usr/lib/xen/bin/qemu-system-i386'),
     domain.GuestKind.HVM_QEMU_XEN),
    (_with_emulator('/usr/lib/xen/bin/qemu-dm'),
     domain.GuestKind.HVM_TRADITIONAL),
    # A name proves nothing: only a declared stub-domain emulator counts.
    (_with_emulator('/usr/lib/xen/bin/stubdom-dm'),
     domain.GuestKind.HVM_QEMU_XEN),
    (base.fixture('hvm.xml').replace(
        "<type arch='x86_64' machine='xenfv'>hvm</type>",
        "<type arch='x86_64' machine='xenpvh'>hvm</type>"),
     domain.GuestKind.HVM_QEMU_XEN),
    (base.fixture('pv.xml'), domain.GuestKind.PV),
    (base.fixture('pvh.xml'), domain.GuestKind.PVH),
    (base.fixture('pv.xml').replace(
        "<type arch='x86_64' machine='xenpv'>linux</type>",
        '<type>xen</type>'), domain.GuestKind.PV),
    (base.fixture('pvh.xml').replace(
        "<type arch='x86_64' machine='xenpvh'>xenpvh</type>",
        "<type machine='xenpvh'>xen</type>"), domain.GuestKind.PVH),
])
def test_classification(xml, kind):
    assert domain.parse(xml, LIMIT).kind is kind


def test_only_hvm_kinds_have_a_dom0_device_model():
    assert domain.GuestKind.HVM_QEMU_XEN.has_dom0_device_model
    assert domain.GuestKind.HVM_TRADITIONAL.has_dom0_device_model
    for kind in (domain.GuestKind.HVM_STUBDOM, domain.GuestKind.PV,
                 domain.GuestKind.PVH):
        assert not kind.has_dom0_device_model


@pytest.mark.parametrize('data,words', [
    (b'<domain type="xen"><name>x</name>', 'not well-formed'),
    (b'', 'not well-formed'),
    (b'<!DOCTYPE domain [<!ENTITY a "aaaa">]>'
     b'<domain type="xen"><name>&a;</name></domain>', 'DOCTYPE'),
    (b'<!DOCTYPE domain [<!ENTITY a "x"><!ENTITY b "&a;&a;&a;&a;">'
     b'<!ENTITY c "&b;&b;&b;&b;">]><domain><name>&c;</name></domain>',
     'DOCTYPE'),
    (b'<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     b'<domain type="xen"><name>&x;</name></domain>', 'DOCTYPE'),
    (b'<!DOCTYPE domain SYSTEM "http://127.0.0.1:1/domain.dtd">'
     b'<domain type="xen"/>', 'DOCTYPE'),
    (b'<network><name>default</name></network>', 'not <domain>'),
    (b'<d:domain xmlns:d="urn:x"/>', 'not <domain>'),
    (b'\xff\xfe<domain/>', 'not well-formed'),
])
def test_hostile_or_wrong_input_is_refused(data, words):
    with pytest.raises(exception.InvalidDomainXML) as err:
        domain.parse(data, LIMIT)
    assert words in str(err.value)
    assert 'Remedy' in str(err.value)


def test_external_entity_is_never_read(tmp_path):
    secret = tmp_path / 'secret'
    secret.write_text('TOPSECRET')
    data = ('<!DOCTYPE domain [<!ENTITY x SYSTEM "file://%s">]>'
            '<domain type="xen"><name>&x;</name></domain>' % secret)
    with pytest.raises(exception.InvalidDomainXML) as err:
        domain.parse(data, LIMIT)
    assert 'TOPSECRET' not in str(err.value)


def test_oversized_input_is_refused_before_parsing():
    data = base.fixture('hvm.xml').replace(
        '<name>', '<!--%s--><name>' % ('x' * 2048))
    with pytest.raises(exception.InvalidDomainXML) as err:
        domain.parse(data, 2048)
    assert 'over the limit of 2048' in str(err.value)


def test_xen_args_round_trip_and_namespace_declared_once():
    dom = domain.parse(base.fixture('hvm.xml'), LIMIT)
    assert dom.xen_args() == []
    dom.set_xen_args(['-a', 'b'])
    dom.set_xen_args(['-c'])
    text = dom.to_string()
    assert text.count('xmlns:xen=') == 1
    again = domain.parse(text, LIMIT)
    assert again.xen_args() == ['-c']
    assert again.name == 'fixture-hvm'


def test_xen_args_declare_the_namespace_on_the_root_in_place():
    """The xen prefix is declared on <domain> as libvirt writes it, the
    root stays the element callers hold, and a foreign element binding
    ``xen`` to its own namespace keeps it.
    """
    xml = base.fixture('hvm.xml').replace(
        '<devices>', '<metadata><m:a xmlns:m="urn:m" xmlns:xen="urn:own">'
        '<xen:b/></m:a></metadata><devices>')
    dom = domain.parse(xml, LIMIT)
    root = dom.root
    dom.set_xen_args(['-a'])
    assert dom.root is root
    out = etree.fromstring(dom.to_bytes())
    assert out.nsmap.get('xen') == domain.XEN_NS
    cmdline = out.find(domain.XEN + 'commandline')
    assert cmdline.nsmap == {'xen': domain.XEN_NS}
    assert b'<xen:commandline>' in dom.to_bytes()
    assert out.find('metadata/{urn:m}a/{urn:own}b') is not None
    assert domain.parse(dom.to_bytes(), LIMIT).xen_args() == ['-a']


def test_set_uuid_adds_it_after_name():
    xml = base.edit(base.fixture('hvm.xml'),
                    lambda root: root.remove(root.find('uuid')))
    dom = domain.parse(xml, LIMIT)
    assert dom.uuid is None
    dom.set_uuid(base.HVM_UUID)
    assert dom.root[1].tag == 'uuid'
    assert domain.parse(dom.to_string(), LIMIT).uuid == base.HVM_UUID


def test_declared_stub_domain_emulator():
    xml = _with_emulator('/usr/lib/xen/bin/stubdom-dm')
    dom = domain.parse(xml, LIMIT, {'/usr/lib/xen/bin/stubdom-dm'})
    assert dom.kind is domain.GuestKind.HVM_STUBDOM
    other = domain.parse(_with_emulator('/opt/evil/stubdom-dm'), LIMIT,
                         {'/usr/lib/xen/bin/stubdom-dm'})
    assert other.kind is domain.GuestKind.HVM_QEMU_XEN


_PATHS_DOC = etree.fromstring(
    '<domain xmlns:x="urn:x/y"><name>a</name><!-- c --><name>b</name>'
    '<os><type>hvm</type></os><os><boot dev="hd"/><type/></os>'
    '<devices><disk n="1"><source/></disk><x:disk/><disk n="2"/>'
    '<disk n="3"><source n="s3"/><source n="s3b"/></disk></devices>'
    '<x:m><x:a v="1"/><x:a v="2"/></x:m><x:m><x:a v="3"/></x:m>'
    '</domain>')


@pytest.mark.parametrize('path', [
    'name', 'uuid', 'os', 'os/type', 'os/boot', 'devices/disk',
    'devices/disk/source', 'devices/{urn:x/y}disk', 'devices/nothing',
    '{urn:x/y}m', '{urn:x/y}m/{urn:x/y}a', '{urn:x}m', 'x:m'])
def test_find_answers_as_lxml_does(path):
    """The policy's fast path lookups give lxml's own answers."""
    root = _PATHS_DOC
    if path == 'x:m':
        # A prefix is no name: neither looks it up.
        with pytest.raises(ValueError):
            domain.find(root, path)
        return
    assert domain.find(root, path) is root.find(path)
    assert domain.findall(root, path) == root.findall(path)
    assert domain.findtext(root, path) == root.findtext(path)


@pytest.mark.parametrize('path', [
    'devices/*', "disk[@n='1']", 'a//b', '/a', 'a/', '.', 'a/../b', '',
    '{urn:x}'])
def test_find_takes_element_names_only(path):
    with pytest.raises(ValueError):
        domain.find(_PATHS_DOC, path)
