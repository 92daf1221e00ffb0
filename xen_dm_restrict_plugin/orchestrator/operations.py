"""Lifecycle operations on a restricted domain, and which are refused.

A restricted device model cannot survive some operations: migration and
restore start a QEMU on the receiving side without the restriction, save
needs QEMU to write a state file it cannot open from its chroot, memory
snapshots are a save, CD-ROM media changes need QEMU to open a new file,
and PCI passthrough needs host resources it cannot reach.  The
orchestrator asks before acting (``check_operation``), and the libvirt
wrapper asks on its behalf, so no code path can forget.
"""

import typing

from lxml import etree

from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import policy
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import netfacts

if typing.TYPE_CHECKING:  # pragma: no cover
    from xen_dm_restrict_plugin import conf

MIGRATE = 'migrate'
MIGRATE_OFFLINE = 'migrate-offline'
SAVE = 'save'
RESTORE = 'restore'
MANAGED_SAVE = 'managed-save'
SNAPSHOT_MEMORY = 'snapshot-memory'
SNAPSHOT_DISK = 'snapshot-disk'
MEDIA_CHANGE = 'cdrom-media-change'
ATTACH_DEVICE = 'attach-device'
DETACH_DEVICE = 'detach-device'
UPDATE_DEVICE = 'update-device'
REDEFINE = 'redefine'
START = 'start'
SHUTDOWN = 'shutdown'
DESTROY = 'destroy'
REBOOT = 'reboot'
UNDEFINE = 'undefine'

_WHY = {
    MIGRATE: ('the receiving host starts a new device model without the '
              'restriction, and the restricted QEMU cannot hand over its '
              'state', 'shut the VM down and boot it again on the other '
              'host (cold move through the orchestrator)'),
    SAVE: ('the restricted device model cannot write the state file from '
           'its empty chroot, and restrictions are not re-applied on '
           'restore', 'shut the VM down instead of saving it'),
    SNAPSHOT_MEMORY: ('a snapshot with memory is a save of the device '
                      'model state, which a restricted QEMU cannot write',
                      'take a disk-only snapshot (--disk-only, or '
                      '<memory snapshot="no"/>), or shut the VM down first'),
    MEDIA_CHANGE: ('a restricted device model cannot open a new medium '
                   'once the guest runs', 'shut the VM down, change the '
                   'CD-ROM <source> in its definition, and boot it again'),
    REDEFINE: ('the new definition changes the dm_restrict arguments or '
               'record', 'define the domain through the dm_restrict hook '
               'without editing its restriction'),
}
_WHY[MIGRATE_OFFLINE] = _WHY[MIGRATE]
_WHY[RESTORE] = _WHY[SAVE]
_WHY[MANAGED_SAVE] = _WHY[SAVE]


def refuse(operation: str, name: str, reason: typing.Optional[str] = None,
           remedy: typing.Optional[str] = None
           ) -> exception.OperationRefused:
    """Build the refusal of ``operation`` on the domain called ``name``."""
    why, what_to_do = _WHY.get(operation, (
        'it is not known to be safe for a restricted device model',
        'shut the VM down first, or ask the operator to allow it'))
    return exception.OperationRefused(
        '%s of restricted domain %s' % (operation, name),
        reason or why, remedy or what_to_do)


def parse_device(text: str) -> etree._Element:
    """Parse a device XML fragment safely.

    :raises InvalidDomainXML: malformed or hostile.
    """
    # The same safe parser and limits as for whole domains.
    wrapper = domain_mod.parse(
        b'<domain type="xen"><devices>%s</devices></domain>'
        % text.encode('utf-8'), 1 << 20)
    devices = list(wrapper.devices())
    if len(devices) != 1:
        raise exception.InvalidDomainXML(
            'device XML', 'it holds %d elements, not one device'
            % len(devices), 'pass exactly one device element')
    return devices[0]


def parse_snapshot_memory(text: str) -> typing.Optional[str]:
    """The ``<memory snapshot=...>`` of a snapshot definition, if any.

    :raises InvalidDomainXML: malformed or hostile.
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True,
                             load_dtd=False)
    try:
        root = etree.fromstring((text or '<domainsnapshot/>').encode(
            'utf-8'), parser)
    except etree.XMLSyntaxError as err:
        raise exception.InvalidDomainXML(
            'snapshot XML', 'it is not well-formed (%s)' % err,
            'pass a libvirt <domainsnapshot> document') from None
    memory = root.find('memory')
    return memory.get('snapshot') if memory is not None else None


def check_device(operation: str, name: str, device: etree._Element,
                 live: bool, settings: 'conf.Settings',
                 dom: typing.Optional[domain_mod.Domain] = None) -> None:
    """Refuse a device change a restricted domain cannot take.

    :param operation: ATTACH_DEVICE, DETACH_DEVICE or UPDATE_DEVICE.
    :param name: the domain's name, for the message.
    :param device: the device element.
    :param live: whether the change reaches the running guest.
    :param settings: the ``[dm_restrict]`` settings the device is checked
        against, as in a whole domain.
    :param dom: the domain it is attached to; its guest type (HVM, PV,
        PVH) decides what the device needs, as at define time.
    :raises OperationRefused: naming the device and the remedy.
    """
    restricted = dom is None or restrict.read_record(dom) is not None
    if (restricted and device.tag == 'disk'
            and device.get('device') == 'cdrom' and live):
        raise refuse(MEDIA_CHANGE, name)
    if operation == DETACH_DEVICE:
        return
    probe = domain_mod.Domain(etree.fromstring(
        b'<domain type="xen"><name>device-probe</name><os><type>hvm</type>'
        b'</os><devices/></domain>'))
    if dom is not None and dom.root.find('os/type') is not None:
        kind = dom.root.find('os/type')
        probe.root.find('os/type').text = kind.xpath('string()')
        if kind.get('machine') is not None:
            probe.root.find('os/type').set('machine', kind.get('machine'))
    if dom is not None and dom.uuid:
        # Whose Open vSwitch port a <target dev> may name (core/nics.py).
        probe.set_uuid(dom.uuid)
    probe.devices().append(device)
    try:
        policy.check_domain(probe, [], settings,
                            netfacts.HostNetwork(settings, at_start=live))
    except exception.FeatureRefused as err:
        raise exception.OperationRefused(
            '%s of %s on restricted domain %s' % (operation, err.subject,
                                                  name),
            err.reason, err.remedy) from None
