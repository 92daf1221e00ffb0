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
