"""Hostile domain XML: the hook restricts it or refuses it, nothing else.

Domain XML reaches the hook partly built from tenant input (names,
metadata, extra device-model arguments), so every document must end one
of two ways: restricted XML that libvirt accepts, or the project's own
refusal (:class:`~xen_dm_restrict_plugin.exception.Refused`).  Any other
exception is a bug: the orchestrator sees a crash instead of a reason,
and a caller that catches broadly may boot the domain without the hook.
A refusal must also leave no uid lease behind.

Inputs come from hypothesis.  Mutations of a schema-valid domain keep the
document well-formed, so an accepted one is held to libvirt's schema
whenever its input was valid, and to the restriction's own invariants
always.  Junk (broken text, invalid UTF-8, entity tricks) is held to the
outcome class only.  The normal run uses the ``hostile`` profile (200
examples a property); ``bench/run.py`` sets :data:`PROFILE_ENV` to
``hostile-bench`` and :data:`EXAMPLES_ENV` to a total number of examples,
which the properties share.
"""

import atexit
import collections
import copy
import functools
import os
import pathlib
import shutil
import tempfile
import typing

import hypothesis
from hypothesis import strategies as st
from lxml import etree
import pytest

from tests import base
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import qemu_args
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks

PROFILE_ENV = 'XEN_DM_RESTRICT_HOSTILE_PROFILE'
EXAMPLES_ENV = 'XEN_DM_RESTRICT_HOSTILE_EXAMPLES'

hypothesis.settings.register_profile(
    'hostile', max_examples=200, deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.data_too_large,
                           hypothesis.HealthCheck.large_base_example])
hypothesis.settings.register_profile(
    'hostile-bench', parent=hypothesis.settings.get_profile('hostile'),
    max_examples=int(os.environ.get(EXAMPLES_ENV) or 10000),
    database=None)
PROFILE = os.environ.get(PROFILE_ENV) or 'hostile'
SETTINGS = hypothesis.settings.get_profile(PROFILE)


def _settings(share: float) -> hypothesis.settings:
    """The profile's settings; the bench's examples are shared out."""
    if PROFILE != 'hostile-bench':
        return SETTINGS
    return hypothesis.settings(SETTINGS, max_examples=max(
        1, round(SETTINGS.max_examples * share)))


#: How each generated input ended, for bench/run.py's report.
OUTCOMES: typing.Counter[str] = collections.Counter()

ACME = hooks.Instance(base.HVM_UUID, 'acme')
BASE = base.fixture('hvm.xml')
XEN = '{%s}' % domain.XEN_NS
OTHER_NS = 'urn:example:other'
LIMIT = 1 << 24
SYNTAX = restrict.DeviceModelSyntax(restrict.FORM_LEGACY,
                                    restrict.FORM_LEGACY, True)


# -- running one input -------------------------------------------------------
def _scratch_dir() -> str:
    """A directory on tmpfs when there is one: no durability needed here."""
    shm = '/dev/shm'
    usable = os.path.isdir(shm) and os.access(shm, os.W_OK)
    made = tempfile.mkdtemp(prefix='hostile-', dir=shm if usable else None)
    atexit.register(shutil.rmtree, made, True)
    return made


@functools.lru_cache(maxsize=None)
def _harness(mode: str = 'mapped') -> 'Harness':
    if mode == 'shared':
        return Harness(unmapped_tenants='shared',
                       shared_uid_range='300000-300099')
    return Harness()


class Harness:
    """One hook, whose lease database must be empty after each refusal.

    Every lease is released after each input, so each starts from an
    empty database.
    """

    def __init__(self, **overrides):
        self.dir = _scratch_dir()
        self.hook = extension.DmRestrictHook(
            base.make_conf(pathlib.Path(self.dir), **overrides))
        atexit.register(self.hook.close)

    def prepare(self, xml: str, instance: hooks.Instance = ACME,
                reraise: bool = False) -> typing.Optional[str]:
        """The hook's output, or None when it refused; checks the leases.

        :param reraise: raise the refusal instead of returning None.
        """
        try:
            try:
                out = self.hook.prepare(xml, instance)
            except exception.Refused as err:
                assert _leases(self.hook) == [], 'a refusal left a lease'
                OUTCOMES['refused: %s' % type(err).__name__] += 1
                if reraise:
                    raise
                return None
            check_accepted(self.hook, xml, out, instance)
            return out
        finally:
            for lease in _leases(self.hook):
                self.hook.store.release(lease.uuid)


