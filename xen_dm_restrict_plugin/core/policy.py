"""Up-front checks: allow what is known safe for a restricted device model.

Everything libvirt's libxl driver and libxl will act on (the reading of
:mod:`xen_dm_restrict_plugin.core.model`) passes only when a rule here allows
it; the vocabulary itself is checked by
:mod:`xen_dm_restrict_plugin.core.schema`, extra QEMU arguments by
:mod:`xen_dm_restrict_plugin.core.qemu_args`, host paths by
:mod:`xen_dm_restrict_plugin.core.hostpaths`.  Refusals happen before a lease
is taken or anything is written or defined, and name every refused part
at once, each with the reason and the remedy.
"""

import fnmatch
import ipaddress
import os
import re
import time
import typing

from lxml import etree

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import disks
from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import hostpaths
from xen_dm_restrict_plugin.core import libxl_argv
from xen_dm_restrict_plugin.core import model as model_mod
from xen_dm_restrict_plugin.core import nics as nics_mod
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin.core import qemu_args
from xen_dm_restrict_plugin.core import resources
from xen_dm_restrict_plugin.core import schema
from xen_dm_restrict_plugin.core import settings as settings_mod
from xen_dm_restrict_plugin import exception

Refusal = exception.FeatureRefused

#: Firmware directories of libxl's own packages: a ``<loader>`` there is
#: allowed without listing it in allowed_host_paths.
FIRMWARE_DIRS = ('/usr/lib/xen/boot', '/usr/libexec/xen/boot',
                 '/usr/share/qemu', '/usr/share/seabios', '/usr/share/ovmf')

#: Character-device types an operator may allow, and what the source
#: path must be for each (None: no host path).
CHARDEV_PATHS = {
    'pty': None, 'null': None,
    'file': hostpaths.Expect.NEW_FILE,
    'dev': hostpaths.Expect.ANY,
    'unix': hostpaths.Expect.SOCKET,
}
_CHARDEV_WHY = dict(
    {kind: 'a %s source names a host path that QEMU opens as root' % kind
     for kind in ('file', 'dev', 'unix')},
    pipe='a pipe source makes QEMU open PATH.in and PATH.out as root, '
         'which the path rules cannot vouch for',
    tcp='a tcp source makes QEMU listen or connect on the host network',
    udp='a udp source makes QEMU send and receive on the host network',
    stdio='a stdio source joins the guest to the device model\'s log',
    null='a null source is allowed only where the operator allows it')
NIC_TYPES = ('bridge', 'network')
NIC_MODELS = libxl_argv.EMULATED_NIC_MODELS + ('netfront',)
VIDEO_MODELS = ('vga', 'cirrus', 'xen', 'none')
SOUND_MODELS = ('ac97', 'es1370', 'sb16', 'ich6', 'hda')
INPUT_TYPES = ('mouse', 'tablet', 'keyboard')
INPUT_BUSES = ('usb', 'ps2', 'xen')
CONTROLLER_TYPES = ('xenbus', 'ide')
OS_TYPES = ('hvm', 'xen', 'linux', 'xenpvh')
BOOT_DEVS = ('hd', 'cdrom', 'network', 'fd')
#: Lifecycle actions; the coredump ones make libvirtd write the guest's
#: memory into dom0 as root on every crash.
LIFECYCLE_ACTIONS = ('destroy', 'restart', 'preserve', 'rename-restart')
_BRIDGE_RE = libxl_argv.IFNAME_RE
_NETWORK_RE = nics_mod.NETWORK_RE
_KEYMAP_RE = libxl_argv.KEYMAP_RE
_VDEV_RE = re.compile(r'^(hd|sd|xvd)[a-z]{1,3}[0-9]{0,3}\Z')
_NAME_RE = libxl_argv.NAME_RE
#: XPath's ``string()``, compiled once (``node.xpath()`` compiles the
#: expression at every call).
_STRING = etree.XPath('string()')


def _refusal(subject: str, reason: str, remedy: str) -> Refusal:
    return exception.FeatureRefused(subject, reason, remedy)


