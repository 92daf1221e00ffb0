"""What libxl does with a guest's network interfaces, and where they may go.

The policy's reading of ``<interface>``, from the sources:

- libvirt's ``libxlMakeNic`` copies ``<target dev>`` to
  ``libxl_device_nic.ifname`` and chooses the NIC type: an HVM guest's
  NIC without ``<model type='netfront'/>`` is ``VIF_IOEMU`` (a netback
  interface *and* an emulated NIC whose tap QEMU opens), every other one
  ``VIF`` (netback only).
- libxl writes the name to xenstore as ``vifname`` and always creates
  the interfaces under its own names: netback's ``vifD.N`` and, for the
  emulated NIC, the tap ``vifD.N-emu`` that ``libxl__build_device_model_
  args_new`` hands QEMU (``libxl__device_nic_devname``; a custom name
  never reaches QEMU since Xen 4.2).
- The hotplug script (``vif-common.sh``) renames ``vifD.N`` to NAME and
  the tap to ``NAME-emu`` (``rename_vif``, which fails when NAME exists).
  Linux names hold at most 15 characters, so NAME may have 15 for a
  netfront-only NIC and 11 when an emulated NIC gets ``-emu`` appended:
  Neutron's ``tapXXXXXXXX-XX`` (14) works for netfront NICs and PV
  guests only.
- When the start fails, libxl's cleanup runs the script ``offline`` on
  NAME as root (``ip link set dev NAME down``, removal from the bridge):
  a NAME that is one of dom0's interfaces takes it down.  A NAME in
  libxl's ``vifD.N`` space squats the name a later domain's netback gets.
- "One of dom0's interfaces" is what ``ip`` resolves a name to: the
  kernel looks names up among alternative names too (``ip link property
  add dev eno1 altname enp0s31f6``; systemd gives most NICs one), and
  iproute2's ``ll_name_to_index`` reads a name it cannot find that
  starts with ``if`` and a number as an interface index.  The hotplug
  scripts run ``ip link set dev NAME-emu down`` at removal, after the
  tap is gone, so ``ifN`` would take down dom0's interface N: such names
  are refused outright.
- ``<interface type='network'>`` is resolved by libvirt at start
  (``libxlNetworkPrepareDevices``, after the daemon hook's ``prepare``):
  forward mode none, nat, route or open gives the network's bridge;
  bridge gives its ``<bridge name>`` (with an Open vSwitch
  ``<virtualport>`` the NIC goes through ``vif-openvswitch``); hostdev
  gives a ``<hostdev>``, PCI passthrough; private, vepa and passthrough
  give a macvtap interface libxl does not support.
- For an Open vSwitch port libvirt writes ``BRIDGE[.TAG]`` or
  ``BRIDGE:TAG:TAG...`` (trunk) into ``libxl_device_nic.bridge`` and
  picks ``vif-openvswitch``, which splits that value on ``.`` and ``:``
  (``^([^.:]+)(\\.([0-9]+))?(:([0-9]+(:[0-9]+)*))?$``) and runs
  ``ovs-vsctl add-port BRIDGE DEV tag=TAG trunks=...``.  A bridge name
  with a dot or colon is misparsed; ``nativeMode`` cannot be written.
- A name is not only the kernel's: Open vSwitch's database holds ports
  that are no kernel interface (Neutron's patch ports ``patch-tun`` and
  ``int-br-ex``, tunnel ports ``vxlan-0a000001``, the ports of a bridge
  while ``ovs-vswitchd`` is down).  ``rename_vif`` asks only ``ip link
  show``, so the rename succeeds, and ``vif-openvswitch`` then plugs the
  guest with ``ovs-vsctl -- --if-exists del-port NAME -- add-port BRIDGE
  NAME`` and unplugs it (``remove``/``offline``, libxl's cleanup of a
  failed start included) with ``ovs-vsctl --if-exists del-port NAME``:
  either deletes the port of that name from whichever bridge holds it.
  With ``vif-bridge`` the guest's interface takes the name of a port
  ``ovs-vswitchd`` opens as that port's interface.  Such a name is
  refused unless the port is this domain's own (its interface's
  ``external_ids`` name the domain's uuid, as ``vif-openvswitch``
  (``xen-vm-uuid``), os-vif (``vm-uuid``) and libvirt (``vm-id``) write).

Where a NIC may attach is the operator's to say: ``allowed_bridges``
(Linux bridges, ``vif-bridge``), ``allowed_ovs_bridges``
(``vif-openvswitch``) and ``allowed_networks`` (libvirt networks, which
must resolve to an allowed bridge).  Facts about the host (which
interfaces exist, what a network resolves to) come from
:class:`NetworkFacts`, gathered by :mod:`xen_dm_restrict_plugin.host.
netfacts`; without them only what the XML itself says is checked.
"""

