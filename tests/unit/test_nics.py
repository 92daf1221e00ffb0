"""NIC names and attachments: what libxl would do, refused where harmful.

The host's facts are given as data (:class:`Facts`); the functional tests
(tests/functional/test_netfacts.py) read them from real interfaces.
"""

import pytest

from tests import base
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import nics
from xen_dm_restrict_plugin.core import policy
from xen_dm_restrict_plugin import exception

NEUTRON = 'tap1a2b3c4d-5e'


class Facts(nics.NetworkFacts):
    """A host described by data."""

    known = True

    def __init__(self, interfaces=(), guests=(), bridges=None,
                 networks=None, at_start=False, ovs=None):
        self.ovs = ovs or {}
        self.interfaces = set(interfaces)
        self.guests = set(guests)
        self.bridges = bridges or {'xenbr0': 'linux', 'br-ten1': 'linux'}
        self.networks = networks or {}
        self.at_start = at_start

    def interface_exists(self, name):
        return name in self.interfaces or name in self.bridges

    def is_guest_interface(self, name):
        return name in self.guests

    def bridge_kind(self, name):
        if name in self.bridges:
            return self.bridges[name]
        return 'other' if name in self.interfaces else 'missing'

    def network(self, name):
        return self.networks.get(name)

    def ovs_port(self, name):
        return self.ovs.get(name)


@pytest.fixture
def settings(tmp_path):
    return base.make_settings(
        tmp_path, allowed_ovs_bridges=['br-int'],
        allowed_networks=['default', 'tenants', 'sriov', 'mgmt', 'macvtap',
                          'ovsnet', 'absent'])


def _nic(source="<source bridge='xenbr0'/>", extra='', kind='bridge'):
    return ("<interface type='%s'><mac address='00:16:3e:00:00:01'/>%s%s"
            "</interface>" % (kind, source, extra))


def _domain(nic, os_type='hvm'):
    xml = base.fixture('hvm.xml' if os_type == 'hvm' else 'pv.xml')
    root_xml = base.edit(xml, lambda root: [
        root.find('devices').remove(node)
        for node in root.findall('devices/interface')])
    return domain.parse(base.add_device(root_xml, nic), 1 << 20)


def problems(settings, nic, facts=None, os_type='hvm'):
    return [str(p) for p in policy.Checker(settings, facts).problems(
        _domain(nic, os_type), [])]


def refused(settings, nic, facts=None, os_type='hvm'):
    found = problems(settings, nic, facts, os_type)
    assert found, nic
    assert all('Remedy:' in text for text in found)
    return ' '.join(found)


# -- names ------------------------------------------------------------------
@pytest.mark.parametrize('name', ['eth0', 'lo', 'xenbr0'])
def test_a_name_of_dom0_is_refused_saying_what_libxl_does(settings, name):
    facts = Facts(interfaces={'eth0', 'lo'})
    message = refused(settings, _nic(extra="<target dev='%s'/>" % name),
                      facts)
    assert 'dom0 has an interface %s' % name in message
    assert 'offline' in message and 'ip link set dev %s down' % name \
        in message


def test_a_tap_suffix_name_of_dom0_is_refused_for_an_emulated_nic(settings):
    facts = Facts(interfaces={'web-emu'})
    message = refused(settings, _nic(extra="<target dev='web'/>"), facts)
    assert 'web-emu' in message


def test_a_running_guests_interface_passes_define_but_not_prepare(settings):
    nic = _nic(extra="<target dev='web0'/>")
    seen = Facts(interfaces={'web0', 'web0-emu'},
                 guests={'web0', 'web0-emu'})
    assert problems(settings, nic, seen) == []
    seen.at_start = True
    assert 'dom0 has an interface web0' in refused(settings, nic, seen)


@pytest.mark.parametrize('name', ['vif3.0', 'vif12.1-emu', 'vif0.0'])
def test_libxl_name_space_is_refused(settings, name):
    message = refused(settings, _nic(extra="<target dev='%s'/>" % name),
                      Facts())
    assert 'libxl\'s own name space' in message
    assert 'later domain' in message


