"""Attack on issue 19's NIC name rule: ``<target dev='ifN'>``.

iproute2 resolves a device name it cannot find as an interface *index*
when it reads ``if%u`` (lib/ll_map.c ``ll_name_to_index`` falls back to
``ll_idx_a2n``), and ``sscanf`` ignores what follows the number, so
``ifN`` and ``ifN-emu`` both mean ifindex N for ``ip link set``.  The
policy only asks whether an interface *named* ifN exists (none does), so
the name passes at define and at ``prepare``.  The hotplug scripts then
run ``ip link set dev NAME[-emu] down`` unconditionally (current
xen-network-common.sh ``remove_from_bridge``; its ``nomaster`` step is
guarded by a sysfs check by name, older vif-bridge ran it unguarded) - for the
emulated NIC's tap at ``remove`` time, after QEMU exited and the tap
is gone - and hit dom0's interface number N (2 is usually the uplink).

Runs in a network namespace the test creates, with private sysfs.
"""

from tests.functional.attack.test_attack19_nics import _in_netns

CHECK = '''
import pathlib, subprocess, tempfile
from tests import base
from xen_dm_restrict_plugin.core import domain, policy
from xen_dm_restrict_plugin.host import netfacts
idx = int(open('/sys/class/net/uplink0/ifindex').read())
name = 'if%d' % idx
settings = base.make_settings(pathlib.Path(tempfile.mkdtemp()),
                              allowed_bridges=['brt'])
xml = base.add_device(base.edit(base.fixture('hvm.xml'), lambda root:
    root.find('devices').remove(root.find('devices/interface'))),
    "<interface type='bridge'><source bridge='brt'/>"
    "<target dev='%s'/></interface>" % name)
dom = domain.parse(xml, 1 << 20)
for at_start in (False, True):
    facts = netfacts.HostNetwork(settings, at_start=at_start)
    print('problems', at_start, [p.subject for p in
          policy.Checker(settings, facts).problems(dom, [])])
sh = lambda cmd: subprocess.run(['sh', '-c', cmd]).returncode
print('master_before', pathlib.Path('/sys/class/net/uplink0/master').exists())
print('flags_before', open('/sys/class/net/uplink0/flags').read().strip())
# vif-bridge remove_from_bridge for the tap, once the tap is gone:
sh('ip link set %s-emu nomaster; ip link set dev %s-emu down' % (name, name))
print('master_after', pathlib.Path('/sys/class/net/uplink0/master').exists())
print('flags_after', open('/sys/class/net/uplink0/flags').read().strip())
'''

SETUP = ('ip link add brmgmt type bridge && '
         'ip link add uplink0 type veth peer name uplink0p && '
         'ip link set uplink0 master brmgmt && ip link set uplink0 up && '
         'ip link add brt type bridge')


def test_ifindex_name_passes_and_hits_dom0_interface_by_number():
    proc = _in_netns(SETUP, CHECK)
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    assert 'problems False []' in proc.stdout
    assert 'problems True []' in proc.stdout
    assert 'master_before True' in proc.stdout
    assert 'master_after False' in proc.stdout  # out of the bridge
    before = int(proc.stdout.split('flags_before ')[1].split()[0], 16)
    after = int(proc.stdout.split('flags_after ')[1].split()[0], 16)
    assert before & 1 and not after & 1  # and down
