"""Up-front checks: what a restricted device model cannot do.

Under dm_restrict some features break (the QEMU has no access to the host
resources they need) and some are unsafe.  They are refused here, before
a lease is taken or anything is written or defined, with an error that
names the device, the reason and the remedy, so the tenant learns at boot
time rather than when the feature fails inside a running guest.
"""

import typing

from lxml import etree

from xen_dm_restrict_plugin import domain as domain_mod
from xen_dm_restrict_plugin import exception

#: QEMU options that choose the user, chroot or seccomp policy; only this
#: product may set them on a restricted domain.
RESTRICTION_OPTIONS = frozenset(('runas', 'run-with', 'chroot', 'sandbox',
                                 'xen-domid-restrict', 'xen-domid',
                                 'xen-attach'))
#: QEMU options that can set any other option, the restriction included.
OVERRIDE_OPTIONS = frozenset(('readconfig', 'set'))
#: QEMU options that make it open a host path as root, before it drops
#: its privileges.
HOST_FILE_OPTIONS = frozenset(('pidfile', 'D', 'writeconfig', 'daemonize'))


Refusal = exception.FeatureRefused


def option_name(arg: str) -> typing.Optional[str]:
    """The QEMU option an argv element names, or None for a value.

    QEMU accepts ``-opt`` and ``--opt``, and ``-opt=value`` too.
    """
    if not arg.startswith('-') or arg in ('-', '--'):
        return None
    return arg.lstrip('-').split('=', 1)[0]


def _describe(node: etree._Element) -> str:
    attrs = ' '.join('%s=%r' % kv for kv in sorted(node.attrib.items()))
    target = node.find('target')
    where = (' (target %s)' % target.get('dev')
             if target is not None and target.get('dev') else '')
    return '<%s%s>%s' % (node.tag, ' ' + attrs if attrs else '', where)


def _check_kind(dom: domain_mod.Domain) -> None:
    if dom.hypervisor != 'xen':
        raise exception.FeatureRefused(
            '<domain type=%r>' % dom.hypervisor,
            'dm_restrict applies only to Xen domains',
            'enable the dm_restrict hook only on Xen (libxl) hosts')
    if dom.kind is domain_mod.GuestKind.HVM_TRADITIONAL:
        raise exception.FeatureRefused(
            'device model qemu-xen-traditional (<emulator>%s)'
            % dom.emulator,
            'dm_restrict is not supported by qemu-xen-traditional',
            'remove the <emulator> element or point it at a qemu-xen '
            'binary (QEMU 3.0 or later)')


def _check_pci(dom: domain_mod.Domain) -> typing.Iterator[Refusal]:
    for node in dom.iter_devices('hostdev'):
        if node.get('type') == 'pci':
            yield exception.FeatureRefused(
                'PCI passthrough %s' % _describe(node),
                'a restricted device model cannot reach the host PCI '
                'configuration space it needs to pass a device through',
                'remove the <hostdev> or boot the VM on a host aggregate '
                'without dm_restrict')
    for node in dom.iter_devices('interface'):
        if node.get('type') == 'hostdev':
            yield exception.FeatureRefused(
                'PCI passthrough network interface %s' % _describe(node),
                'an <interface type="hostdev"> is a PCI passthrough, which '
                'a restricted device model cannot serve',
                'use a bridged or network interface (type="bridge" or '
                '"network") instead')


def _has_media(disk: etree._Element) -> bool:
    source = disk.find('source')
    if source is None:
        return False
    return any(source.get(attr) for attr in
               ('file', 'dev', 'name', 'volume', 'dir'))


def _check_disks(dom: domain_mod.Domain) -> typing.Iterator[Refusal]:
    for disk in dom.iter_devices('disk'):
        driver = disk.find('driver')
        if driver is not None and driver.get('name') == 'qemu':
            yield exception.FeatureRefused(
                'qdisk backend %s' % _describe(disk),
                '<driver name="qemu"> asks for a QEMU-served (qdisk) '
                'backend, which does not work with a restricted device '
                'model',
                'use the phy backend: <driver name="phy"/> with a block '
                'device, or omit the driver element')
        if disk.get('device') == 'cdrom' and not _has_media(disk):
            yield exception.FeatureRefused(
                'empty CD-ROM drive %s' % _describe(disk),
                'media cannot be inserted into a CD-ROM drive of a '
                'restricted device model once the guest runs, so an empty '
                'drive is useless',
                'give the drive its ISO at boot (<source file=...>) or '
                'remove it')


def check_xen_args(args: typing.Sequence[str]) -> None:
    """Refuse extra QEMU arguments that would override the restriction.

    :param args: the ``<xen:commandline>`` values that are not ours.
    :raises FeatureRefused: naming the argument.
    """
    for arg in args:
        name = option_name(arg)
        if name in RESTRICTION_OPTIONS:
            raise exception.FeatureRefused(
                '<xen:arg value=%r>' % arg,
                'it sets the device model\'s %s, which dm_restrict '
                'controls' % name,
                'remove that argument from <xen:commandline>; the '
                'dm_restrict hook sets it')
        if name in HOST_FILE_OPTIONS:
            raise exception.FeatureRefused(
                '<xen:arg value=%r>' % arg,
                'QEMU would act on the host (a file opened as root, or '
                'detaching from libxl) before it drops its privileges',
                'remove that argument from <xen:commandline>')
        if name in OVERRIDE_OPTIONS:
            raise exception.FeatureRefused(
                '<xen:arg value=%r>' % arg,
                '-%s can set any device-model option, the restriction '
                'included' % name,
                'pass the options it would set directly in '
                '<xen:commandline>')


def dom0_qemu_backends(dom: domain_mod.Domain) -> typing.List[str]:
    """Devices of a PV or PVH guest that libxl serves with a dom0 QEMU.

    Such a QEMU (qdisk, a framebuffer) runs unrestricted: dm_restrict
    covers HVM device models only.
    """
    found = [_describe(disk) for disk in dom.iter_devices('disk')
             if (disk.find('driver') is not None
                 and disk.find('driver').get('name') == 'qemu')]
    found += ['<%s type=%r>' % (node.tag, node.get('type'))
              for node in dom.iter_devices('graphics')]
    return found


def check_domain(dom: domain_mod.Domain,
                 foreign_args: typing.Sequence[str]) -> None:
    """Refuse every feature that breaks or is unsafe under dm_restrict.

    Only meaningful for guests with a dom0 device model; PV, PVH and stub
    domain guests are not checked (there is nothing to restrict).

    :param dom: the parsed domain.
    :param foreign_args: ``<xen:commandline>`` values not set by us.
    :raises FeatureRefused: naming every refused device or element, the
        reasons and the remedies.
    """
    _check_kind(dom)
    if not dom.kind.has_dom0_device_model:
        return
    problems = list(_check_pci(dom)) + list(_check_disks(dom))
    try:
        check_xen_args(foreign_args)
    except exception.FeatureRefused as err:
        problems.append(err)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        # All at once, so the tenant fixes the domain in one go.
        raise exception.FeatureRefused(
            '%d refused features' % len(problems),
            '; '.join('(%d) %s: %s' % (n, p.subject, p.reason)
                      for n, p in enumerate(problems, 1)),
            '; '.join('(%d) %s' % (n, p.remedy)
                      for n, p in enumerate(problems, 1)))
