"""The restriction written into a domain: QEMU arguments and our record.

libvirt's libxl driver has no dm_restrict setting, so the restriction is
carried as extra device-model arguments in ``<xen:commandline>``, in the
syntax the host's QEMU understands, plus a record under ``<metadata>``
(which survives define and dump in every libvirt driver) saying which
tenant, uid and gid the domain runs as and exactly which arguments were
applied.  The record lets a second pass recognise its own arguments, so
running the hook on its own output changes nothing, and lets the host
side and reconcile find a domain's uid without the lease database.
"""

import dataclasses
import typing

from lxml import etree

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import domain as domain_mod

META_NS = 'urn:xen-dm-restrict:metadata:1'
META = '{%s}' % META_NS
RECORD_TAG = META + 'restriction'
_ARGS = '%sargs/%sarg' % (META, META)
META_PREFIX = 'dmrestrict'

SANDBOX_POLICY = constants.SANDBOX_POLICY

FORM_LEGACY = 'legacy'
FORM_RUN_WITH = 'run-with'


@dataclasses.dataclass(frozen=True)
class DeviceModelSyntax:
    """Which spelling of each restriction the device model accepts.

    :param user_form: ``legacy`` for ``-runas``, ``run-with`` for
        ``-run-with user=``.
    :param chroot_form: ``legacy`` for ``-chroot``, ``run-with`` for
        ``-run-with chroot=``.
    :param sandbox: whether to pass ``-sandbox``.
    """

    user_form: str
    chroot_form: str
    sandbox: bool


@dataclasses.dataclass(frozen=True)
class Restriction:
    """What one domain's device model is restricted to."""

    tenant: str
    uid: int
    gid: int
    chroot: str
    syntax: DeviceModelSyntax

    def args(self) -> typing.List[str]:
        """The device-model arguments, in QEMU's syntax for this host."""
        args = ['-xen-domid-restrict']
        user = '%d:%d' % (self.uid, self.gid)
        run_with = []
        if self.syntax.user_form == FORM_RUN_WITH:
            run_with.append('user=' + user)
        else:
            args += ['-runas', user]
        if self.syntax.chroot_form == FORM_RUN_WITH:
            run_with.append('chroot=' + self.chroot)
        else:
            args += ['-chroot', self.chroot]
        if run_with:
            args += ['-run-with', ','.join(run_with)]
        if self.syntax.sandbox:
            args += ['-sandbox', SANDBOX_POLICY]
        return args


@dataclasses.dataclass(frozen=True)
class Record:
    """Our ``<metadata>`` record as read back from a domain."""

    tenant: str
    uid: int
    gid: int
    chroot: str
    args: typing.Tuple[str, ...]


def canonical_args(record: Record) -> typing.List[typing.List[str]]:
    """Every argument list this product writes for ``record``'s identity.

    One per QEMU syntax (``-runas``/``-chroot`` or ``-run-with``, with or
    without ``-sandbox``): a record whose arguments are none of them was
    not written by this product, and what it lists must not be trusted.
    """
    found = []
    for user_form in (FORM_LEGACY, FORM_RUN_WITH):
        for chroot_form in (FORM_LEGACY, FORM_RUN_WITH):
            for sandbox in (False, True):
                found.append(Restriction(
                    record.tenant, record.uid, record.gid, record.chroot,
                    DeviceModelSyntax(user_form, chroot_form, sandbox)
                ).args())
    return found


def _empty_record(count: int) -> etree._Element:
    """A record with empty fields and ``count`` empty arguments."""
    record = etree.Element(RECORD_TAG, nsmap={META_PREFIX: META_NS})
    for tag in ('tenant', 'uid', 'gid', 'chroot', 'sandbox', 'args'):
        etree.SubElement(record, META + tag)
    for _ in range(count):
        etree.SubElement(record[-1], META + 'arg', value='')
    return record


