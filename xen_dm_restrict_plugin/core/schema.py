"""The domain XML vocabulary this product knows to be safe, and nothing more.

libvirt's libxl driver turns many elements into things libxl or QEMU do
on the host as root.  Rather than list what is dangerous, this module
lists what is known: every element, in its place, with the attributes it
may carry and whether it may hold text.  Anything else -- an unknown
element or attribute, a namespaced attribute (libvirt's ``xmlGetProp``
matches attributes by local name whatever their namespace), an element of
a foreign namespace outside ``<metadata>``, text where libvirt would read
none, a second copy of an element libvirt reads once -- is refused,
naming it.  What the known parts mean (paths, backends, arguments) is
checked by :mod:`xen_dm_restrict_plugin.core.policy` on the reading of
:mod:`xen_dm_restrict_plugin.core.model`.
"""

import dataclasses
import typing

from lxml import etree

from xen_dm_restrict_plugin.core import domain as domain_mod


@dataclasses.dataclass(frozen=True)
class Node:
    """What one element may hold.

    :param attrs: the attribute names it may carry.
    :param children: the child elements it may hold, by name.
    :param text: whether it may hold text.
    :param many: whether it may appear more than once in its parent.
    :param opaque: its content is not read by libvirt's libxl driver for
        anything the host does, so it is not checked (``<metadata>``,
        ``<description>``).
    """

    attrs: typing.FrozenSet[str] = frozenset()
    children: typing.Mapping[str, 'Node'] = dataclasses.field(
        default_factory=dict)
    text: bool = False
    many: bool = False
    opaque: bool = False


def _n(attrs: str = '', text: bool = False, many: bool = False,
       opaque: bool = False, **children: Node) -> Node:
    return Node(frozenset(attrs.split()), dict(children), text, many,
                opaque)


_ALIAS = _n('name')
_ADDRESS = _n('type domain bus slot function multifunction controller '
              'target unit port')
_TIMER = _n('name present mode tickpolicy track frequency', many=True)
_HYPERV_FLAG = _n('state retries value')

CHARDEV_SOURCE = _n('path mode host service')
_CHARDEV = dict(source=CHARDEV_SOURCE, alias=_ALIAS,
                protocol=_n('type'))

DOMAIN = _n(
    'type id',
    name=_n(text=True), uuid=_n(text=True), title=_n(text=True),
    description=_n(text=True, opaque=True),
    metadata=_n(opaque=True),
    memory=_n('unit', text=True), currentMemory=_n('unit', text=True),
    vcpu=_n('placement cpuset current', text=True),
    cputune=_n(shares=_n(text=True)),
    cpu=_n('mode match check',
           model=_n('fallback', text=True), vendor=_n(text=True),
           topology=_n('sockets dies clusters cores threads'),
           feature=_n('name policy', many=True),
           numa=_n(cell=_n('id cpus memory unit memAccess discard',
                           many=True,
                           distances=_n(sibling=_n('id value',
                                                   many=True))))),
    os=_n(type=_n('arch machine', text=True),
          loader=_n('readonly type', text=True),
          kernel=_n(text=True), initrd=_n(text=True),
          cmdline=_n(text=True),
          boot=_n('dev', many=True),
          acpi=_n(table=_n('type', text=True, many=True))),
    bootloader=_n(text=True),
    bootloader_args=_n(text=True),
    features=_n(acpi=_n(), apic=_n(), pae=_n(), hap=_n('state'),
                viridian=_n(),
                hyperv=_n('mode', **{name: _HYPERV_FLAG for name in (
                    'relaxed', 'vapic', 'spinlocks', 'vpindex', 'runtime',
                    'synic', 'stimer', 'reset', 'vendor_id', 'frequencies',
                    'reenlightenment', 'tlbflush', 'ipi', 'evmcs')})),
    clock=_n('offset adjustment basis sync timezone', timer=_TIMER),
    on_poweroff=_n(text=True), on_reboot=_n(text=True),
    on_crash=_n(text=True),
    devices=_n(
        emulator=_n(text=True),
        disk=_n('type device', many=True,
                driver=_n('name type discard cache'),
                source=_n('file dev'),
                target=_n('dev bus'),
                readonly=_n(), shareable=_n(), alias=_ALIAS,
                address=_ADDRESS),
        controller=_n('type index model maxGrantFrames maxEventChannels',
                      many=True, alias=_ALIAS, address=_ADDRESS),
        interface=_n('type managed', many=True,
                     mac=_n('address'),
                     source=_n('bridge network', address=_ADDRESS),
                     model=_n('type'), script=_n('path'),
                     ip=_n('address family prefix', many=True),
                     target=_n('dev'), alias=_ALIAS, address=_ADDRESS,
                     virtualport=_n('type', parameters=_n(
                         'interfaceid profileid')),
                     vlan=_n('trunk', tag=_n('id nativeMode', many=True))),
        input=_n('type bus', many=True, alias=_ALIAS, address=_ADDRESS),
        graphics=_n('type port autoport listen keymap passwd', many=True,
                    listen=_n('type address')),
        video=_n(many=True, model=_n('type vram heads primary'),
                 alias=_ALIAS, address=_ADDRESS),
        serial=_n('type', many=True,
                  target=_n('type port', model=_n('name')), **_CHARDEV),
        console=_n('type', many=True, target=_n('type port'), **_CHARDEV),
        channel=_n('type', many=True, target=_n('type name'), **_CHARDEV),
        sound=_n('model', many=True, alias=_ALIAS, address=_ADDRESS),
        memballoon=_n('model', alias=_ALIAS, address=_ADDRESS),
    ),
)

