"""What libvirt's libxl driver and libxl will do with a domain.

The policy decides on this reading, never on raw XML.  It follows
libvirt's ``libxlMakeDomBuildInfo``, ``libxlMakeDisk``, ``libxlMakeNic``,
``libxlMakeVfb`` and ``libxlMakeChrdevStr`` and libxl's
``libxl__build_device_model_args_new``: the guest kind, the device-model
binary, every disk with the backend libxl will give it, every character
device, network interface and display with what it opens or runs, every
host path libxl or QEMU will open, and the extra QEMU arguments.  Text is
read as libvirt reads it (the parser already drops comments and
processing instructions, so an element's text is all its character
data); attributes carry no namespace (:mod:`schema` refuses namespaced
ones, which libvirt would match by local name).
"""

import enum
import typing

from lxml import etree

from xen_dm_restrict_plugin.core import domain as domain_mod


class Backend(enum.Enum):
    """The disk backend libxl gives a disk (``libxl_disk_backend``)."""

    PHY = 'phy'
    TAP = 'tap'
    QDISK = 'qdisk'
    #: left to libxl: PHY for a raw block device or regular file on
    #: Linux; QDISK for every CD-ROM of an HVM guest (libxl forces it).
    UNKNOWN = 'chosen by libxl'


#: ``<driver type>`` values that make tap/tap2 a QEMU qdisk.
_TAP_QDISK_FORMATS = frozenset(('qcow', 'qcow2', 'qed'))

# The readings below are named tuples: immutable like a frozen
# dataclass, and made several times faster (a frozen dataclass sets
# each field through object.__setattr__), several of them per boot.


class Disk(typing.NamedTuple):
    """A ``<disk>`` as libxl will serve it."""

    node: etree._Element
    source_type: str
    device: str
    driver: typing.Optional[str]
    format: typing.Optional[str]
    backend: Backend
    path: typing.Optional[str]
    stray_source: typing.Optional[str]
    target: typing.Optional[str]

    def describe(self) -> str:
        return '<disk type=%r device=%r> (target %s)' % (
            self.source_type, self.device, self.target)


def disk_backend(source_type: str, driver: typing.Optional[str],
                 fmt: typing.Optional[str]) -> Backend:
    """libvirt's mapping (``libxlMakeDisk``, and post-parse for network
    disks) from driver name, format and disk type to a libxl backend.
    """
    if source_type == 'network':
        return Backend.QDISK
    if driver in ('tap', 'tap2'):
        return Backend.QDISK if fmt in _TAP_QDISK_FORMATS else Backend.TAP
    if driver in ('qemu', 'file'):
        return Backend.QDISK
    if driver == 'phy':
        return Backend.PHY
    return Backend.UNKNOWN


class Chardev(typing.NamedTuple):
    """A serial, console, channel or parallel device."""

    node: etree._Element
    role: str
    type: str
    path: typing.Optional[str]
    target_type: typing.Optional[str]

    def describe(self) -> str:
        return '<%s type=%r>' % (self.role, self.type)


class Nic(typing.NamedTuple):
    """An ``<interface>``."""

    node: etree._Element
    type: str
    bridge: typing.Optional[str]
    network: typing.Optional[str]
    script: typing.Optional[str]
    model: typing.Optional[str]
    ifname: typing.Optional[str]
    virtualport: typing.Optional[str] = None
    vlan_tags: typing.Tuple[str, ...] = ()
    vlan_trunk: bool = False
    vlan_native: bool = False

    def describe(self) -> str:
        return '<interface type=%r>' % self.type


class Display(typing.NamedTuple):
    """A ``<graphics>`` device."""

    node: etree._Element
    type: str
    listens: typing.Tuple[typing.Tuple[typing.Optional[str],
                                       typing.Optional[str]], ...]
    keymap: typing.Optional[str]


class HostFile(typing.NamedTuple):
    """A host path libxl or QEMU opens for the domain itself."""

    what: str
    path: str


#: The ``<source>`` attribute that names a disk of each type, and the one
#: libvirt ignores for it.
_SOURCE_ATTR = {'file': 'file', 'block': 'dev'}
_OTHER_ATTR = {'file': 'dev', 'dev': 'file'}


def _text(node: typing.Optional[etree._Element]) -> typing.Optional[str]:
    """XPath's ``string()`` of ``node``: all its text, children's too
    (the parser keeps no comments or processing instructions).
    """
    if node is None:
        return None
    return ''.join(node.itertext())


def _firsts(node: etree._Element) -> typing.Dict[typing.Any, etree._Element]:
    """Each tag among ``node``'s children, with its first child of that
    tag: one pass, where a device's few children would each cost a find.
    """
    found: typing.Dict[typing.Any, etree._Element] = {}
    for child in node:
        found.setdefault(child.tag, child)
    return found