import dataclasses
import re
import typing

#: Linux's IFNAMSIZ less the terminating NUL.
IFNAME_MAX = 15
#: What vif-common.sh appends to the emulated NIC's tap name.
EMU_SUFFIX = '-emu'
_IFNAME_RE = re.compile(r'^[A-Za-z0-9_.-]{1,%d}\Z' % IFNAME_MAX)
#: libxl's own names (libxl__device_nic_devname), and what the hotplug
#: script makes of a name inside them.
LIBXL_NAME_RE = re.compile(r'^vif[0-9]+\.[0-9]+(?:-emu)?\Z')
#: Neutron's port names (nova.network.model.NIC_NAME_LEN = 14).
NEUTRON_NAME_RE = re.compile(r'^tap[0-9a-f]{8}-[0-9a-f]{2}\Z')
#: What iproute2 reads as an interface *index* when no interface has the
#: name (lib/ll_map.c ``ll_name_to_index`` falls back to ``ll_idx_a2n``,
#: ``sscanf(name, "if%u")``: an optional sign, then digits, the rest
#: ignored), so ``ip link set dev if2-emu down`` takes dom0's interface 2.
IFINDEX_NAME_RE = re.compile(r'^if[-+]?[0-9]')
#: A VLAN id as vif-openvswitch's pattern reads it: ASCII digits only.
VLAN_RE = re.compile(r'[0-9]{1,4}')
#: A bridge name vif-openvswitch can split back out of BRIDGE.TAG:TRUNK.
OVS_BRIDGE_RE = re.compile(r'^[A-Za-z0-9_-]{1,%d}\Z' % IFNAME_MAX)
#: A libvirt network name as the policy accepts it.
NETWORK_RE = re.compile(r'^[A-Za-z0-9_.-]{1,64}\Z')
#: Forward modes whose NIC libxl serves on the network's bridge.
BRIDGED_FORWARDS = ('none', 'nat', 'route', 'open', 'bridge')
VLAN_MAX = 4095
VIRTUALPORT_OVS = 'openvswitch'
OVS_SCRIPTS = ('vif-openvswitch', '/etc/xen/scripts/vif-openvswitch')


@dataclasses.dataclass(frozen=True)
class ResolvedNetwork:
    """A libvirt network as libvirt would resolve it at start.

    :param name: the network name.
    :param forward: the ``<forward mode>`` (``none`` without one).
    :param bridge: its ``<bridge name>``, if any.
    :param virtualport: its ``<virtualport type>``, if any.
    """

    name: str
    forward: str
    bridge: typing.Optional[str]
    virtualport: typing.Optional[str] = None


#: external_ids keys of an Open vSwitch interface that name the VM it
#: serves: vif-openvswitch's, os-vif's (Nova) and libvirt's.
OVS_OWNER_KEYS = ('xen-vm-uuid', 'vm-uuid', 'vm-id')
#: Interface types of a guest's own port (a netdev of the kernel); a
#: patch, tunnel or internal port is never a guest's.
OVS_GUEST_TYPES = ('', 'system')


@dataclasses.dataclass(frozen=True)
class OvsPort:
    """A name Open vSwitch's database holds.

    :param name: the name.
    :param kind: ``port``, ``interface`` (of the port ``port``, a bond
        member) or ``bridge``.
    :param bridge: the bridge it is on, if any.
    :param type: the interface's type (``''`` a system port, ``internal``,
        ``patch``, ``vxlan``...), ``+``-joined for a bond.
    :param port: the port an interface belongs to.
    :param owners: the VM uuids its interfaces' ``external_ids`` name
        (:data:`OVS_OWNER_KEYS`), lower case.
    """

    name: str
    kind: str
    bridge: typing.Optional[str] = None
    type: str = ''
    port: typing.Optional[str] = None
    owners: typing.FrozenSet[str] = frozenset()

    def describe(self) -> str:
        text = '%s %s' % (self.kind, self.name)
        if self.type:
            text += ' (type %s)' % self.type
        if self.port and self.port != self.name:
            text += ' of port %s' % self.port
        if self.bridge and self.kind != 'bridge':
            text += ' on bridge %s' % self.bridge
        return text

    def owned_by(self, uuid: typing.Optional[str]) -> bool:
        """Whether this is the guest port of the domain ``uuid``."""
        return bool(uuid) and uuid.lower() in self.owners and all(
            kind in OVS_GUEST_TYPES for kind in self.type.split('+'))