def test_neutron_name_on_an_emulated_nic_names_the_rename(settings):
    message = refused(settings, _nic(extra="<target dev='%s'/>" % NEUTRON),
                      Facts())
    assert '%s-emu' % NEUTRON in message
    assert '15 characters' in message and 'netfront' in message


def test_neutron_name_works_where_libxl_can_run_it(settings):
    nic = _nic(extra="<model type='netfront'/><target dev='%s'/>" % NEUTRON)
    assert problems(settings, nic, Facts()) == []
    pv = _nic(extra="<target dev='%s'/>" % NEUTRON)
    assert problems(settings, pv, Facts(), os_type='pv') == []


def test_eleven_characters_fit_an_emulated_nic(settings):
    assert problems(settings, _nic(extra="<target dev='tenant-web1'/>"),
                    Facts()) == []


@pytest.mark.parametrize('name', ['a' * 16, 'eth0,fd=3', 'a b', '..', 'a/b'])
def test_names_that_are_no_linux_name_are_refused(settings, name):
    assert 'Linux interface name' in refused(
        settings, _nic(extra="<target dev='%s'/>" % name), Facts())


@pytest.mark.parametrize('name', ['5.0', '5.0-x', 'vif5.0x', 'web.1',
                                  'a.b'])
def test_names_with_a_dot_are_refused(settings, name):
    # vif-bridge's set_mtu splits DOMID.DEVID out of the renamed interface
    # and writes /local/domain/DOMID/device/vif/DEVID/mtu: "5.0" is
    # domain 5's first NIC.
    message = refused(settings, _nic(extra="<target dev='%s'/>" % name),
                      Facts())
    assert 'set_mtu' in message and '/local/domain/DOMID' in message


def _named(name):
    xml = base.edit(_domain(_nic("<source bridge='br-int'/>",
                                 "<virtualport type='openvswitch'/>"))
                    .to_string(),
                    lambda root: setattr(root.find('name'), 'text', name))
    return domain.parse(xml, 1 << 20)


@pytest.mark.parametrize('name', [
    # vif-openvswitch puts the name unquoted on ovs-vsctl's command line:
    # this one deletes Neutron's patch port and the external bridge.
    '" -- del-port patch-tun -- del-br br-ex -- comment x',
    'web 1', "it's", 'a*', 'a?', 'a[1]', 'a\\b', 'a=b', 'a,b', 'a/b',
    'x' * 65, ''])
def test_domain_names_ovs_vsctl_or_qemu_would_split_are_refused(settings,
                                                                name):
    facts = Facts(bridges={'br-int': 'openvswitch'})
    found = [str(p) for p in policy.Checker(settings, facts).problems(
        _named(name), [])]
    assert any('vif-openvswitch' in text and '<name>' in text
               for text in found), found


@pytest.mark.parametrize('name', ['instance-0000000a', 'i-3f2a9c1b',
                                  'debian12.home', 'win10_pro+sp1',
                                  'vm@host:1', 'x' * 64])
def test_names_orchestrators_write_are_accepted(settings, name):
    facts = Facts(bridges={'br-int': 'openvswitch'})
    assert [str(p) for p in policy.Checker(settings, facts).problems(
        _named(name), [])] == []


@pytest.mark.parametrize('name', ['if2', 'if0', 'if-4294967294', 'if-2',
                                  'if12x', 'if2-emu'])
def test_names_iproute2_reads_as_an_index_are_refused(settings, name):
    # Whatever the host has: ip link set dev ifN-emu down at removal acts
    # on dom0's interface N once the tap is gone.
    for facts in (None, Facts(), Facts(at_start=True)):
        message = refused(settings, _nic(extra="<model type='netfront'/>"
                                         "<target dev='%s'/>" % name), facts)
        assert 'interface index' in message and 'll_name_to_index' \
            in message