class DomainModel:
    """The reading of one parsed domain.

    :param dom: the parsed domain (its document is not changed).
    """

    def __init__(self, dom: domain_mod.Domain):
        self.dom = dom
        root = dom.root
        self.hypervisor = root.get('type')
        self.name = _text(domain_mod.find(root, 'name'))
        self.kind = dom.kind
        self.emulator = _text(domain_mod.find(root, 'devices/emulator'))
        self.os_type = _text(domain_mod.find(root, 'os/type'))
        self.disks = [self.disk(node) for node in
                      domain_mod.findall(root, 'devices/disk')]
        self.chardevs = [
            self._chardev(node) for devices in root.iterchildren('devices')
            for node in devices.iterchildren(
                'serial', 'console', 'channel', 'parallel')]
        self.nics = [self._nic(node) for node in
                     domain_mod.findall(root, 'devices/interface')]
        self.displays = [
            Display(node, node.get('type') or '',
                    tuple([(None, node.get('listen'))]
                          if node.get('listen') is not None else [])
                    + tuple((listen.get('type'), listen.get('address'))
                            for listen in domain_mod.findall(node, 'listen')),
                    node.get('keymap'))
            for node in domain_mod.findall(root, 'devices/graphics')]
        self.bootloader = _text(domain_mod.find(root, 'bootloader'))
        self.bootloader_args = _text(domain_mod.find(root,
                                                     'bootloader_args'))
        files = []
        for tag, what in (('os/kernel', 'kernel'), ('os/initrd', 'initrd')):
            text = _text(domain_mod.find(root, tag))
            if text:
                files.append(HostFile(what, text))
        for table in domain_mod.findall(root, 'os/acpi/table'):
            files.append(HostFile('ACPI table', _text(table)))
        self.host_files = files
        self.loader = _text(domain_mod.find(root, 'os/loader'))

    @staticmethod
    def disk(node: etree._Element) -> Disk:
        """The reading of one ``<disk>`` element."""
        source_type = node.get('type') or 'file'
        firsts = _firsts(node)
        driver = firsts.get('driver')
        name = driver.get('name') if driver is not None else None
        fmt = driver.get('type') if driver is not None else None
        source = firsts.get('source')
        attr = _SOURCE_ATTR.get(source_type)
        path = stray = None
        if source is not None:
            path = source.get(attr) if attr else None
            other = _OTHER_ATTR.get(attr or '')
            if other and source.get(other) is not None:
                stray = other
        target = firsts.get('target')
        return Disk(node, source_type, node.get('device') or 'disk', name,
                    fmt, disk_backend(source_type, name, fmt), path, stray,
                    target.get('dev') if target is not None else None)

    @staticmethod
    def _chardev(node: etree._Element) -> Chardev:
        firsts = _firsts(node)
        source, target = firsts.get('source'), firsts.get('target')
        return Chardev(node, node.tag, node.get('type') or 'pty',
                       source.get('path') if source is not None else None,
                       target.get('type') if target is not None else None)

    @staticmethod
    def _nic(node: etree._Element) -> Nic:
        firsts = _firsts(node)

        def attr(tag: str, name: str) -> typing.Optional[str]:
            child = firsts.get(tag)
            return child.get(name) if child is not None else None
        tags = domain_mod.findall(node, 'vlan/tag')
        return Nic(node, node.get('type') or '', attr('source', 'bridge'),
                   attr('source', 'network'), attr('script', 'path'),
                   attr('model', 'type'), attr('target', 'dev'),
                   virtualport=attr('virtualport', 'type'),
                   vlan_tags=tuple(tag.get('id') or '' for tag in tags),
                   vlan_trunk=attr('vlan', 'trunk') == 'yes',
                   vlan_native=any(tag.get('nativeMode') is not None
                                   for tag in tags))

    # -- what needs a QEMU in dom0 ----------------------------------------
    def dom0_qemu_reasons(self) -> typing.List[str]:
        """Why libxl would start a dom0 QEMU for a PV or PVH guest
        (``libxl__need_xenpv_qemu``): a framebuffer, a qdisk disk, or a
        channel (served by a QEMU console backend).
        """
        found = ['%s (qdisk backend)' % disk.describe()
                 for disk in self.disks if disk.backend is Backend.QDISK]
        found += ['<graphics type=%r> (framebuffer)' % display.type
                  for display in self.displays]
        found += ['%s (QEMU console backend)' % dev.describe()
                  for dev in self.chardevs if dev.role == 'channel']
        return found