class NetworkFacts:
    """What the host says about interfaces and networks; the default
    knows nothing (define-time checks of the XML alone).

    :param at_start: the domain is about to start (the daemon hook's
        ``prepare``): none of its interfaces exists yet, so any existing
        interface of the name is another's.
    """

    at_start = False

    def interface_exists(self, name: str) -> typing.Optional[bool]:
        """Whether ``name`` names an interface of dom0 as iproute2 and
        the hotplug scripts resolve it (its name or an alternative name,
        ``ip link property add ... altname``); None if unknown.
        """
        return None

    def primary_name(self, name: str) -> typing.Optional[str]:
        """The interface's own name, if ``name`` resolves to one."""
        return None

    def is_guest_interface(self, name: str) -> bool:
        """Whether ``name`` is a Xen guest's netback interface or the tap
        of an emulated NIC (a running domain's, maybe this one's).
        """
        return False

    def bridge_kind(self, name: str) -> typing.Optional[str]:
        """``linux``, ``openvswitch``, ``other`` (an interface that is no
        bridge), ``missing``, or None if unknown.
        """
        return None

    def ovs_port(self, name: str) -> typing.Optional[OvsPort]:
        """What Open vSwitch's database holds of ``name`` (None: nothing,
        or no Open vSwitch on the host).

        :raises Unavailable: Open vSwitch is configured but its database
            cannot be read (the check fails closed).
        """
        return None

    def network(self, name: str) -> typing.Optional[ResolvedNetwork]:
        """The network ``name`` as libvirt resolves it; None if libvirt
        has no such network (or, when :attr:`known` is false, if
        unknown).
        """
        return None

    #: Whether :meth:`network` answers (False: networks are unknown).
    known = False


@dataclasses.dataclass(frozen=True)
class Problem:
    """One refused part of an interface."""

    subject: str
    reason: str
    remedy: str


def _emulated(nic, hvm: bool) -> bool:
    """libxlMakeNic: VIF_IOEMU for an HVM NIC without model netfront."""
    return hvm and nic.model != 'netfront'