def _path_refusal(subject: str, reason: str) -> Refusal:
    return _refusal(
        subject, 'libxl or QEMU opens it as root, and %s' % reason,
        'use a path under [dm_restrict] allowed_host_paths, or ask the '
        'operator to allow its directory')


class Checker:
    """The whole-domain policy for one configuration.

    :param settings: the ``[dm_restrict]`` settings.
    :param facts: what the host says about its interfaces and libvirt's
        networks (:mod:`xen_dm_restrict_plugin.host.netfacts`); without
        them only the XML itself is checked.
    :param scope: the tenant and instance whose paths the domain may name
        (:mod:`xen_dm_restrict_plugin.core.pathscope`); without one a
        ``{tenant}``/``{instance}`` entry matches any.
    :param view: the host as :func:`disks.render` of the same check read
        it (:class:`disks.HostView`); a new one otherwise.
    """

    def __init__(self, settings: settings_mod.Settings,
                 facts: typing.Optional[nics_mod.NetworkFacts] = None,
                 scope: typing.Optional[pathscope.Scope] = None,
                 view: typing.Optional[disks.HostView] = None):
        self.settings = settings
        self.facts = facts if facts is not None else nics_mod.NetworkFacts()
        self.scope = scope
        self.view = (disks.HostView(settings, scope) if view is None
                     else view.of(settings, scope))

    def problems(self, dom: domain_mod.Domain,
                 foreign_args: typing.Sequence[str]) -> typing.List[
                     Refusal]:
        """Every refused part of ``dom``, in document order."""
        found = [_refusal(item.where, item.reason, item.remedy)
                 for item in schema.unknown_parts(dom)]
        dm = model_mod.DomainModel(dom)
        found += self._kind(dm)
        if dm.hypervisor != 'xen':
            return found
        found += self._name(dm)
        found += self._os(dm)
        found += self._disks(dm)
        found += self._chardevs(dm)
        found += self._nics(dm)
        found += self._displays(dm)
        found += self._other_devices(dom)
        found += resources.problems(dom, self.settings)
        found += self._args(foreign_args)
        if dm.kind in (domain_mod.GuestKind.PV, domain_mod.GuestKind.PVH):
            found += self._pv_dom0_qemu(dm)
        return found

    def check(self, dom: domain_mod.Domain,
              foreign_args: typing.Sequence[str]) -> None:
        """Refuse ``dom`` unless every part of it is allowed.

        :raises FeatureRefused: naming every refused part, the reasons and
            the remedies.
        """
        raise_all(self.problems(dom, foreign_args))

    # -- the guest --------------------------------------------------------
    def _kind(self, dm: model_mod.DomainModel) -> typing.List[Refusal]:
        if dm.hypervisor != 'xen':
            return [_refusal(
                '<domain type=%r>' % dm.hypervisor,
                'dm_restrict applies only to Xen domains',
                'enable the dm_restrict hook only on Xen (libxl) hosts')]
        found = []
        if dm.os_type not in OS_TYPES:
            found.append(_refusal(
                '<os><type>%s</type>' % dm.os_type,
                'it is not a Xen guest type this product knows (%s)'
                % ', '.join(OS_TYPES), 'use <type>hvm</type>'))
        if dm.kind is domain_mod.GuestKind.HVM_TRADITIONAL:
            found.append(_refusal(
                'device model qemu-xen-traditional (<emulator>%s)'
                % dm.emulator,
                'dm_restrict is not supported by qemu-xen-traditional',
                'remove the <emulator> element or point it at a qemu-xen '
                'binary (QEMU 3.0 or later)'))
        allowed = {None, self.settings.qemu_binary, self.settings.launcher}
        if dm.emulator not in allowed:
            found.append(_refusal(
                '<emulator>%s</emulator>' % dm.emulator,
                'libxl runs the emulator as root (and libvirt runs it with '
                '-help at define time); only the configured device model '
                'may run', 'remove the <emulator> element (the dm_restrict '
                'hook writes the right one)'))
        return found

    def _name(self, dm: model_mod.DomainModel) -> typing.List[Refusal]:
        if dm.name is not None and _NAME_RE.match(dm.name):
            return []
        return [_refusal(
            '<name>%r</name>' % dm.name,
            'libxl passes the name to QEMU as -name, where a comma adds '
            'options, and writes it to xenstore, from where Xen\'s '
            'vif-openvswitch puts it unquoted on ovs-vsctl\'s command line '
            'as root, where a space or a quote adds commands',
            'rename the domain: 1 to 64 letters, digits and "_.+:@-" (as '
            'virt-manager and Nova name domains)')]

    def _os(self, dm: model_mod.DomainModel) -> typing.List[Refusal]:
        found = []
        for item in dm.host_files:
            reason = self.view.path_problem(item.path,
                                            hostpaths.Expect.FILE, False)
            if reason:
                found.append(_path_refusal(
                    '<%s> %s' % (item.what, item.path), reason))
        if dm.loader:
            reason = None
            if not _is_firmware(dm.loader):
                reason = self.view.path_problem(
                    dm.loader, hostpaths.Expect.FILE, False)
            if reason:
                found.append(_path_refusal('<loader>%s' % dm.loader, reason))
        for tag in ('on_poweroff', 'on_reboot', 'on_crash'):
            node = domain_mod.find(dm.dom.root, tag)
            action = _STRING(node) if node is not None else None
            if action is not None and action not in LIFECYCLE_ACTIONS:
                found.append(_refusal(
                    '<%s>%s</%s>' % (tag, action, tag),
                    'only %s are known to be safe (a core dump writes the '
                    'guest\'s memory into dom0 as root)'
                    % ', '.join(LIFECYCLE_ACTIONS),
                    'use destroy or restart'))
        for boot in domain_mod.findall(dm.dom.root, 'os/boot'):
            if boot.get('dev') not in BOOT_DEVS:
                found.append(_refusal(
                    '<boot dev=%r>' % boot.get('dev'),
                    'it is not a boot device libxl knows',
                    'use one of %s' % ', '.join(BOOT_DEVS)))
        if dm.bootloader is not None and (
                dm.bootloader not in self.settings.allowed_bootloaders):
            found.append(_refusal(
                '<bootloader>%s</bootloader>' % dm.bootloader,
                'libxl runs the bootloader in dom0 as root',
                'remove it (libxl uses pygrub), or ask the operator to add '
                'it to [dm_restrict] allowed_bootloaders'))
        if (dm.kind == domain_mod.GuestKind.PV and dm.bootloader is None
                and not any(f.what == 'kernel' for f in dm.host_files)
                and 'pygrub' not in self.settings.allowed_bootloaders):
            found.append(_refusal(
                'PV guest without <kernel> or <bootloader>',
                'libvirt then gives libxl its pygrub '
                '(LIBXL_BOOTLOADER_PATH, in libxlMakeDomBuildInfo), which '
                'libxl runs in dom0 as root on the guest\'s disk, and '
                '[dm_restrict] allowed_bootloaders does not allow pygrub',
                'boot the guest with <kernel> (and <initrd>) from an allowed '
                'path, or ask the operator to add pygrub to '
                'allowed_bootloaders'))
        if dm.bootloader_args is not None:
            found.append(_refusal(
                '<bootloader_args>',
                'libxl passes them to the bootloader it runs as root (pygrub '
                'writes the kernel to any --output path)',
                'remove <bootloader_args>'))
        return found

    # -- devices ----------------------------------------------------------
    def _disks(self, dm: model_mod.DomainModel) -> typing.List[Refusal]:
        # How each disk is served, and the storage rules: core.disks.
        return disks.problems(dm, self.settings, self.scope, self.view)

    def _chardevs(self, dm: model_mod.DomainModel) -> typing.List[Refusal]:
        found = []
        allowed = self.settings.allowed_chardev_types
        for dev in dm.chardevs:
            if dev.role == 'parallel':
                reason, remedy = schema.KNOWN_REFUSED['parallel']
                found.append(_refusal(dev.describe(), reason, remedy))
                continue
            if dev.type not in allowed or dev.type not in CHARDEV_PATHS:
                found.append(_refusal(
                    dev.describe(),
                    '%s; only %s are allowed ([dm_restrict] '
                    'allowed_chardev_types)' % (_CHARDEV_WHY.get(
                        dev.type, 'a %s source is not known to be safe'
                        % dev.type), ', '.join(allowed)),
                    'use type="pty", or ask the operator to add %r to '
                    '[dm_restrict] allowed_chardev_types' % dev.type))
                continue
            expect = CHARDEV_PATHS[dev.type]
            if expect is None:
                continue
            reason = self.view.path_problem(dev.path, expect, True)
            if reason:
                found.append(_path_refusal(
                    '%s source %s' % (dev.describe(), dev.path), reason))
        return found

    def _nics(self, dm: model_mod.DomainModel) -> typing.List[Refusal]:
        found = []
        hvm = dm.kind.has_dom0_device_model
        for nic in dm.nics:
            subject = nic.describe()
            if nic.type == 'hostdev':
                found.append(_refusal(
                    'PCI passthrough network interface %s' % subject,
                    'an <interface type="hostdev"> is a PCI passthrough, '
                    'which a restricted device model cannot serve',
                    'use a bridged or network interface (type="bridge" or '
                    '"network") instead'))
                continue
            if nic.type not in NIC_TYPES:
                found.append(_refusal(
                    subject, 'only %s interfaces are known to be safe'
                    % ' and '.join(NIC_TYPES), 'use type="bridge"'))
                continue
            if nic.type == 'bridge' and not _BRIDGE_RE.match(
                    nic.bridge or ''):
                found.append(_refusal(
                    '%s bridge %r' % (subject, nic.bridge),
                    'libxl pastes the bridge name into QEMU\'s -netdev '
                    'option; it must be a Linux interface name',
                    'use a bridge name of letters, digits and "_.-"'))
                continue
            if nic.type == 'network' and not _NETWORK_RE.match(
                    nic.network or ''):
                found.append(_refusal(
                    '%s network %r' % (subject, nic.network),
                    'it is not a libvirt network name',
                    'use a network name of letters, digits and "_.-"'))
                continue
            ovs_script = (nic.virtualport == nics_mod.VIRTUALPORT_OVS
                          and nic.script in nics_mod.OVS_SCRIPTS)
            if nic.script is not None and not ovs_script and (
                    nic.script not in self.settings.allowed_interface_scripts):
                found.append(_refusal(
                    '%s <script path=%r>' % (subject, nic.script),
                    'libxl\'s hotplug runs the script in dom0 as root',
                    'remove <script> (libxl runs vif-bridge), or ask the '
                    'operator to add it to [dm_restrict] '
                    'allowed_interface_scripts'))
            if nic.model is not None and nic.model not in NIC_MODELS:
                found.append(_refusal(
                    '%s <model type=%r>' % (subject, nic.model),
                    'libxl passes the model to QEMU as a -device name, '
                    'where a comma adds properties (romfile= reads a host '
                    'file)', 'use one of %s' % ', '.join(NIC_MODELS)))
            found += [_refusal(p.subject, p.reason, p.remedy)
                      for p in nics_mod.name_problems(
                          nic, hvm, self.facts, owner=dm.dom.uuid)]
            found += [_refusal(p.subject, p.reason, p.remedy)
                      for p in nics_mod.attach_problems(
                          nic, self.settings, self.facts)]
        return found

    def _displays(self, dm: model_mod.DomainModel) -> typing.List[Refusal]:
        found = []
        for display in dm.displays:
            subject = '<graphics type=%r>' % display.type
            if display.type != 'vnc':
                found.append(_refusal(
                    subject, 'only VNC is known to be safe (SDL passes '
                    'DISPLAY and an XAUTHORITY file to a root QEMU; SPICE '
                    'opens host sockets)', 'use <graphics type="vnc">'))
                continue
            for kind, address in display.listens:
                if kind not in (None, 'address'):
                    found.append(_refusal(
                        '%s <listen type=%r>' % (subject, kind),
                        'only address listens are known to be safe (a '
                        'socket listen is a host path)',
                        'use <listen type="address" address="127.0.0.1"/>'))
                    continue
                if address is None:
                    continue
                if not _is_ipv4(address):
                    found.append(_refusal(
                        '%s listen %r' % (subject, address),
                        'libxl pastes it into QEMU\'s -vnc option, where '
                        'anything but a dotted-quad IPv4 address can name a '
                        'unix socket or add options (an IPv6 scope id may '
                        'hold commas, and QEMU misreads an IPv6 address '
                        'without brackets)', 'listen on an IPv4 address, '
                        'e.g. 127.0.0.1'))
            port = fixed_vnc_port(display.node)
            if port is not None and not any(
                    first <= port <= last
                    for first, last in self.settings.vnc_fixed_ports):
                found.append(_refusal(
                    '%s port %r (a fixed port)' % (
                        subject, display.node.get('port')),
                    'libvirt\'s libxlMakeVfb takes a fixed port as given, '
                    'without its port allocator, and the console is '
                    'listened on there in dom0: a tenant could take a port '
                    'a dom0 service or another domain needs; [dm_restrict] '
                    'vnc_fixed_ports allows %s' % (', '.join(
                        '%d-%d' % pair for pair in
                        self.settings.vnc_fixed_ports) or 'none'),
                    'use autoport="yes" (libvirt picks a free port), or ask '
                    'the operator to allow the port in [dm_restrict] '
                    'vnc_fixed_ports'))
            if display.keymap is not None and not _KEYMAP_RE.match(
                    display.keymap):
                found.append(_refusal(
                    '%s keymap %r' % (subject, display.keymap),
                    'QEMU loads the keymap file it names',
                    'use a keymap name such as "en-us"'))
        return found

    def _other_devices(self, dom: domain_mod.Domain) -> typing.List[
            Refusal]:
        found = []

        def check(tag: str, attr: str, allowed: typing.Sequence[str],
                  what: str) -> None:
            for node in domain_mod.findall(dom.root, tag):
                value = node.get(attr)
                if value not in allowed:
                    found.append(_refusal(
                        '<%s %s=%r>' % (tag.rsplit('/', 1)[-1], attr, value),
                        '%s other than %s are not known to be safe '
                        '(libxl hands them to QEMU)' % (
                            what, ', '.join(allowed)),
                        'use one of %s, or remove it' % ', '.join(allowed)))

        check('devices/video/model', 'type', VIDEO_MODELS, 'video models')
        check('devices/sound', 'model', SOUND_MODELS, 'sound models')
        check('devices/input', 'type', INPUT_TYPES, 'input types')
        check('devices/input', 'bus', INPUT_BUSES, 'input buses')
        check('devices/controller', 'type', CONTROLLER_TYPES,
              'controllers (a USB controller is served by QEMU as root)')
        check('devices/memballoon', 'model', ('xen',), 'balloon models')
        return found

    # -- arguments and PV -------------------------------------------------
    def _args(self, args: typing.Sequence[str]) -> typing.List[Refusal]:
        return [_refusal('<xen:arg> %s' % problem.item.spelled(),
                         problem.reason, problem.remedy)
                for problem in qemu_args.check_extra(
                    args, self.settings.allowed_qemu_options)]

    def _pv_dom0_qemu(self, dm: model_mod.DomainModel
                      ) -> typing.List[Refusal]:
        reasons = dm.dom0_qemu_reasons()
        if not reasons or (
                self.settings.pv_dom0_qemu == constants.PV_DOM0_QEMU_ALLOW):
            return []
        return [_refusal(
            '%s guest needing a dom0 QEMU for %s' % (
                dm.kind.value.upper(), ', '.join(reasons)),
            'libxl serves these with a QEMU in dom0 that runs as root, '
            'unrestricted (dm_restrict covers HVM device models only)',
            'remove those devices (use phy disks, no framebuffer, no '
            'channel), make the guest HVM, or set [dm_restrict] '
            'pv_dom0_qemu = allow to accept an unrestricted root QEMU')]