@pytest.mark.parametrize('name', ['ifb0', 'iface', 'if_a1', 'wif2'])
def test_names_that_merely_start_with_if_pass(settings, name):
    assert problems(settings, _nic(extra="<target dev='%s'/>" % name),
                    Facts()) == []


@pytest.mark.parametrize('name', ['lo&#10;', 'eth0&#10;', 'web&#10;'])
def test_a_trailing_newline_is_no_part_of_a_valid_name(settings, name):
    # The hotplug script reads vifname with $(...), which drops the
    # newline: "lo\n" would be lo.
    message = refused(settings, _nic(extra="<target dev='%s'/>" % name),
                      Facts(interfaces={'eth0', 'lo'}))
    assert 'Linux interface name' in message


@pytest.mark.parametrize('nic', [
    _nic("<source bridge='xenbr0&#10;'/>"),
    _nic("<source network='default&#10;'/>", kind='network'),
    _nic("<source bridge='br-int&#10;'/>",
         "<virtualport type='openvswitch'/>"),
])
def test_a_trailing_newline_is_no_part_of_a_bridge_or_network(settings,
                                                              nic):
    assert refused(settings, nic)


# -- bridges ----------------------------------------------------------------
def test_only_listed_bridges(settings):
    message = refused(settings, _nic("<source bridge='mgmtbr'/>"))
    assert "bridge 'mgmtbr'" in message and 'allowed_bridges' in message
    assert problems(settings, _nic("<source bridge='br-ten1'/>")) == []


def test_no_bridge_is_allowed_by_default(tmp_path):
    settings = base.make_settings(tmp_path, allowed_bridges=[],
                                  allowed_networks=[])
    assert 'lists only none' in refused(settings, _nic())


def test_a_missing_xenbr_that_vif_bridge_would_take_for_eth(settings):
    facts = Facts(bridges={'eth0': 'linux'})
    message = refused(settings, _nic(), facts)
    assert 'bridge eth0 instead' in message
    assert problems(settings, _nic(), Facts(bridges={'eth0': 'other'})) == []


def test_a_listed_bridge_of_the_wrong_kind(settings):
    message = refused(settings, _nic(), Facts(bridges={'xenbr0': 'other'}))
    assert 'no bridge' in message


# -- Open vSwitch -------------------------------------------------------------
OVS = "<virtualport type='openvswitch'/>"


def test_ovs_port_with_neutron_name_and_vlan(settings):
    facts = Facts(bridges={'br-int': 'openvswitch'})
    nic = _nic("<source bridge='br-int'/>",
               "<virtualport type='openvswitch'><parameters "
               "interfaceid='0b2f3a1e-2e4c-4b8e-9d7a-1a2b3c4d5e6f'/>"
               "</virtualport><vlan><tag id='42'/></vlan>"
               "<model type='netfront'/><target dev='%s'/>" % NEUTRON)
    assert problems(settings, nic, facts) == []
    trunk = _nic("<source bridge='br-int'/>", OVS + "<vlan trunk='yes'>"
                 "<tag id='10'/><tag id='20'/></vlan>")
    assert problems(settings, trunk, facts) == []


@pytest.mark.parametrize('extra,words', [
    ("<vlan><tag id='4096'/></vlan>", ['0 to 4095']),
    # Unicode digits: str.isdigit() is true, int() fails or reads them.
    ("<vlan><tag id='\u00b2'/></vlan>", ['0 to 4095']),
    ("<vlan><tag id='\u0663'/></vlan>", ['0 to 4095']),
    ("<vlan><tag id='\uff11\uff12'/></vlan>", ['0 to 4095']),
    ("<vlan><tag id='00042'/></vlan>", ['0 to 4095']),
    ("<vlan><tag id='42&#10;'/></vlan>", ['0 to 4095']),
    ("<vlan><tag id='1' nativeMode='untagged'/></vlan>", ['nativeMode']),
    ("<vlan><tag id='1'/><tag id='2'/></vlan>", ['trunk="yes"']),
    ("<script path='vif-bridge'/>", ['vif-openvswitch']),
])
def test_ovs_refusals(settings, extra, words):
    message = refused(settings, _nic("<source bridge='br-int'/>",
                                     OVS + extra))
    for word in words:
        assert word in message


