"""A safe lxml view of one libvirt Xen domain definition.

Domain XML reaches us from an orchestrator that built it partly from
tenant input, so it is parsed with entity resolution, DTD loading and
network access off and with a size cap, and nothing else in the code
touches raw XML.  Comments and processing instructions are dropped while
parsing: libvirt skips them when it reads an element's text, so
``<type>h<!-- -->vm</type>`` is "hvm" to both, and what we write out is
exactly what we checked.  The view answers the questions the policy and the
injection ask (what kind of guest, which devices, which extra QEMU
arguments, our metadata record) and edits only those parts, leaving the
rest of the document as it came.
"""

import copy
import enum
import logging
import os
import re
import typing

from lxml import etree

from xen_dm_restrict_plugin import exception

LOG = logging.getLogger(__name__)

XEN_NS = 'http://libvirt.org/schemas/domain/xen/1.0'
XEN = '{%s}' % XEN_NS


#: A step of a path :func:`find` takes: one element name, in Clark
#: notation (``{URI}name``) when namespaced.
_STEP_RE = re.compile(r'(?:\{[^{}]+\})?[A-Za-z_][A-Za-z0-9_.-]*')
#: Each path :func:`find` was given, as its steps.
_STEPS: typing.Dict[str, typing.Tuple[str, ...]] = {}


def _steps(path: str) -> typing.Tuple[str, ...]:
    steps = _STEPS.get(path)
    if steps is None:
        steps = tuple(_STEP_RE.findall(path))
        if not steps or '/'.join(steps) != path:
            raise ValueError('%r is not a path of element names' % path)
        _STEPS[path] = steps
    return steps


def find(node: etree._Element, path: str) -> typing.Optional[etree._Element]:
    """``node.find(path)`` for a path of element names (``'os/type'``).

    lxml's ``find`` runs ElementPath's Python code at every call, which
    costs about twice this walk over ``iterchildren`` (lxml's own C
    filter by tag) on a domain; the policy asks some hundred of them at
    every boot.  The answer is the same: the first match in document
    order.
    """
    steps = _STEPS.get(path) or _steps(path)
    if len(steps) == 1:
        for found in node.iterchildren(path):
            return found
        return None
    if len(steps) == 2:
        for parent in node.iterchildren(steps[0]):
            for found in parent.iterchildren(steps[1]):
                return found
        return None
    return _first(node, steps, 0)


def _first(node: etree._Element, steps: typing.Tuple[str, ...],
           index: int) -> typing.Optional[etree._Element]:
    last = index == len(steps) - 1
    for found in node.iterchildren(steps[index]):
        if last:
            return found
        inner = _first(found, steps, index + 1)
        if inner is not None:
            return inner
    return None


def findall(node: etree._Element, path: str) -> typing.List[etree._Element]:
    """``node.findall(path)`` for a path of element names (:func:`find`).
    """
    steps = _STEPS.get(path) or _steps(path)
    found = list(node.iterchildren(steps[0]))
    for step in steps[1:]:
        found = [inner for outer in found
                 for inner in outer.iterchildren(step)]
    return found


def findtext(node: etree._Element, path: str) -> typing.Optional[str]:
    """``node.findtext(path)``: the text of :func:`find`'s element ('' if
    it holds none), None when there is none.
    """
    found = find(node, path)
    if found is None:
        return None
    return found.text or ''


class GuestKind(enum.Enum):
    """How a Xen guest is served, which decides what can be restricted."""

    HVM_QEMU_XEN = 'hvm-qemu-xen'
    HVM_TRADITIONAL = 'hvm-qemu-traditional'
    HVM_STUBDOM = 'hvm-stubdom'
    PV = 'pv'
    PVH = 'pvh'

    @property
    def has_dom0_device_model(self) -> bool:
        """Whether a QEMU runs in dom0 for this guest."""
        return self in (GuestKind.HVM_QEMU_XEN, GuestKind.HVM_TRADITIONAL)


_PARSER_OPTIONS = dict(resolve_entities=False, no_network=True,
                       load_dtd=False, dtd_validation=False,
                       huge_tree=False, remove_comments=True,
                       remove_pis=True)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(**_PARSER_OPTIONS)


def _refuse(reason: str) -> exception.InvalidDomainXML:
    return exception.InvalidDomainXML(
        'domain XML', reason,
        'pass a single well-formed libvirt <domain type="xen"> document '
        'without a DOCTYPE')


