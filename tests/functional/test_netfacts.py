"""The host's network facts, read from real interfaces.

Each test runs its checks in a network namespace of its own, with sysfs
mounted privately, so the bridges and taps it creates never appear in
the host's namespace and vanish with the namespace.
"""

import os
import subprocess
import sys
import textwrap

from tests import base
from tests.functional import hostenv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _in_netns(setup: str, code: str) -> subprocess.CompletedProcess:
    hostenv.require_root()
    hostenv.require_tool('/usr/bin/unshare')
    script = 'mount -t sysfs sysfs /sys && %s && exec "$0" -c "$1"' % setup
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        ['unshare', '--net', '--mount', 'sh', '-ec', script, sys.executable,
         textwrap.dedent(code)], capture_output=True, text=True, env=env,
        timeout=60)


CHECK = '''
from tests import base
from xen_dm_restrict_plugin.core import domain, policy
from xen_dm_restrict_plugin.host import netfacts
import tempfile, pathlib
settings = base.make_settings(pathlib.Path(tempfile.mkdtemp()),
                              allowed_bridges=['xenbr0', 'brt'])
facts = netfacts.HostNetwork(settings, at_start=%(at_start)s)
print('kind', facts.bridge_kind('brt'), facts.bridge_kind('dum0'),
      facts.bridge_kind('nothere'))
print('guest', facts.is_guest_interface('web-emu'),
      facts.is_guest_interface('dum0'))
xml = base.add_device(base.edit(base.fixture('hvm.xml'), lambda root:
    root.find('devices').remove(root.find('devices/interface'))),
    "<interface type='bridge'><source bridge='%(bridge)s'/>"
    "<target dev='%(name)s'/></interface>")
print('problems', [p.subject for p in policy.Checker(settings, facts)
                   .problems(domain.parse(xml, 1 << 20), [])])
'''


def _run(bridge='brt', name='web', at_start=False):
    proc = _in_netns(
        'ip link add brt type bridge && ip tuntap add dev dum0 mode tap && '
        'ip tuntap add dev web-emu mode tap && '
        'ip link add eth7 type bridge',
        CHECK % dict(bridge=bridge, name=name, at_start=at_start))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bridge_kinds_and_guest_taps_are_read_from_sysfs():
    out = _run()
    assert 'kind linux other missing' in out
    assert 'guest True False' in out


def test_a_real_dom0_interface_is_refused_by_name():
    out = _run(name='dum0')
    assert "<target dev='dum0'>" in out


def test_a_guest_tap_is_excused_at_define_but_not_at_prepare():
    assert "problems []" in _run(name='web')
    assert "<target dev='web'>" in _run(name='web', at_start=True)


def test_vif_bridge_would_take_xenbr7_for_eth7():
    # No xenbr7 exists and eth7 is a bridge: vif-bridge's old naming
    # would put the guest on eth7.
    proc = _in_netns(
        'ip link add eth7 type bridge',
        CHECK.replace("allowed_bridges=['xenbr0', 'brt']",
                      "allowed_bridges=['xenbr7']") % dict(
            bridge='xenbr7', name='web', at_start=True))
    assert proc.returncode == 0, proc.stderr
    assert "bridge 'xenbr7'" in proc.stdout


def test_nothing_is_left_in_the_hosts_namespace():
    _run()
    names = os.listdir('/sys/class/net')
    assert 'brt' not in names and 'web-emu' not in names
    assert base.HVM_UUID  # the fixture stayed untouched


ALTNAME_CHECK = '''
import pathlib, subprocess, tempfile
from tests import base
from xen_dm_restrict_plugin.core import domain, policy
from xen_dm_restrict_plugin.host import netfacts
settings = base.make_settings(pathlib.Path(tempfile.mkdtemp()),
                              allowed_bridges=['brt'])
name = %(name)r
if name is None:  # dom0's uplink by index, as iproute2 reads "ifN"
    name = 'if%%d' %% int(open('/sys/class/net/uplink0/ifindex').read())
xml = base.add_device(base.edit(base.fixture('hvm.xml'), lambda root:
    root.find('devices').remove(root.find('devices/interface'))),
    "<interface type='bridge'><source bridge='brt'/>"
    "<target dev='%%s'/>%(model)s</interface>" %% name)
dom = domain.parse(xml, 1 << 20)
for at_start in (False, True):
    facts = netfacts.HostNetwork(settings, at_start=at_start)
    problems = policy.Checker(settings, facts).problems(dom, [])
    print('refused', at_start, [p.subject for p in problems])
    for problem in problems:
        print('reason', problem.reason)
'''

ALTNAME_SETUP = (
    'ip link add mgmt0main type bridge && '
    'ip link property add dev mgmt0main altname enp0s31f6 && '
    'ip link add uplink0 type veth peer name uplink0p && '
    'ip link set uplink0 master mgmt0main && ip link set uplink0 up && '
    'ip tuntap add dev emuhost mode tap && '
    'ip link property add dev emuhost altname web2-emu && '
    'ip link add brt type bridge')


def _altname_run(name, model=''):
    proc = _in_netns(ALTNAME_SETUP, ALTNAME_CHECK % dict(name=name,
                                                         model=model))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _refused_at_define_and_prepare(out, name):
    subject = "<interface type='bridge'> <target dev='%s'>" % name
    assert "refused False [\"%s\"]" % subject in out, out
    assert "refused True [\"%s\"]" % subject in out, out


def test_an_alternative_name_of_a_dom0_interface_is_refused():
    """``ip link show enp0s31f6`` finds mgmt0main by its altname, so the
    hotplug script's offline step would take it down: refused at define
    and at prepare, the reason naming the interface it resolves to.
    """
    out = _altname_run('enp0s31f6', "<model type='netfront'/>")
    _refused_at_define_and_prepare(out, 'enp0s31f6')
    assert 'iproute2 resolves to mgmt0main' in out


def test_a_name_whose_emu_tap_is_a_dom0_altname_is_refused():
    out = _altname_run('web2')  # an emulated NIC: web2-emu is emuhost
    _refused_at_define_and_prepare(out, 'web2')
    assert 'dom0 has an interface web2-emu' in out


def test_ifN_names_that_iproute2_reads_as_an_index_are_refused():
    """``ip link set dev ifN-emu down`` acts on dom0's interface index N
    when no interface has the name: refused whatever exists.
    """
    out = _altname_run(None)
    assert out.count("<target dev='if") == 2, out
    assert 'interface index' in out
    for name in ('if2', 'if-4294967294', 'if+3x', 'if0'):
        out = _altname_run(name, "<model type='netfront'/>")
        _refused_at_define_and_prepare(out, name)


def test_iproute2_index_resolves_like_ll_name_to_index():
    proc = _in_netns(ALTNAME_SETUP, '''
        import socket
        from xen_dm_restrict_plugin.host import netfacts
        idx = socket.if_nametoindex('uplink0')
        for name in ('uplink0', 'enp0s31f6', 'if%d' % idx,
                     'if%d-emu' % idx, 'if-%d' % ((1 << 32) - idx),
                     'if999', 'ifx', 'nothere'):
            print(name.replace(str(idx), 'N'), netfacts.iproute2_index(name)
                  == (None if name in ('if999', 'ifx', 'nothere')
                      else socket.if_nametoindex('mgmt0main')
                      if name == 'enp0s31f6' else idx))
    ''')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 8 and all(
        line.endswith(' True') for line in lines), proc.stdout