def name_problems(nic, hvm: bool, facts: NetworkFacts,
                  owner: typing.Optional[str] = None
                  ) -> typing.List[Problem]:
    """What libxl would do with ``<target dev>``, where that is harm.

    :param owner: the domain's uuid: an Open vSwitch port of that name
        that is this domain's own is not another's.
    """
    name = nic.ifname
    if name is None:
        return []
    subject = '%s <target dev=%r>' % (nic.describe(), name)
    emulated = _emulated(nic, hvm)
    if not _IFNAME_RE.match(name) or name in ('.', '..'):
        return [Problem(
            subject, 'libxl writes it to xenstore as vifname and the '
            'hotplug script renames the guest\'s interface to it with '
            '"ip link set ... name"; it must be a Linux interface name',
            'remove <target>, or use up to %d letters, digits and "_-"'
            % (IFNAME_MAX - len(EMU_SUFFIX) if emulated else IFNAME_MAX))]
    if IFINDEX_NAME_RE.match(name):
        return [Problem(
            subject, 'the hotplug script passes it (and %s-emu) to "ip link '
            'set dev", and iproute2 reads a name no interface has that '
            'starts with "if" and a number as that interface index '
            '(ll_name_to_index): "ip link set dev %s down" at the '
            'domain\'s removal takes down whichever of dom0\'s interfaces '
            'has that index' % (name, name),
            'remove <target> or choose a name that does not start with '
            '"if" and a digit')]
    if '.' in name and not LIBXL_NAME_RE.match(name):
        return [Problem(
            subject, 'vif-bridge\'s set_mtu (xen-network-common.sh) reads '
            'DOMID.DEVID out of a renamed interface\'s name (after an '
            'optional "vif") and writes the bridge\'s MTU to '
            '/local/domain/DOMID/device/vif/DEVID/mtu: a name such as '
            '"5.0" writes into domain 5\'s NIC configuration',
            'remove <target> or choose a name without "."')]
    if LIBXL_NAME_RE.match(name):
        return [Problem(
            subject, 'it is in libxl\'s own name space (vifDOMID.DEVID, '
            'and -emu for an emulated NIC\'s tap): the hotplug script would '
            'rename this guest\'s interface to a name a later domain\'s '
            'netback needs, whose start then fails',
            'remove <target> (libxl names the interface vifDOMID.DEVID) or '
            'choose a name outside vifN.N')]
    found = []
    if emulated and len(name) + len(EMU_SUFFIX) > IFNAME_MAX:
        found.append(Problem(
            subject, 'this NIC is emulated (libvirt gives an HVM guest\'s '
            'NIC without <model type="netfront"/> an emulated twin), and '
            'the hotplug script renames its tap vifD.N-emu to %s-emu, '
            'longer than Linux\'s %d characters: the rename fails and so '
            'does the start' % (name, IFNAME_MAX),
            'use at most %d characters, or <model type="netfront"/> (a PV '
            'NIC only: the guest needs Xen PV drivers), which takes names '
            'of up to %d such as Neutron\'s tapXXXXXXXX-XX'
            % (IFNAME_MAX - len(EMU_SUFFIX), IFNAME_MAX)))
    names = [name] + ([name + EMU_SUFFIX] if emulated else [])
    for each in names:
        problem = _kernel_name_problem(subject, each, facts) or \
            _ovs_name_problem(nic, subject, each, facts, owner)
        if problem is not None:
            found.append(problem)
            break
    return found


def _kernel_name_problem(subject: str, each: str, facts: NetworkFacts
                         ) -> typing.Optional[Problem]:
    if not facts.interface_exists(each):
        return None
    if not facts.at_start and facts.is_guest_interface(each):
        # A running guest's (this one's, if it is redefined while it
        # runs); the daemon hook's prepare refuses it if another's.
        return None
    primary = facts.primary_name(each)
    return Problem(
        subject, 'dom0 has an interface %s%s%s: the hotplug script '
        'refuses to rename the guest\'s interface onto it, the start '
        'fails, and libxl\'s cleanup then runs the script "offline" '
        'on %s as root (ip link set dev %s down, removal from its '
        'bridge)' % (
            each, ' (a name iproute2 resolves to %s)' % primary
            if primary not in (None, each) else '',
            '' if facts.at_start else ' that is not a guest\'s',
            each, each),
        'remove <target> or choose a name no interface of dom0 has')


def _ovs_name_problem(nic, subject: str, each: str, facts: NetworkFacts,
                      owner: typing.Optional[str]
                      ) -> typing.Optional[Problem]:
    port = facts.ovs_port(each)
    if port is None or port.owned_by(owner):
        return None
    where = 'bridge %s' % port.bridge if port.bridge else 'its bridge'
    types = set(port.type.split('+'))
    system = types <= set(OVS_GUEST_TYPES)
    rename = ('the hotplug script renames the guest\'s interface to it (it '
              'asks only "ip link show", and an Open vSwitch port need not '
              'be a kernel interface), and ')
    if port.kind == 'interface':
        # del-port takes port names: a bond member's name stays.
        what = rename + (
            'vif-openvswitch\'s "ovs-vsctl add-port" fails on a second '
            'interface of the name' if nic.virtualport == VIRTUALPORT_OVS
            else 'ovs-vswitchd opens a kernel interface of a system '
            'interface\'s name as that interface, putting the guest on %s'
            % where if system else 'the port loses its interface')
    elif nic.virtualport == VIRTUALPORT_OVS:
        what = rename + (
            'vif-openvswitch plugs it with "ovs-vsctl -- --if-exists '
            'del-port %s -- add-port BRIDGE %s" and unplugs it (at removal, '
            'and in libxl\'s cleanup of a failed start) with "ovs-vsctl '
            '--if-exists del-port %s": either deletes that port from %s'
            % (each, each, each, where))
    elif system:
        what = rename + (
            'ovs-vswitchd opens the kernel interface of a system port\'s '
            'name as that port, putting the guest on %s with the port\'s '
            'VLAN and flows' % where)
    elif 'internal' in types:
        what = rename + (
            'ovs-vswitchd creates an internal port\'s interface under that '
            'name, which it cannot while the guest holds it')
    else:
        what = rename + (
            'a vif-openvswitch plug or unplug of the name ("ovs-vsctl '
            '--if-exists del-port %s") deletes the port from %s'
            % (each, where))
    if types - set(OVS_GUEST_TYPES + ('internal',)):
        what += (' (a patch or tunnel port: with Neutron\'s patch-tun or '
                 'a vxlan port gone, every tenant network of the host '
                 'is cut)')
    return Problem(
        subject, 'Open vSwitch\'s database has a %s that is not this '
        'domain\'s: %s' % (port.describe(), what),
        'remove <target> or choose a name that is no port or interface of '
        'Open vSwitch (ovs-vsctl --columns=name list Interface)')