_VERSIONED_FIRMWARE_RE = re.compile(r'^/usr/lib/xen-[0-9.]+/boot(?=/)')


def fixed_vnc_port(node) -> typing.Optional[int]:
    """The fixed port of a ``<graphics type='vnc'>``, or None when
    libvirt allocates one.

    As ``virDomainGraphicsDefParseXMLVNC`` reads it: no port or port -1
    means autoport, and ``autoport='yes'``/``'no'`` overrides that (a
    value it cannot parse changes nothing; here it counts as fixed).  A
    fixed port that is no number answers -1, which no range holds.
    """
    port, autoport = node.get('port'), node.get('autoport')
    if autoport == 'yes':
        return None
    if autoport is None and port in (None, '-1'):
        return None
    if port is None:
        return 0
    return int(port) if re.fullmatch('[0-9]{1,5}', port) else -1


_IPV4_RE = re.compile(r'^[0-9]{1,3}(\.[0-9]{1,3}){3}\Z')


def _is_ipv4(address: str) -> bool:
    if not _IPV4_RE.match(address):
        return False
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return True


#: Where libxl's versioned packages keep their firmware: LIB/xen-*/boot.
_XEN_LIB = '/usr/lib'
#: (identity of _XEN_LIB, its xen-* entries), while it does not change.
_xen_lib_entries: typing.List[typing.Any] = [None, ()]