def _leases(hook: extension.DmRestrictHook) -> typing.List[leases.Lease]:
    if not os.path.exists(hook.settings.lease_db):
        return []
    return hook.store.list()


def _schema_valid(xml: str) -> bool:
    doc = etree.fromstring(xml.encode('utf-8'), etree.XMLParser(
        resolve_entities=False, no_network=True))
    return base.domain_schema().validate(doc)


def check_accepted(hook: extension.DmRestrictHook, xml: str, out: str,
                   instance: hooks.Instance) -> None:
    """Hold an accepted document to everything the restriction promises.
    """
    held = _leases(hook)
    if not domain.parse(xml, LIMIT).kind.has_dom0_device_model:
        # PV, PVH and stub domain guests have nothing to restrict; they
        # come back as checked (without comments).
        assert out == domain.parse(xml, LIMIT).to_string() and held == []
        OUTCOMES['passed through (no dom0 device model)'] += 1
        return
    dom = domain.parse(out, LIMIT)
    record = restrict.read_record(dom)
    [lease] = held
    assert (lease.uuid, lease.tenant) == (instance.uuid, instance.tenant)
    assert (record.tenant, record.uid) == (instance.tenant, lease.uid)
    assert dom.uuid == instance.uuid
    ours = hook.restriction_for(lease, SYNTAX).args()
    assert list(record.args) == ours
    args = dom.xen_args()
    # Ours come first, so no foreign option can take one as its value.
    assert args[:len(ours)] == ours
    assert qemu_args.check_extra(
        args[len(ours):], hook.settings.allowed_qemu_options) == []
    assert len(dom.root.findall(XEN + 'commandline')) == 1
    meta = dom.root.find('metadata')
    assert [n.tag for n in meta if _in_our_namespace(n)] == \
        [restrict.RECORD_TAG]
    assert hook.prepare(out, instance) == out
    assert _leases(hook) == [lease]
    if _schema_valid(xml):
        base.assert_schema_valid(out)
        OUTCOMES['restricted, schema-valid'] += 1
    else:
        OUTCOMES['restricted (input not schema-valid)'] += 1


def _in_our_namespace(node: etree._Element) -> bool:
    return isinstance(node.tag, str) and node.tag.startswith(restrict.META)


# -- strategies: pieces ------------------------------------------------------
XML_CHARS = st.characters(exclude_categories=('Cs', 'Cc'),
                          exclude_characters='\ufffe\uffff')
TEXT = st.text(XML_CHARS, max_size=24)
#: Values around max_xml_bytes (1 MiB): one is refused for size alone.
HUGE = st.sampled_from([1000, 100000, 600000, 1100000]).map(
    lambda size: 'A' * size)
ARGS = st.sampled_from([
    '-d', 'guest_errors', '-S', '-name', 'vm', '-runas', '0:0', '--runas',
    '-runas=0:0', '-run-with', 'user=0:0,chroot=/', '-chroot', '/',
    '-sandbox', 'off', restrict.SANDBOX_POLICY, '-xen-domid-restrict',
    '--xen-domid-restrict', '-', '--', '-readconfig', '/etc/passwd',
    '-machine', 'xenfv', '-vnc', ':0']) | TEXT
VALUES = st.one_of(TEXT, ARGS, HUGE, st.sampled_from([
    'hvm', 'xen', 'pci', 'cdrom', 'qemu', 'hostdev', '/usr/bin/qemu-dm',
    base.HVM_UUID, '200005']))
NAMES = st.sampled_from([
    'domain', 'devices', 'disk', 'source', 'target', 'driver', 'hostdev',
    'interface', 'emulator', 'os', 'type', 'metadata', 'uuid', 'name',
    'commandline', 'arg', 'restriction', 'tenant', 'uid', 'args', 'value',
    'file', 'dev', 'device']) | st.from_regex(
        r'[A-Za-wyz_][A-Za-z0-9_.-]{0,12}', fullmatch=True)
NAMESPACES = st.sampled_from([None, None, domain.XEN_NS, restrict.META_NS,
                              OTHER_NS])


def _qname(namespace: typing.Optional[str], local: str) -> str:
    return '{%s}%s' % (namespace, local) if namespace else local


def _element(namespace, local, attrs, text, children=()):
    node = etree.Element(_qname(namespace, local))
    for (attr_ns, name), value in attrs.items():
        node.set(_qname(attr_ns, name), value)
    node.text = text
    node.extend(children)
    return node


LEAVES = st.builds(
    _element, NAMESPACES, NAMES,
    st.dictionaries(st.tuples(NAMESPACES, NAMES), VALUES, max_size=3),
    st.none() | VALUES)