def to_element(restriction: Restriction,
               args: typing.Optional[typing.Sequence[str]] = None
               ) -> etree._Element:
    """Build the ``<metadata>`` record for ``restriction``.

    :param args: ``restriction.args()``, when the caller has them.
    """
    if args is None:
        args = restriction.args()
    record = domain_mod.copy_of('record', len(args), _empty_record)
    tenant, uid, gid, chroot, sandbox, listed = record
    tenant.text = restriction.tenant
    uid.text = str(restriction.uid)
    gid.text = str(restriction.gid)
    chroot.text = restriction.chroot
    sandbox.text = 'on' if restriction.syntax.sandbox else 'off'
    for node, value in zip(listed, args):
        node.set('value', value)
    return record


def parse_record(node: typing.Optional[etree._Element]
                 ) -> typing.Optional[Record]:
    """Read a record element; None when absent or not one of ours."""
    if node is None or node.tag != RECORD_TAG:
        return None
    try:
        return Record(
            tenant=domain_mod.findtext(node, META + 'tenant') or '',
            uid=int(domain_mod.findtext(node, META + 'uid')),
            gid=int(domain_mod.findtext(node, META + 'gid')),
            chroot=domain_mod.findtext(node, META + 'chroot') or '',
            args=tuple(a.get('value', '') for a in
                       domain_mod.findall(node, _ARGS)))
    except (TypeError, ValueError):
        return None


def read_record(dom: domain_mod.Domain) -> typing.Optional[Record]:
    """The record a previous pass left in ``dom``, if any."""
    return parse_record(dom.metadata(RECORD_TAG))


#: Size cap for domain XML that libvirt or our own hooks wrote.
TRUSTED_XML_BYTES = 1 << 24


def record_in_domain_xml(xml: typing.Union[str, bytes]
                         ) -> typing.Optional[Record]:
    """The record in a whole domain document libvirt or our hooks wrote.

    :raises InvalidDomainXML: the document is malformed.
    """
    return read_record(domain_mod.parse(xml, TRUSTED_XML_BYTES))


def record_from_xml(text: typing.Union[str, bytes]) -> typing.Optional[
        Record]:
    """Parse a bare record, as libvirt's ``virDomain.metadata()`` returns.
    """
    if isinstance(text, str):
        text = text.encode('utf-8')
    parser = etree.XMLParser(resolve_entities=False, no_network=True,
                             load_dtd=False)
    try:
        root = etree.fromstring(text, parser)
    except etree.XMLSyntaxError:
        return None
    if root.tag == 'restriction':
        # libvirt hands the element back with its namespace stripped.
        for node in root.iter(tag=etree.Element):
            if not node.tag.startswith('{'):
                node.tag = META + node.tag
    return parse_record(root)


def foreign_args(dom: domain_mod.Domain,
                 record: typing.Optional[Record]) -> typing.List[str]:
    """The ``<xen:commandline>`` values a previous pass did not add."""
    current = dom.xen_args()
    if record is not None:
        # The record's args were written as one run; remove that run.
        ours = list(record.args)
        for start in range(len(current) - len(ours) + 1):
            if ours and current[start:start + len(ours)] == ours:
                current = current[:start] + current[start + len(ours):]
                break
    return _drop_same_as_ours(current)


def _drop_same_as_ours(args: typing.List[str]) -> typing.List[str]:
    """Drop ``-xen-domid-restrict`` and our exact ``-sandbox``: we add them.
    """
    kept = []
    skip = False
    for index, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == '-xen-domid-restrict':
            continue
        elif (arg == '-sandbox' and index + 1 < len(args)
              and args[index + 1] == SANDBOX_POLICY):
            skip = True
        else:
            kept.append(arg)
    return kept


def apply(dom: domain_mod.Domain, restriction: Restriction,
          foreign: typing.Sequence[str],
          emulator: typing.Optional[str] = None) -> None:
    """Write the restriction arguments and our record into ``dom``.

    Ours go first: QEMU gives an option that takes a value the next
    argument, so a foreign ``-name`` ahead of ``-xen-domid-restrict``
    would swallow it; behind ours, a foreign option can only take another
    foreign argument (or none, and QEMU refuses to start).

    :param foreign: the arguments not ours, kept behind ours.
    :param emulator: if given, set as the domain's ``<emulator>``.
    """
    ours = restriction.args()
    dom.set_xen_args(ours + list(foreign))
    dom.set_metadata(to_element(restriction, ours))
    if emulator:
        dom.set_emulator(emulator)