def _xen_dirs() -> typing.List[str]:
    """``glob('/usr/lib/xen-*/boot')``, without listing ``/usr/lib`` at
    every boot: its ``xen-*`` names are kept while the directory's
    identity and modification time stay the same (and were not "now",
    when a change in the same clock tick would not show).
    """
    try:
        st = os.stat(_XEN_LIB)
    except OSError:
        return []
    key = (st.st_dev, st.st_ino, st.st_mtime_ns)
    names = _xen_lib_entries[1]
    if _xen_lib_entries[0] != key:
        try:
            names = tuple(fnmatch.filter(os.listdir(_XEN_LIB), 'xen-*'))
        except OSError:
            return []
        fresh = time.time_ns() - st.st_mtime_ns > 2 * 10 ** 9
        _xen_lib_entries[:] = [key if fresh else None, names]
    found = []
    for name in names:
        entry = os.path.join(_XEN_LIB, name)
        if os.path.isdir(entry) and os.path.lexists(entry + '/boot'):
            found.append(entry + '/boot')
    return sorted(found)


def _firmware_dirs(path: str) -> typing.List[str]:
    found = list(FIRMWARE_DIRS) + _xen_dirs()
    match = _VERSIONED_FIRMWARE_RE.match(path)
    return found + ([match.group(0)] if match else [])