ELEMENTS = st.recursive(
    LEAVES, lambda kids: st.builds(
        lambda parent, children: (parent.extend(children), parent)[1],
        LEAVES, st.lists(kids, max_size=3)), max_leaves=8)

DEVICES = st.sampled_from([
    "<hostdev mode='subsystem' type='pci'><source><address domain='0' "
    "bus='1' slot='0' function='0'/></source></hostdev>",
    "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/>"
    "<product id='0xbeef'/></source></hostdev>",
    "<interface type='hostdev'><source><address type='pci' domain='0' "
    "bus='2' slot='0' function='0'/></source></interface>",
    "<interface type='bridge'><source bridge='xenbr1'/></interface>",
    "<disk type='file' device='disk'><driver name='qemu'/><source "
    "file='/d.img'/><target dev='hdb'/></disk>",
    "<disk type='block' device='disk'><driver name='phy'/><source "
    "dev='/dev/vg0/x'/><target dev='hdb'/></disk>",
    "<disk type='file' device='cdrom'><target dev='hdd'/></disk>",
    "<disk type='file' device='cdrom'><source file=''/><target "
    "dev='hdd'/></disk>",
    "<disk type='file' device='cdrom'><source file='/a.iso'/><target "
    "dev='hdd'/><readonly/></disk>",
    "<emulator>/usr/lib/xen/bin/qemu-system-i386</emulator>",
])


def _record(tenant, uid, args, dropped):
    node = restrict.to_element(restrict.Restriction(
        'acme', 200005, 200005, '/x/qemu-root-200005', SYNTAX))
    node.find(restrict.META + 'tenant').text = tenant
    node.find(restrict.META + 'uid').text = uid
    holder = node.find(restrict.META + 'args')
    if args is not None:
        holder.clear()
        for value in args:
            etree.SubElement(holder, restrict.META + 'arg', value=value)
    for name in dropped:
        child = node.find(restrict.META + name)
        if child is not None:
            node.remove(child)
    return node


RECORDS = st.builds(
    _record, st.sampled_from(['acme', 'globex', '']) | TEXT,
    st.sampled_from(['200005', '0', '-1', 'x', ' 7 ', '\u0663', '9' * 5000])
    | TEXT, st.none() | st.lists(ARGS, max_size=8),
    st.lists(st.sampled_from(['tenant', 'uid', 'gid', 'chroot', 'args']),
             max_size=3))
FOREIGN_METADATA = st.builds(_element, st.just(OTHER_NS), NAMES,
                             st.just({}), st.none() | TEXT)
OUR_NAMESPACE_METADATA = st.builds(_element, st.just(restrict.META_NS),
                                   NAMES, st.just({}), st.none() | TEXT)

#: <domain> start tags: our prefixes bound to other namespaces and back.
ROOTS = st.sampled_from([
    "<domain type='xen'>",
    "<domain type='xen' xmlns:xen='%s'>" % domain.XEN_NS,
    "<domain type='xen' xmlns:xen='%s'>" % OTHER_NS,
    "<domain type='xen' xmlns:xen='%s'>" % restrict.META_NS,
    "<domain type='xen' xmlns:dmrestrict='%s'>" % domain.XEN_NS,
    "<domain type='xen' xmlns='%s'>" % OTHER_NS,
    "<domain type='kvm'>",
    "<domain>",
])


# -- strategies: mutations of the valid base ---------------------------------
def _pick(draw, root, below_root=False):
    nodes = [node for node in root.iter() if isinstance(node.tag, str)]
    if below_root:
        nodes = nodes[1:]
    if not nodes:
        return None
    return nodes[draw(st.integers(0, len(nodes) - 1))]


def _insert(draw, parent, node):
    parent.insert(draw(st.integers(0, len(parent))), node)


def _child(root, tag):
    node = root.find(tag)
    if node is None:
        node = etree.SubElement(root, tag)
    return node


def add_element(draw, root):
    _insert(draw, _pick(draw, root), draw(ELEMENTS))


def set_attribute(draw, root):
    _pick(draw, root).set(_qname(draw(NAMESPACES), draw(NAMES)),
                          draw(VALUES))


def set_text(draw, root):
    _pick(draw, root).text = draw(VALUES)


def remove_element(draw, root):
    node = _pick(draw, root, below_root=True)
    if node is not None:
        node.getparent().remove(node)


def duplicate_element(draw, root):
    node = _pick(draw, root, below_root=True)
    if node is not None:
        node.addnext(copy.deepcopy(node))


