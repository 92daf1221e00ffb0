"""Attack on issue 19's NIC name rule: an *alternative name* of a dom0
interface (``ip link property add dev X altname Y``; systemd >= 251
gives most NICs one, e.g. ``enp0s31f6`` for ``eno1``).

HostNetwork.interface_exists reads ``socket.if_nameindex()`` (and sysfs),
which list primary names only, so ``<target dev='ALTNAME'>`` passes the
check at define and at the hook's ``prepare``.  The hotplug script
(Debian's vif-common.sh ``rename_vif``) then finds ``ip link show ALTNAME``
succeeds, fails the start, and libxl's cleanup runs ``offline`` with
dev=ALTNAME: ``ip link set dev ALTNAME down`` takes the real interface
down - the very outage issue 19 set out to prevent.

Everything runs in a network namespace the test creates (private sysfs).
"""

import os
import subprocess
import sys
import textwrap

from tests.functional import hostenv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _in_netns(setup, code):
    hostenv.require_root()
    hostenv.require_tool('/usr/bin/unshare')
    script = 'mount -t sysfs sysfs /sys && %s && "$0" -c "$1"' % setup
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        ['unshare', '--net', '--mount', 'sh', '-ec', script, sys.executable,
         textwrap.dedent(code)], capture_output=True, text=True, env=env,
        timeout=60)


CHECK = '''
import pathlib, subprocess, tempfile
from tests import base
from xen_dm_restrict_plugin.core import domain, policy
from xen_dm_restrict_plugin.host import netfacts
settings = base.make_settings(pathlib.Path(tempfile.mkdtemp()),
                              allowed_bridges=['brt'])
xml = base.add_device(base.edit(base.fixture('hvm.xml'), lambda root:
    root.find('devices').remove(root.find('devices/interface'))),
    "<interface type='bridge'><source bridge='brt'/>"
    "<target dev='%(name)s'/></interface>")
dom = domain.parse(xml, 1 << 20)
for at_start in (False, True):
    facts = netfacts.HostNetwork(settings, at_start=at_start)
    print('problems', at_start, [p.subject for p in
          policy.Checker(settings, facts).problems(dom, [])])
# What vif-common.sh then does with the name (rename_vif, then offline).
sh = lambda cmd: subprocess.run(['sh', '-c', cmd]).returncode
print('rename_vif_sees_it', sh('ip link show %(name)s >/dev/null 2>&1') == 0)
sh('ip link set dev mgmt0main up')
print('before', open('/sys/class/net/mgmt0main/flags').read().strip())
sh('ip link set dev %(name)s down')   # vif-bridge offline
print('after', open('/sys/class/net/mgmt0main/flags').read().strip())
'''

SETUP = ('ip link add mgmt0main type bridge && '
         'ip link property add dev mgmt0main altname enp0s31f6 && '
         'ip link add brt type bridge')


def test_primary_name_is_refused_control():
    proc = _in_netns(SETUP, CHECK % dict(name='mgmt0main'))
    assert proc.returncode == 0, proc.stderr
    assert "problems True [\"<interface type='bridge'> <target " \
        "dev='mgmt0main'>\"]" in proc.stdout


def test_altname_of_dom0_interface_passes_define_and_prepare():
    proc = _in_netns(SETUP, CHECK % dict(name='enp0s31f6'))
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    # accepted both at define and at the hook's prepare
    assert 'problems False []' in proc.stdout
    assert 'problems True []' in proc.stdout
    # and the name reaches the real interface through ip(8)
    assert 'rename_vif_sees_it True' in proc.stdout
    before = int(proc.stdout.split('before ')[1].split()[0], 16)
    after = int(proc.stdout.split('after ')[1].split()[0], 16)
    assert before & 1 and not after & 1  # IFF_UP cleared on mgmt0main