def _bridge_problems(subject: str, bridge: str, ovs: bool, settings,
                     facts: NetworkFacts) -> typing.List[Problem]:
    allowed = settings.allowed_ovs_bridges if ovs else \
        settings.allowed_bridges
    option = 'allowed_ovs_bridges' if ovs else 'allowed_bridges'
    script = 'vif-openvswitch' if ovs else 'vif-bridge'
    if bridge not in allowed:
        return [Problem(
            '%s bridge %r' % (subject, bridge),
            'libxl\'s %s would put the guest on it, and [dm_restrict] '
            '%s lists only %s' % (script, option, ', '.join(
                sorted(allowed)) or 'none'),
            'use one of the bridges the operator allows, or ask the '
            'operator to add it to [dm_restrict] %s' % option)]
    kind = facts.bridge_kind(bridge)
    wanted = 'openvswitch' if ovs else 'linux'
    if kind is None or kind == wanted:
        return []
    if kind == 'missing':
        # The hotplug script then fails the start, which harms nothing;
        # but vif-bridge takes a missing xenbrN for bridge ethN.
        other = 'eth' + bridge[len('xenbr'):]
        if ovs or not bridge.startswith('xenbr') or \
                facts.bridge_kind(other) != 'linux':
            return []
        why = ('it does not exist in dom0, and vif-bridge then puts the '
               'guest on bridge %s instead (its old xenbrN naming)' % other)
    else:
        why = ('it is %s, not a%s bridge, so %s fails or attaches the '
               'guest elsewhere' % (
                   'an Open vSwitch bridge' if kind == 'openvswitch' else
                   'a Linux bridge' if kind == 'linux' else
                   'an interface that is no bridge',
                   'n Open vSwitch' if ovs else ' Linux', script))
    return [Problem('%s bridge %r' % (subject, bridge), why,
                    'create the bridge, or fix [dm_restrict] %s' % option)]


def _vlan_problems(nic, subject: str) -> typing.List[Problem]:
    found = []
    if not nic.vlan_tags:
        if nic.vlan_trunk:
            found.append(Problem(
                '%s <vlan trunk="yes">' % subject, 'it has no tags',
                'give the trunk its <tag id=...> elements'))
        return found
    for tag in nic.vlan_tags:
        if not (VLAN_RE.fullmatch(tag) and int(tag) <= VLAN_MAX):
            found.append(Problem(
                '%s <vlan><tag id=%r>' % (subject, tag),
                'vif-openvswitch passes it to ovs-vsctl as a VLAN id, '
                'which must be 0 to %d' % VLAN_MAX,
                'use a VLAN id from 0 to %d' % VLAN_MAX))
    if nic.vlan_native:
        found.append(Problem(
            '%s <vlan><tag nativeMode=...>' % subject,
            'libvirt writes only BRIDGE.TAG or BRIDGE:TAG:TAG for libxl, '
            'so the native VLAN would silently not apply',
            'remove nativeMode'))
    if len(nic.vlan_tags) > 1 and not nic.vlan_trunk:
        found.append(Problem(
            '%s <vlan>' % subject, 'libvirt passes only the first of '
            'several tags unless trunk="yes"', 'use one <tag>, or '
            'trunk="yes"'))
    return found


