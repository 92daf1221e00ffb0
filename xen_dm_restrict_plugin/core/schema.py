"""The domain XML vocabulary this product knows to be safe, and nothing more.

libvirt's libxl driver turns many elements into things libxl or QEMU do
on the host as root.  Rather than list what is dangerous, this module
lists what is known (the accepted rows of
:mod:`xen_dm_restrict_plugin.core.vocabulary`): every element, in its
place, with the attributes it may carry and whether it may hold text.
Anything else -- an unknown element or attribute, a namespaced attribute
(libvirt's ``xmlGetProp`` matches attributes by local name whatever their
namespace), an element of a foreign namespace outside ``<metadata>``,
text where libvirt would read none, a second copy of an element libvirt
reads once -- is refused, naming it (with the vocabulary's reason when a
row refuses it by name).  What the known parts mean (paths, backends,
arguments) is checked by :mod:`xen_dm_restrict_plugin.core.policy` on the
reading of :mod:`xen_dm_restrict_plugin.core.model`.
"""

import dataclasses
import typing

from lxml import etree

from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import vocabulary


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


def _tree(rows: typing.Sequence[vocabulary.Row]) -> Node:
    """The known vocabulary as a tree, built from the accepted rows of
    :mod:`xen_dm_restrict_plugin.core.vocabulary`.
    """
    children: typing.Dict[str, typing.Dict[str, vocabulary.Row]] = {}
    for item in rows:
        parent = item.path.rpartition('/')[0] if item.path else None
        if parent is not None:
            children.setdefault(parent, {})[item.name] = item

    def build(item: vocabulary.Row) -> Node:
        return Node(item.attrs,
                    {name: build(child) for name, child in
                     children.get(item.path, {}).items()},
                    item.text, item.many,
                    item.path in ('metadata', 'description'))
    return build(vocabulary.row(''))


DOMAIN = _tree(vocabulary.accepted())

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
           found: typing.List[Unknown], where: str = '') -> None:
    # The path is handed down, not walked up again for every element;
    # the common case (known attributes, no stray text) is tested first,
    # and a child without children (most of them) is checked here
    # rather than by a call of its own.
    where = where or _where(node)
    names = node.keys()
    if names and not spec.attrs.issuperset(names):
        _attribute_problems(node, spec, names, found, where)
    if spec.opaque:
        return
    text = node.text
    if text and not spec.text and not text.isspace():
        found.append(_text_problem(where, text))
    known = spec.children
    seen: typing.Dict[str, int] = {}
    for child in node:
        name = child.tag
        if not isinstance(name, str):
            continue
        tail = child.tail
        if tail and not tail.isspace():
            found.append(Unknown(
                '<%s> text %r' % (where, tail.strip()[:40]),
                'libvirt would read this text as part of <%s>' % where,
                'remove the text'))
        if name[:1] == '{':
            qname = etree.QName(child)
            if (node is node.getroottree().getroot()
                    and name == domain_mod.XEN + 'commandline'):
                _check_commandline(child, found)
                continue
            found.append(Unknown(
                '<%s> in namespace %s under <%s>' % (
                    qname.localname, qname.namespace, where),
                'elements of other namespaces are only allowed inside '
                '<metadata>', 'move it into <metadata> or remove it'))
            continue
        child_spec = known.get(name)
        if child_spec is None:
            named = vocabulary.row(('%s/%s' % (where, name)).partition(
                '/')[2])
            if named is not None and named.reason:
                found.append(Unknown('<%s> under <%s>' % (name, where),
                                     named.reason, named.remedy))
                continue
            reason, remedy = KNOWN_REFUSED.get(name, (
                'this element is not known to be safe under dm_restrict '
                '(libvirt\'s libxl driver may hand it to libxl or QEMU, '
                'which act on the host as root)',
                'remove it; if it is needed, ask for it to be supported'))
            found.append(Unknown('<%s> under <%s>' % (name, where),
                                 reason, remedy))
            continue
        if not child_spec.many:
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == 2:
                found.append(Unknown(
                    'second <%s> under <%s>' % (name, where),
                    'libvirt reads only one of them, and which one it uses '
                    'is not what this product can promise',
                    'keep a single <%s>' % name))
        if len(child) or child_spec.opaque:
            _check(child, child_spec, found, where + '/' + name)
            continue
        names = child.keys()
        if names and not child_spec.attrs.issuperset(names):
            _attribute_problems(child, child_spec, names, found,
                                where + '/' + name)
        text = child.text
        if text and not child_spec.text and not text.isspace():
            found.append(_text_problem(where + '/' + name, text))


def _attribute_problems(node: etree._Element, spec: Node,
                        names: typing.List[str],
                        found: typing.List[Unknown], where: str) -> None:
    for name in names:
        if name[:1] == '{':  # {namespace}local, as lxml names it
            found.append(Unknown(
                '<%s> attribute %s' % (where, name),
                'a namespaced attribute is read by libvirt by its local '
                'name %r, so it could mean something this product does '
                'not see' % name.partition('}')[2],
                'remove the namespace prefix or the attribute'))
        elif name not in spec.attrs:
            found.append(Unknown(
                '<%s %s=%r>' % (where, name, node.get(name)),
                'this attribute is not known to be safe under dm_restrict',
                'remove it; if it is needed, ask for it to be supported'))


def _text_problem(where: str, text: str) -> Unknown:
    return Unknown('<%s> text %r' % (where, text.strip()[:40]),
                   'this element holds no text in a libvirt domain',
                   'remove the text')


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