def test_ovs_bridge_must_be_listed_as_ovs(settings):
    assert 'allowed_ovs_bridges' in refused(settings, _nic(extra=OVS))
    assert 'allowed_bridges' in refused(
        settings, _nic("<source bridge='br-int'/>"))


def test_ovs_on_a_linux_bridge_is_refused(settings):
    message = refused(settings, _nic("<source bridge='br-int'/>", OVS),
                      Facts(bridges={'br-int': 'linux'}))
    assert 'a Linux bridge, not an Open vSwitch bridge' in message


def test_vlan_without_ovs_is_refused(settings):
    assert 'vif-bridge would ignore them' in refused(
        settings, _nic(extra="<vlan><tag id='5'/></vlan>"))


def test_other_virtualports_are_refused(settings):
    assert 'only Open vSwitch' in refused(
        settings, _nic(extra="<virtualport type='802.1Qbh'/>"))


def test_ovs_bridge_option_refuses_names_vif_openvswitch_misreads(tmp_path):
    with pytest.raises(exception.ConfigError) as err:
        base.make_settings(tmp_path, allowed_ovs_bridges=['br.int'])
    assert 'allowed_ovs_bridges' in str(err.value)


# -- libvirt networks ---------------------------------------------------------
def _networks():
    net = nics.ResolvedNetwork
    return {'default': net('default', 'nat', 'xenbr0'),
            'tenants': net('tenants', 'bridge', 'br-ten1'),
            'sriov': net('sriov', 'hostdev', None),
            'mgmt': net('mgmt', 'bridge', 'mgmtbr'),
            'macvtap': net('macvtap', 'vepa', None),
            'ovsnet': net('ovsnet', 'bridge', 'br-int', 'openvswitch')}


def _net(name):
    return _nic("<source network='%s'/>" % name, kind='network')


@pytest.mark.parametrize('name', ['default', 'tenants', 'ovsnet'])
def test_networks_resolving_to_allowed_bridges(settings, name):
    facts = Facts(networks=_networks(),
                  bridges={'xenbr0': 'linux', 'br-ten1': 'linux',
                           'br-int': 'openvswitch'})
    assert problems(settings, _net(name), facts) == []


@pytest.mark.parametrize('name,words', [
    ('sriov', ['hostdev', 'PCI passthrough', 'libxlNetworkPrepareDevices']),
    ('mgmt', ["bridge 'mgmtbr'", 'allowed_bridges']),
    ('macvtap', ['macvtap']),
    ('absent', ['no defined network']),
])
def test_networks_refused(settings, name, words):
    message = refused(settings, _net(name), Facts(networks=_networks()))
    for word in words:
        assert word in message


def test_unlisted_network_refused_without_facts(settings):
    assert 'allowed_networks' in refused(settings, _net('elsewhere'))
    # Listed but unresolved: checked where facts are known.
    assert problems(settings, _net('sriov')) == []


# -- names Open vSwitch holds -----------------------------------------------
#: What tests/functional/test_ovs_names.py builds in a real database.
OVS_DB = {
    'patch-tun': nics.OvsPort('patch-tun', 'port', 'br-int', 'patch',
                              'patch-tun'),
    'vxlan-0a000001': nics.OvsPort('vxlan-0a000001', 'port', 'br-tun',
                                   'vxlan', 'vxlan-0a000001'),
    'br-ex': nics.OvsPort('br-ex', 'port', 'br-ex', 'internal', 'br-ex'),
    'ethx1': nics.OvsPort('ethx1', 'interface', 'br-ex', '', 'bond0'),
    NEUTRON: nics.OvsPort(NEUTRON, 'port', 'br-int', '', NEUTRON,
                          frozenset([base.HVM_UUID])),
    'tapother-01': nics.OvsPort('tapother-01', 'port', 'br-int', '',
                                'tapother-01', frozenset(['another'])),
    'pbi-own': nics.OvsPort('pbi-own', 'port', 'br-int', 'patch', 'pbi-own',
                            frozenset([base.HVM_UUID])),
}
OVS_NIC = ("<source bridge='br-int'/><virtualport type='openvswitch'/>"
           "<model type='netfront'/>")