def parse(data: typing.Union[bytes, str], max_bytes: int,
          stubdom_emulators: typing.Collection[str] = ()) -> 'Domain':
    """Parse a libvirt domain document safely.

    :param data: the XML, as bytes or text.
    :param max_bytes: the largest document accepted.
    :param stubdom_emulators: ``<emulator>`` paths the operator declared
        to be stub-domain device models.
    :raises InvalidDomainXML: malformed, oversized, carrying a DTD or
        entity declarations, or not a ``<domain>``.
    """
    if isinstance(data, str):
        try:
            data = data.encode('utf-8')
        except UnicodeEncodeError as err:
            raise _refuse('it holds text that is not valid Unicode (%s)'
                          % err.reason) from None
    if len(data) > max_bytes:
        raise _refuse('the document is %d bytes, over the limit of %d'
                      % (len(data), max_bytes))
    try:
        root = etree.fromstring(data, _parser())
    except (etree.XMLSyntaxError, ValueError) as err:
        raise _refuse('it is not well-formed XML (%s)' % err) from None
    doc = root.getroottree()
    if doc.docinfo.internalDTD is not None or doc.docinfo.doctype:
        raise _refuse('it carries a DOCTYPE, which may declare entities')
    for node in root.iter(etree.Entity):
        raise _refuse('it references entity &%s;' % node.name)
    if root.tag != 'domain':
        raise _refuse('its root element is <%s>, not <domain>' % root.tag)
    return Domain(root, stubdom_emulators)


#: Elements made once per (kind, N) and copied for each use: lxml checks
#: every name of an element it creates, which a copy skips.  A domain's
#: own arguments may make any N; only small ones are kept.
_TEMPLATES: typing.Dict[typing.Tuple[str, int], etree._Element] = {}
_KEPT_TEMPLATES = 32


def copy_of(kind: str, count: int,
            build: typing.Callable[[int], etree._Element]
            ) -> etree._Element:
    """A copy of ``build(count)``, which is called once per ``kind`` and
    ``count`` (up to :data:`_KEPT_TEMPLATES`) and must not be changed.
    """
    prototype = _TEMPLATES.get((kind, count))
    if prototype is None:
        prototype = build(count)
        if count <= _KEPT_TEMPLATES:
            _TEMPLATES[(kind, count)] = prototype
    return copy.deepcopy(prototype)


def _empty_commandline(count: int) -> etree._Element:
    """``<xen:commandline>`` (declaring ``xen``) with ``count`` empty
    ``<xen:arg value=''/>``.
    """
    made = etree.Element('%scommandline' % XEN, nsmap={'xen': XEN_NS})
    for _ in range(count):
        etree.SubElement(made, '%sarg' % XEN, value='')
    return made


def _commandline(values: typing.Sequence[str]) -> etree._Element:
    """A new ``<xen:commandline>`` (declaring ``xen``) holding ``values``.
    """
    made = copy_of('commandline', len(values), _empty_commandline)
    for node, value in zip(made, values):
        node.set('value', value)
    return made