def nest_deeply(draw, root):
    namespace = draw(NAMESPACES)
    node = _pick(draw, root)
    for _ in range(draw(st.integers(1, 300))):
        node = etree.SubElement(node, _qname(namespace, 'n'))


def add_metadata(draw, root):
    meta = root.find('metadata')
    if meta is None:
        meta = etree.Element('metadata')
        _insert(draw, root, meta)
    _insert(draw, meta, draw(st.one_of(RECORDS, FOREIGN_METADATA,
                                       OUR_NAMESPACE_METADATA, ELEMENTS)))


def add_commandline(draw, root):
    namespace = draw(st.sampled_from([domain.XEN_NS, domain.XEN_NS,
                                      OTHER_NS, restrict.META_NS]))
    cmdline = etree.Element(_qname(namespace, 'commandline'),
                            nsmap={'xen': namespace})
    for value in draw(st.lists(ARGS, max_size=6)):
        etree.SubElement(cmdline, _qname(namespace, 'arg'), value=value)
    parent = root if draw(st.booleans()) else _pick(draw, root)
    _insert(draw, parent, cmdline)


def set_guest(draw, root):
    os_type = _child(_child(root, 'os'), 'type')
    os_type.text = draw(st.sampled_from(
        ['hvm', 'xen', 'linux', 'xenpvh', 'HVM', ' hvm ']) | TEXT)
    machine = draw(st.sampled_from([None, 'xenfv', 'xenpvh', 'pc']))
    if machine is None:
        os_type.attrib.pop('machine', None)
    else:
        os_type.set('machine', machine)
    emulator = draw(st.sampled_from([
        None, '/usr/lib/xen/bin/qemu-system-i386', '/usr/bin/qemu-dm',
        '/usr/lib/xen/bin/stubdom-dm']) | TEXT)
    devices = _child(root, 'devices')
    for node in devices.findall('emulator'):
        devices.remove(node)
    if emulator is not None:
        etree.SubElement(devices, 'emulator').text = emulator


def add_device(draw, root):
    _insert(draw, _child(root, 'devices'), etree.fromstring(draw(DEVICES)))


def set_uuid(draw, root):
    value = draw(st.sampled_from([
        None, base.HVM_UUID.upper(), base.HVM_UUID.replace('-', ''),
        '99999999-2222-4333-8444-555555555555', 'not-a-uuid', '']) | TEXT)
    node = root.find('uuid')
    if value is None:
        if node is not None:
            root.remove(node)
    else:
        _child(root, 'uuid').text = value


#: Those that can keep the document schema-valid come twice, so that
#: enough accepted documents are held to the schema.
MUTATIONS = [add_element, set_attribute, set_text, remove_element,
             duplicate_element, nest_deeply, set_guest, set_uuid] + [
                 add_metadata, add_commandline, add_device] * 2


@st.composite
def mutated_domains(draw):
    """The HVM fixture after one to four random mutations."""
    root = etree.fromstring(BASE.replace(
        "<domain type='xen'>", draw(ROOTS), 1).encode('utf-8'))
    for _ in range(draw(st.integers(1, 4))):
        draw(st.sampled_from(MUTATIONS))(draw, root)
    return etree.tostring(root, encoding='unicode')


# -- strategies: junk --------------------------------------------------------
SNIPPETS = st.sampled_from([
    '<!DOCTYPE domain [<!ENTITY e "x">]>',
    '<!DOCTYPE domain [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE domain SYSTEM "http://example.invalid/d.dtd">',
    '<!DOCTYPE domain [<!ENTITY a "&b;&b;"><!ENTITY b "xxxxxxxx">]>',
    '&e;', '&a;', '&amp;', '&#0;', '&#xD800;', '&#x10FFFF;', ']]>',
    '<![CDATA[<hostdev type="pci"/>]]>', '<?pi x?>', '<!-- -->',
    '<?xml version="1.0" encoding="UTF-16"?>',
    '<?xml version="1.0" encoding="ISO-8859-1"?>',
    '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
    'href="/etc/passwd" parse="text"/>',
    '\x00', '\x01', '\ufffe', '\udcff', '\ud800', '\U0001f600', '<', '>',
    '"', "'", '</domain>', '<domain type="xen">', 'xmlns:xen="urn:x"',
]) | st.text(max_size=8)
ANY_CHAR = st.characters() | st.characters(categories=['Cs', 'Cc'])


@st.composite
def spliced(draw):
    """A domain document with text inserted, cut out, or cut short."""
    text = draw(mutated_domains()) if draw(st.booleans()) else BASE
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(['insert', 'delete', 'truncate']))
        if action == 'insert':
            text = text[:at] + draw(SNIPPETS) + text[at:]
        elif action == 'delete':
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        else:
            text = text[:at]
    return text