@pytest.mark.parametrize('name, where', [
    ('patch-tun', 'port patch-tun (type patch) on bridge br-int'),
    ('vxlan-0a000001', 'port vxlan-0a000001 (type vxlan) on bridge br-tun'),
    ('br-ex', 'port br-ex (type internal) on bridge br-ex'),
    ('tapother-01', 'port tapother-01 on bridge br-int'),
])
def test_an_ovs_port_of_another_is_refused_on_an_ovs_nic(settings, name,
                                                         where):
    text = refused(settings, _nic(OVS_NIC, "<target dev='%s'/>" % name),
                   Facts(ovs=OVS_DB))
    assert "<target dev='%s'>" % name in text
    assert "Open vSwitch's database has a %s" % where in text
    assert '--if-exists del-port %s' % name in text
    assert ('every tenant network' in text) == (name in (
        'patch-tun', 'vxlan-0a000001'))


@pytest.mark.parametrize('name, effect', [
    ('patch-tun', 'deletes the port from bridge br-int'),
    ('br-ex', "creates an internal port's interface"),
    ('tapother-01', 'putting the guest on bridge br-int'),
    ('ethx1', 'putting the guest on bridge br-ex'),
])
def test_an_ovs_name_is_refused_on_a_linux_bridge_nic_too(settings, name,
                                                          effect):
    text = refused(settings, _nic(extra="<model type='netfront'/>"
                                  "<target dev='%s'/>" % name),
                   Facts(ovs=OVS_DB))
    assert effect in text


def test_an_emulated_nics_tap_name_is_checked_in_ovs(settings):
    ovs = {'web-emu': nics.OvsPort('web-emu', 'port', 'br-int', '',
                                   'web-emu')}
    text = refused(settings, _nic(extra="<target dev='web'/>"),
                   Facts(ovs=ovs))
    assert 'port web-emu on bridge br-int' in text


def test_a_bond_member_is_refused_by_its_interface_name(settings):
    text = refused(settings, _nic(OVS_NIC, "<target dev='ethx1'/>"),
                   Facts(ovs=OVS_DB))
    assert 'interface ethx1 of port bond0 on bridge br-ex' in text
    assert 'add-port" fails' in text


@pytest.mark.parametrize('at_start', [False, True])
def test_this_domains_own_guest_port_is_its_own(settings, at_start):
    # os-vif (vm-uuid) or vif-openvswitch (xen-vm-uuid) made it for this
    # domain: vif-openvswitch replaces it.
    assert problems(settings, _nic(OVS_NIC, "<target dev='%s'/>" % NEUTRON),
                    Facts(ovs=OVS_DB, at_start=at_start)) == []


def test_an_own_port_that_is_no_guest_port_is_refused(settings):
    text = refused(settings, _nic(OVS_NIC, "<target dev='pbi-own'/>"),
                   Facts(ovs=OVS_DB))
    assert 'port pbi-own (type patch)' in text


def test_a_fresh_neutron_name_passes_the_ovs_check(settings):
    assert problems(settings, _nic(OVS_NIC, "<target dev='tap0f0e0d0c-0b'/>"),
                    Facts(ovs=OVS_DB)) == []


def test_owned_by_wants_the_uuid_and_a_guest_type():
    port = nics.OvsPort('tapx', 'port', 'br-int', '', 'tapx',
                        frozenset(['abc']))
    assert port.owned_by('ABC') and not port.owned_by(None)
    assert not port.owned_by('abd')
    assert not nics.OvsPort('b', 'port', 'b', 'internal', 'b',
                            frozenset(['abc'])).owned_by('abc')