class Domain:
    """A parsed libvirt domain; wraps the root ``<domain>`` element.

    :param stubdom_emulators: ``<emulator>`` paths that serve the guest
        from a stub domain (see :attr:`kind`).
    """

    def __init__(self, root: etree._Element,
                 stubdom_emulators: typing.Collection[str] = ()):
        self.root = root
        self.stubdom_emulators = frozenset(stubdom_emulators)
        # lxml makes an element's Python proxy whenever the element is
        # reached with none alive, and frees it with its last reference;
        # the checks reach most elements several times, so one proxy per
        # element is kept for the domain's life (about 4 % of a prepare).
        self._proxies = list(root.iter())

    # -- identity ---------------------------------------------------------
    @property
    def hypervisor(self) -> typing.Optional[str]:
        return self.root.get('type')

    @property
    def name(self) -> typing.Optional[str]:
        return findtext(self.root, 'name')

    @property
    def uuid(self) -> typing.Optional[str]:
        text = findtext(self.root, 'uuid')
        return text.strip().lower() if text else None

    def set_uuid(self, uuid: str) -> None:
        """Write ``<uuid>``, after ``<name>`` as libvirt orders it."""
        node = find(self.root, 'uuid')
        if node is None:
            node = self.root.makeelement('uuid')
            anchor = find(self.root, 'name')
            if anchor is not None:
                anchor.addnext(node)
            else:
                self.root.insert(0, node)
        node.text = uuid

    # -- classification ---------------------------------------------------
    @property
    def os_type(self) -> str:
        return (findtext(self.root, 'os/type') or '').strip()

    @property
    def machine(self) -> str:
        node = find(self.root, 'os/type')
        return node.get('machine', '') if node is not None else ''

    @property
    def emulator(self) -> typing.Optional[str]:
        text = findtext(self.root, 'devices/emulator')
        return text.strip() if text else None

    def set_emulator(self, path: str) -> None:
        devices = self.devices()
        node = find(devices, 'emulator')
        if node is None:
            node = self.root.makeelement('emulator')
            devices.insert(0, node)
            if devices.text and not devices.text.strip():
                node.tail = devices.text
        node.text = path

    @property
    def kind(self) -> GuestKind:
        """Classify the guest, erring towards "has a dom0 device model".

        ``<type>hvm</type>`` is HVM whatever its machine (libvirt's libxl
        driver decides by the type): served by a stub domain only when
        the emulator is one the operator declared
        (``[dm_restrict] stubdom_emulators``; a name proves nothing), by
        qemu-xen-traditional when it is ``qemu-dm``, and by qemu-xen
        otherwise.  ``xenpvh`` (as type, or as machine of a PV type) is
        PVH; any other type (``xen``, ``linux``) is PV.
        """
        os_type = self.os_type
        if os_type == 'hvm':
            emulator = self.emulator
            if emulator and emulator in self.stubdom_emulators:
                return GuestKind.HVM_STUBDOM
            if os.path.basename(emulator or '') == 'qemu-dm':
                return GuestKind.HVM_TRADITIONAL
            return GuestKind.HVM_QEMU_XEN
        if os_type == 'xenpvh' or self.machine == 'xenpvh':
            return GuestKind.PVH
        return GuestKind.PV

    # -- devices ----------------------------------------------------------
    def devices(self) -> etree._Element:
        node = find(self.root, 'devices')
        if node is None:
            node = etree.SubElement(self.root, 'devices')
        return node

    def iter_devices(self, tag: str) -> typing.Iterator[etree._Element]:
        return iter(findall(self.root, 'devices/%s' % tag))

    # -- xen:commandline --------------------------------------------------
    def xen_args(self) -> typing.List[str]:
        """The values of ``<xen:commandline><xen:arg value=...>``."""
        return [arg.get('value', '') for arg in
                findall(self.root, '%scommandline/%sarg' % (XEN, XEN))]

    def set_xen_args(self, args: typing.Sequence[str]) -> None:
        """Replace every ``<xen:commandline>`` with one holding ``args``.

        The xen namespace is declared on ``<domain>`` with the ``xen``
        prefix, as libvirt writes it, unless the document binds ``xen``
        to another namespace there: then it is declared on
        ``<xen:commandline>`` itself.  Rebinding it on the root would
        make lxml invent prefixes for its content, which a descendant
        declaring the same prefix shadows on output, changing the
        namespace of foreign elements and attributes.
        """
        existing = findall(self.root, '%scommandline' % XEN)
        for node in existing:
            self._remove(node)
        if not args:
            return
        bound = self.root.nsmap.get('xen')
        cmdline = _commandline(args)
        self.root.append(cmdline)
        if bound in (None, XEN_NS):
            # lxml cannot add a declaration to an existing element but
            # this way: declared on the root (or found there), the one
            # <xen:commandline> brought is dropped as redundant (as are
            # unused ones, which serializing drops anyway).
            etree.cleanup_namespaces(self.root, top_nsmap={'xen': XEN_NS},
                                     keep_ns_prefixes=['xen'])
        self._tidy(cmdline)

    # -- metadata ---------------------------------------------------------
    def metadata(self, tag: str) -> typing.Optional[etree._Element]:
        """Our record under ``<metadata>``; ``tag`` is ``{ns}name``."""
        return find(self.root, 'metadata/%s' % tag)

    def set_metadata(self, record: etree._Element) -> None:
        """Put ``record`` under ``<metadata>`` as its namespace's only
        element.

        libvirt keeps one ``<metadata>`` element per namespace and hands
        out the first one it finds, so any other element of the record's
        namespace (a stale copy, or a foreign one placed ahead of the
        record) is removed: it would hide the record from libvirt's
        metadata API.
        """
        meta = find(self.root, 'metadata')
        if meta is None:
            meta = self.root.makeelement('metadata')
            anchor = None
            for tag in ('description', 'title', 'uuid', 'name'):
                anchor = find(self.root, tag)
                if anchor is not None:
                    break
            if anchor is not None:
                anchor.addnext(meta)
            else:
                self.root.insert(0, meta)
            self._tidy(meta)
        namespace = etree.QName(record).namespace
        same = [node for node in meta if isinstance(node.tag, str)
                and etree.QName(node).namespace == namespace]
        if same:
            meta.replace(same[0], record)
        else:
            meta.append(record)
        for node in same[1:]:
            meta.remove(node)
        self._tidy(meta)

    def _remove(self, node: etree._Element) -> None:
        """Remove a child of the root, keeping the whitespace around it.

        Undoes what :meth:`_tidy` did on adding it, so that removing and
        adding it again changes nothing, in an unindented document too.
        """
        prev = node.getprevious()
        if (prev is not None and node.getnext() is None
                and self._indented()):
            prev.tail = node.tail
        self.root.remove(node)

    def _indented(self) -> bool:
        indent = self.root.text
        return bool(indent) and not indent.strip() and '\n' in indent

    def _tidy(self, node: etree._Element) -> None:
        """Indent an element we added like the document around it."""
        indent = self.root.text
        if not self._indented():
            return
        unit = indent.rsplit('\n', 1)[1] or '  '
        etree.indent(node, space=unit, level=1)
        prev = node.getprevious()
        if prev is None:
            node.tail = indent
        elif node.getnext() is None:
            node.tail, prev.tail = prev.tail, indent
        else:
            node.tail = prev.tail = indent

    # -- output -----------------------------------------------------------
    def to_bytes(self) -> bytes:
        etree.cleanup_namespaces(self.root, keep_ns_prefixes=['xen'])
        return etree.tostring(self.root, encoding='utf-8')

    def to_string(self) -> str:
        return self.to_bytes().decode('utf-8')