def _is_firmware(path: str) -> bool:
    """Whether ``path`` is in a firmware directory of libxl's packages,
    as written and resolved.  It need not exist: libxl fails the start
    when it does not, and reading nothing leaks nothing.
    """
    return hostpaths.problem(path, _firmware_dirs(path), hostpaths.Expect.ANY
                             ) in (None, '%r does not exist' % path)


def raise_all(problems: typing.Sequence[Refusal]) -> None:
    """Raise nothing, the one refusal, or one naming them all."""
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


def check_domain(dom: domain_mod.Domain, foreign_args: typing.Sequence[str],
                 settings: settings_mod.Settings,
                 facts: typing.Optional[nics_mod.NetworkFacts] = None,
                 scope: typing.Optional[pathscope.Scope] = None,
                 view: typing.Optional[disks.HostView] = None) -> None:
    """Refuse every part of ``dom`` not known to be safe.

    :param dom: the parsed domain.
    :param foreign_args: ``<xen:commandline>`` values not set by us.
    :param settings: the ``[dm_restrict]`` settings.
    :param facts: the host's interfaces and libvirt's networks, if known.
    :param scope: the tenant and instance the domain is for.
    :param view: the host as :func:`disks.render` of the same check read
        it.
    :raises FeatureRefused: naming every refused part, the reasons and the
        remedies.
    """
    Checker(settings, facts, scope, view).check(dom, foreign_args)


def pv_dom0_qemu_reasons(dom: domain_mod.Domain) -> typing.List[str]:
    """Devices of a PV or PVH guest that libxl serves with a dom0 QEMU."""
    return model_mod.DomainModel(dom).dom0_qemu_reasons()