#: Elements this product refuses by name, with a reason and remedy more
#: useful than "unknown" (matched by element name under ``<devices>``).
KNOWN_REFUSED = {
    'hostdev': ('PCI passthrough needs host resources a restricted '
                'device model cannot reach, and USB and SCSI host devices '
                'are served by QEMU as root',
                'remove the <hostdev>, or boot the VM on a host aggregate '
                'without dm_restrict'),
    'parallel': ('libvirt\'s libxl driver does not support parallel ports, '
                 'and their sources are host paths',
                 'remove the <parallel> device'),
    'filesystem': ('a shared host directory is served by QEMU from the '
                   'host file system', 'remove the <filesystem>'),
    'redirdev': ('USB redirection is served by QEMU from a host socket',
                 'remove the <redirdev>'),
    'smartcard': ('a smartcard reaches host devices or sockets',
                  'remove the <smartcard>'),
    'tpm': ('a TPM is a host device or emulator', 'remove the <tpm>'),
    'rng': ('a random number device reads a host device',
            'remove the <rng>'),
    'shmem': ('shared memory maps host memory into the guest',
              'remove the <shmem>'),
}


@dataclasses.dataclass(frozen=True)
class Unknown:
    """One part of the document outside the known vocabulary."""

    where: str
    reason: str
    remedy: str


def _where(node: etree._Element) -> str:
    path = []
    while node is not None:
        path.append(etree.QName(node).localname if isinstance(
            node.tag, str) else '?')
        node = node.getparent()
    return '/'.join(reversed(path))


def _check(node: etree._Element, spec: Node,
           found: typing.List[Unknown]) -> None:
    where = _where(node)
    for name in node.attrib:
        qname = etree.QName(name)
        if qname.namespace is not None:
            found.append(Unknown(
                '<%s> attribute %s' % (where, name),
                'a namespaced attribute is read by libvirt by its local '
                'name %r, so it could mean something this product does '
                'not see' % qname.localname,
                'remove the namespace prefix or the attribute'))
        elif name not in spec.attrs:
            found.append(Unknown(
                '<%s %s=%r>' % (where, name, node.get(name)),
                'this attribute is not known to be safe under dm_restrict',
                'remove it; if it is needed, ask for it to be supported'))
    if spec.opaque:
        return
    if not spec.text and (node.text or '').strip():
        found.append(Unknown(
            '<%s> text %r' % (where, node.text.strip()[:40]),
            'this element holds no text in a libvirt domain',
            'remove the text'))
    seen: typing.Dict[str, int] = {}
    for child in node:
        if not isinstance(child.tag, str):
            continue
        if (child.tail or '').strip():
            found.append(Unknown(
                '<%s> text %r' % (where, child.tail.strip()[:40]),
                'libvirt would read this text as part of <%s>' % where,
                'remove the text'))
        qname = etree.QName(child)
        if qname.namespace is not None:
            if (node is node.getroottree().getroot()
                    and child.tag == domain_mod.XEN + 'commandline'):
                _check_commandline(child, found)
                continue
            found.append(Unknown(
                '<%s> in namespace %s under <%s>' % (
                    qname.localname, qname.namespace, where),
                'elements of other namespaces are only allowed inside '
                '<metadata>', 'move it into <metadata> or remove it'))
            continue
        name = qname.localname
        child_spec = spec.children.get(name)
        if child_spec is None:
            reason, remedy = KNOWN_REFUSED.get(name, (
                'this element is not known to be safe under dm_restrict '
                '(libvirt\'s libxl driver may hand it to libxl or QEMU, '
                'which act on the host as root)',
                'remove it; if it is needed, ask for it to be supported'))
            found.append(Unknown('<%s> under <%s>' % (name, where),
                                 reason, remedy))
            continue
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 2 and not child_spec.many:
            found.append(Unknown(
                'second <%s> under <%s>' % (name, where),
                'libvirt reads only one of them, and which one it uses is '
                'not what this product can promise',
                'keep a single <%s>' % name))
        _check(child, child_spec, found)


def _check_commandline(node: etree._Element,
                       found: typing.List[Unknown]) -> None:
    if node.attrib or (node.text or '').strip():
        found.append(Unknown('<xen:commandline> attributes or text',
                             'it holds only <xen:arg> elements',
                             'remove them'))
    for arg in node:
        if not isinstance(arg.tag, str):
            continue
        if arg.tag != domain_mod.XEN + 'arg' or set(arg.attrib) != {
                'value'} or len(arg) or (arg.text or '').strip() or (
                    arg.tail or '').strip():
            found.append(Unknown(
                '<xen:commandline> child %s %s' % (
                    etree.QName(arg).localname, dict(arg.attrib)),
                'only <xen:arg value="..."/> is read by libvirt',
                'write each argument as <xen:arg value="..."/>'))


def unknown_parts(dom: domain_mod.Domain) -> typing.List[Unknown]:
    """Every part of ``dom`` outside the known vocabulary, in document
    order.
    """
    found: typing.List[Unknown] = []
    _check(dom.root, DOMAIN, found)
    return found
