"""What dom0 says about its interfaces and libvirt's networks.

The NIC policy (:mod:`xen_dm_restrict_plugin.core.nics`) needs facts of
the host: which interface names exist (a ``<target dev>`` naming one
would have libxl's cleanup take it down), what kind of bridge a name is
(``vif-bridge`` needs a Linux bridge, ``vif-openvswitch`` an Open vSwitch
one), which names Open vSwitch's database holds
(:mod:`xen_dm_restrict_plugin.host.ovsdb`), and what a libvirt network
resolves to.  They are read where the
checks run: in the orchestrator at define, and in libvirtd's hook at
``prepare``, which must not call back into libvirt (libvirtd would
deadlock), so networks are read from libvirt's own records: the live
definition libvirt's network driver keeps for an active network
(``/run/libvirt/network/NAME.xml``, the one ``libxlNetworkPrepareDevices``
resolves against) and, at define only, the persistent definition of one
not started yet.
"""

import logging
import os
import re
import socket
import typing

from lxml import etree

from xen_dm_restrict_plugin.core import nics
from xen_dm_restrict_plugin.core import settings as settings_mod
from xen_dm_restrict_plugin.host import ovsdb

LOG = logging.getLogger(__name__)

SYS_CLASS_NET = '/sys/class/net'
#: Network definitions are small; a bigger file is not libvirt's.
MAX_NETWORK_XML = 1 << 20


def interface_names() -> typing.FrozenSet[str]:
    """Every interface of this network namespace (own names only)."""
    return frozenset(name for _, name in socket.if_nameindex())


def iproute2_index(name: str) -> typing.Optional[int]:
    """The interface ``ip link set dev NAME`` acts on, if any.

    iproute2's ``ll_name_to_index`` asks the kernel (``if_nametoindex``,
    which since Linux 5.5 finds alternative names as well as names) and,
    for a name it does not know, reads ``if%u`` as an index
    (``ll_idx_a2n``).
    """
    try:
        return socket.if_nametoindex(name)
    except OSError:
        pass
    match = re.match(r'if([-+]?[0-9]+)', name)
    if match is None:
        return None
    index = int(match.group(1)) % (1 << 32)  # sscanf %u into unsigned
    try:
        socket.if_indextoname(index)
    except OSError:
        return None
    return index


def _sys(name: str, *parts: str) -> str:
    return os.path.join(SYS_CLASS_NET, name, *parts)


class HostNetwork(nics.NetworkFacts):
    """The facts of this host, read once per check.

    :param settings: the ``[dm_restrict]`` settings (libvirt's network
        directories).
    :param at_start: the domain is about to start (libvirtd's
        ``prepare``): any existing interface of a name is another's, and
        only active networks count.
    """

    known = True

    def __init__(self, settings: settings_mod.Settings,
                 at_start: bool = False):
        self.settings = settings
        self.at_start = at_start
        self._names: typing.Optional[typing.FrozenSet[str]] = None
        self._ovs = ovsdb.OvsPorts(settings.allowed_ovs_bridges)

    def interface_exists(self, name: str) -> bool:
        if self._names is None:
            self._names = interface_names()
        return name in self._names or iproute2_index(name) is not None

    def primary_name(self, name: str) -> typing.Optional[str]:
        index = iproute2_index(name)
        if index is None:
            return None
        try:
            return socket.if_indextoname(index)
        except OSError:
            return None

    def is_guest_interface(self, name: str) -> bool:
        # netback's interfaces are devices of the xen-backend bus
        # (vif-DOMID-DEVID); an emulated NIC's tap is a tun device named
        # by the hotplug script with -emu.  By its own name: sysfs knows
        # no alternative names.
        if name != self.primary_name(name):
            return False
        try:
            device = os.path.basename(os.path.realpath(_sys(name,
                                                            'device')))
        except OSError:
            device = ''
        if device.startswith('vif-') and os.path.exists(_sys(name,
                                                             'device')):
            return True
        return name.endswith(nics.EMU_SUFFIX) and os.path.exists(
            _sys(name, 'tun_flags'))

    def bridge_kind(self, name: str) -> str:
        if not os.path.exists(_sys(name)):
            return 'missing'
        if os.path.isdir(_sys(name, 'bridge')):
            return 'linux'
        master = _sys(name, 'master')
        # A port Open vSwitch enslaves to its datapath.
        if os.path.islink(master) and os.path.basename(
                os.path.realpath(master)) == 'ovs-system':
            return 'openvswitch'
        # An Open vSwitch bridge's own interface is an internal port the
        # kernel shows as neither a bridge nor enslaved: its database
        # says (a bridge, or the bridge's port of its name).
        if self.settings.allowed_ovs_bridges:
            port = self._ovs.get(name)
            if port is not None and port.bridge == name:
                return 'openvswitch'
        return 'other'

    def ovs_port(self, name: str) -> typing.Optional[nics.OvsPort]:
        return self._ovs.get(name)

    def network(self, name: str) -> typing.Optional[nics.ResolvedNetwork]:
        dirs = [self.settings.libvirt_network_state_dir]
        if not self.at_start:
            dirs.append(self.settings.libvirt_network_config_dir)
        for directory in dirs:
            found = read_network(os.path.join(directory, name + '.xml'),
                                 name)
            if found is not None:
                return found
        return None


def read_network(path: str, name: str
                 ) -> typing.Optional[nics.ResolvedNetwork]:
    """A libvirt network definition or status file, as libvirt reads it.

    The status file wraps the definition in ``<networkstatus>``; the
    definition's ``<name>`` must be ``name``.  A file that is missing,
    unreadable, not root's or not a network answers None.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if info.st_uid != 0 or info.st_size > MAX_NETWORK_XML:
            LOG.warning('ignoring libvirt network record %s: not root\'s '
                        'or too big', path)
            return None
        data = os.read(fd, MAX_NETWORK_XML + 1)
    finally:
        os.close(fd)
    try:
        root = etree.fromstring(data, etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False,
            remove_comments=True, remove_pis=True))
    except etree.XMLSyntaxError:
        LOG.warning('ignoring libvirt network record %s: not XML', path)
        return None
    if root.tag == 'networkstatus':
        root = root.find('network')
    if root is None or root.tag != 'network' or (
            root.findtext('name') or '').strip() != name:
        return None
    forward = root.find('forward')
    bridge = root.find('bridge')
    port = root.find('virtualport')
    return nics.ResolvedNetwork(
        name=name,
        forward=(forward.get('mode') or 'nat') if forward is not None
        else 'none',
        bridge=bridge.get('name') if bridge is not None else None,
        virtualport=port.get('type') if port is not None else None)