def attach_problems(nic, settings, facts: NetworkFacts
                    ) -> typing.List[Problem]:
    """Where the NIC would attach, and whether the operator allows it."""
    subject = nic.describe()
    found: typing.List[Problem] = []
    ovs = nic.virtualport == VIRTUALPORT_OVS
    if nic.virtualport is not None and not ovs:
        found.append(Problem(
            '%s <virtualport type=%r>' % (subject, nic.virtualport),
            'libvirt\'s libxl driver knows only Open vSwitch ports; it '
            'would ignore this one and put the guest on the bridge '
            'unconfigured', 'use <virtualport type="openvswitch"> on an '
            'Open vSwitch bridge, or no <virtualport>'))
        return found
    if ovs and nic.type != 'bridge':
        found.append(Problem(
            '%s <virtualport type="openvswitch">' % subject,
            'libvirt takes an Open vSwitch port of a network from the '
            'network\'s definition, not from the interface',
            'use <interface type="bridge"> with the Open vSwitch bridge'))
        return found
    if nic.vlan_tags or nic.vlan_trunk:
        if not ovs:
            found.append(Problem(
                '%s <vlan>' % subject, 'libvirt passes VLAN tags to libxl '
                'only for Open vSwitch ports; vif-bridge would ignore them '
                'and put the guest on the untagged bridge',
                'use <virtualport type="openvswitch"> on an Open vSwitch '
                'bridge, or remove <vlan>'))
        else:
            found += _vlan_problems(nic, subject)
    if ovs and nic.script is not None and nic.script not in OVS_SCRIPTS:
        found.append(Problem(
            '%s <script path=%r>' % (subject, nic.script),
            'an Open vSwitch port needs vif-openvswitch, which libvirt '
            'picks when no script is given', 'remove <script>'))
    if nic.type == 'bridge':
        if ovs and not OVS_BRIDGE_RE.match(nic.bridge or ''):
            found.append(Problem(
                '%s bridge %r' % (subject, nic.bridge),
                'vif-openvswitch reads the bridge back out of '
                'BRIDGE.TAG:TRUNK, so a name with "." or ":" names '
                'another bridge or VLAN', 'use a bridge name of letters, '
                'digits, "_" and "-"'))
            return found
        found += _bridge_problems(subject, nic.bridge, ovs, settings, facts)
    elif nic.type == 'network':
        found += _network_problems(nic, subject, settings, facts)
    return found


def _network_problems(nic, subject: str, settings, facts: NetworkFacts
                      ) -> typing.List[Problem]:
    name = nic.network
    if name not in settings.allowed_networks:
        return [Problem(
            '%s network %r' % (subject, name),
            'libvirt would attach the guest to whatever the network '
            'resolves to, and [dm_restrict] allowed_networks lists only %s'
            % (', '.join(sorted(settings.allowed_networks)) or 'none'),
            'use a network the operator allows, or ask the operator to '
            'add it to [dm_restrict] allowed_networks')]
    if not facts.known:
        return []
    net = facts.network(name)
    if net is None:
        return [Problem(
            '%s network %r' % (subject, name),
            'libvirt has no %s network of that name, so what the guest '
            'would get cannot be checked' % (
                'active' if facts.at_start else 'defined'),
            'define and start the network, or use another')]
    if net.forward == 'hostdev':
        return [Problem(
            '%s network %r (forward mode hostdev)' % (subject, name),
            'libvirt resolves an interface on it to a <hostdev> at start '
            '(libxlNetworkPrepareDevices): PCI passthrough, which a '
            'restricted device model cannot serve',
            'use a bridged network, or remove it from [dm_restrict] '
            'allowed_networks')]
    if net.forward not in BRIDGED_FORWARDS:
        return [Problem(
            '%s network %r (forward mode %s)' % (subject, name, net.forward),
            'libvirt resolves it to a macvtap (direct) interface, which '
            'libvirt\'s libxl driver does not support',
            'use a network with a bridge')]
    ovs = net.virtualport == VIRTUALPORT_OVS
    if net.virtualport is not None and not ovs:
        return [Problem(
            '%s network %r <virtualport type=%r>' % (
                subject, name, net.virtualport),
            'libvirt\'s libxl driver knows only Open vSwitch ports',
            'use a Linux bridge or an Open vSwitch network')]
    if not net.bridge:
        return [Problem(
            '%s network %r' % (subject, name),
            'it has no bridge, so libvirt has nothing to give libxl',
            'use a network with a <bridge name=...>')]
    return _bridge_problems('%s network %r' % (subject, name), net.bridge,
                            ovs, settings, facts)