JUNK = st.one_of(
    spliced(),
    st.text(ANY_CHAR, max_size=200),
    st.binary(max_size=200).map(
        lambda raw: raw.decode('utf-8', 'surrogateescape')),
    ELEMENTS.map(lambda node: etree.tostring(node, encoding='unicode')),
)


# -- the properties ----------------------------------------------------------
@_settings(0.5)
@hypothesis.given(mutated_domains())
def test_mutated_domain_is_restricted_or_refused(xml):
    _harness().prepare(xml)


@_settings(0.35)
@hypothesis.given(JUNK)
def test_junk_is_refused_or_restricted(xml):
    _harness().prepare(xml)


@_settings(0.15)
@hypothesis.given(st.text(ANY_CHAR, max_size=40))
def test_hostile_tenant_id_is_refused_or_restricted(tenant):
    try:
        instance = hooks.Instance(base.HVM_UUID, tenant)
    except exception.Refused:
        OUTCOMES['refused: tenant id'] += 1
        return
    _harness('shared').prepare(BASE, instance)


# -- what the properties found, pinned ---------------------------------------
def _prepare(xml, instance=ACME):
    return _harness().prepare(xml, instance, reraise=True)


def test_foreign_element_in_our_namespace_cannot_hide_the_record():
    # libvirt hands out the first <metadata> element of a namespace; a
    # foreign one ahead of the record made the domain look unrestricted.
    xml = BASE.replace('<memory', "<metadata><x:other xmlns:x='%s'/>"
                       "<x:restriction xmlns:x='%s'><x:uid>bad</x:uid>"
                       "</x:restriction></metadata><memory"
                       % (restrict.META_NS, restrict.META_NS), 1)
    meta = domain.parse(_prepare(xml), LIMIT).root.find('metadata')
    assert [node.tag for node in meta] == [restrict.RECORD_TAG]


@pytest.mark.parametrize('trailing', ['-name', '-d', '-S', '--', '-'])
def test_trailing_option_cannot_swallow_our_first_argument(trailing):
    # QEMU reads "-name -xen-domid-restrict" as a name, and a lone
    # trailing "-name" takes libxl's following "-machine".  Ours go first,
    # and a trailing option without its value (or a bare argument, which
    # QEMU opens as a disk) is refused.
    xml = BASE.replace('</devices>', '</devices><xen:commandline xmlns:xen='
                       '"%s"><xen:arg value="%s"/></xen:commandline>'
                       % (domain.XEN_NS, trailing))
    with pytest.raises(exception.FeatureRefused) as err:
        _prepare(xml)
    assert repr(trailing) in str(err.value) or trailing in str(err.value)


@pytest.mark.parametrize('xml', ['<domain>\udcff</domain>', '\ud800',
                                 BASE.replace('fixture-hvm', '\udcfe')])
def test_lone_surrogates_are_refused(xml):
    with pytest.raises(exception.InvalidDomainXML):
        _prepare(xml)


@pytest.mark.parametrize('tenant', ['ac\x00me', 'ac\x01me', 'a\udcffb',
                                    'a\ufffe'])
def test_tenant_id_that_xml_cannot_hold_is_refused(tenant):
    with pytest.raises(exception.Refused, match='tenant'):
        hooks.Instance(base.HVM_UUID, tenant)


def test_xen_prefix_bound_elsewhere_keeps_foreign_namespaces():
    # Rebinding "xen" on a rebuilt <domain> made lxml invent a prefix
    # that a descendant shadowed: the attribute changed namespace.
    xml = BASE.replace(
        "<domain type='xen'>",
        "<domain type='xen' xmlns:xen='%s'>" % restrict.META_NS).replace(
        '<memory', '<metadata><o:x xmlns:o="%s" '
        'xmlns:ns0="%s" xen:a=""/></metadata><memory' % (OTHER_NS, OTHER_NS),
        1)
    out = domain.parse(_prepare(xml), LIMIT)
    assert dict(out.root.find('metadata')[0].attrib) == {
        restrict.META + 'a': ''}
    assert out.xen_args()[0] == '-xen-domid-restrict'


def test_unindented_document_is_prepared_idempotently():
    # Removing our <xen:commandline> took the whitespace before it along
    # when the document was not indented, so a second pass differed.
    # check_accepted() prepares the output again.
    xml = BASE.replace("<domain type='xen'>\n  ", "<domain type='xen'>")
    assert _prepare(xml) is not None
