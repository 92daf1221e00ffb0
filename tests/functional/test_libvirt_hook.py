"""The libxl hook, run exactly as libvirtd runs it.

libvirtd execs ``/etc/libvirt/hooks/libxl DOMAIN OPERATION SUB_OPERATION
EXTRA`` with the domain XML on stdin and stops a start on a non-zero
exit, showing stderr.  The tests that reap or create the chroot need
root; the refusals do not.
"""

import marshal
import os
import re
import signal
import socket
import subprocess
import sys

from lxml import etree
from oslo_config import cfg
import pytest

from tests import base
from tests.functional import hostenv
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin.host import preflight
from xen_dm_restrict_plugin.launcher import settings as launch_settings
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks

HOOK = hostenv.module('xen_dm_restrict_plugin.cmd.libvirt_hook')
ACME = hooks.Instance(base.HVM_UUID, 'acme')


@pytest.fixture(scope='module', params=['python', 'service'])
def hook_via(request, tmp_path_factory):
    """How libvirtd's call reaches the hook: the Python hook it execs, or
    the compiled client ``install-hook`` writes and the hook service.
    """
    if request.param == 'python':
        yield None
        return
    service = hostenv.HookService(str(tmp_path_factory.mktemp('hook')))
    yield service
    service.stop()


@pytest.fixture
def env(tmp_path, hook_via):
    made = hostenv.make_env(tmp_path, with_reaper=os.geteuid() == 0)
    made.touched = set()
    made.hook = hook_via
    yield made
    if os.geteuid() == 0:
        for uid in made.touched:
            hostenv.kill_uid(uid, rounds=2)
    made.remove_users()


def call_hook(env, operation, sub_operation, xml, name='fixture-hvm'):
    if isinstance(xml, str):
        xml = xml.encode()
    argv, environ = HOOK, env.environ()
    if env.hook is not None:
        argv, environ = env.hook.argv(), env.hook.environ(environ)
    return subprocess.run(argv + [name, operation, sub_operation, '-'],
                          input=xml, capture_output=True, env=environ,
                          timeout=30)


def restricted_xml(env, instance=ACME, xml=None) -> str:
    """The XML the orchestrator defines: through the dm_restrict hook."""
    hook = extension.DmRestrictHook(cfg.ConfigOpts(), env.settings())
    try:
        out = hook.prepare(xml or base.fixture('hvm.xml'), instance)
    finally:
        hook.close()
    env.touched.add(restrict.read_record(domain.parse(out, 1 << 20)).uid)
    return out


def edit_args(xml: str, func) -> str:
    dom = domain.parse(xml, 1 << 20)
    dom.set_xen_args(func(dom.xen_args()))
    return dom.to_string()


def test_help_names_the_operations(env):
    proc = subprocess.run(HOOK + ['--help'], capture_output=True, text=True,
                          env=env.environ(), timeout=30)
    assert proc.returncode == 0
    for words in ('prepare begin', 'stopped end', 'release end',
                  'migrate begin', 'never calls back into libvirt'):
        assert words in proc.stdout


@pytest.mark.parametrize('name', ['-h', '--help', '-web', '--'])
def test_domain_names_that_look_like_options_are_still_checked(env, name):
    proc = call_hook(env, 'prepare', 'begin', base.fixture('hvm.xml'),
                     name=name)
    assert proc.returncode == 2, proc.stdout
    assert b'carries no dm_restrict <metadata> record' in proc.stderr


def test_unrestricted_hvm_start_is_refused(env):
    proc = call_hook(env, 'prepare', 'begin', base.fixture('hvm.xml'))
    assert proc.returncode == 2
    assert b'refused' in proc.stderr
    assert b'carries no dm_restrict <metadata> record' in proc.stderr
    assert b'fixture-hvm' in proc.stderr


def test_unrestricted_hvm_start_allowed_when_not_enforced(env):
    env.write_config(enforce='false')
    proc = call_hook(env, 'prepare', 'begin', base.fixture('hvm.xml'))
    assert proc.returncode == 0, proc.stderr
    assert b'allowed unrestricted (enforce is off)' in proc.stderr


def test_traditional_device_model_is_refused(env):
    xml = base.edit(base.fixture('hvm.xml'), lambda root: root.find(
        'devices').insert(0, etree.fromstring(
            '<emulator>/usr/lib/xen/bin/qemu-dm</emulator>')))
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b'qemu-xen-traditional' in proc.stderr


@pytest.mark.parametrize('fixture', ['pv.xml', 'pvh.xml'])
def test_guests_without_a_dom0_device_model_pass(env, fixture):
    for operation, sub in (('prepare', 'begin'), ('migrate', 'begin'),
                           ('stopped', 'end')):
        proc = call_hook(env, operation, sub, base.fixture(fixture))
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize('operation, sub', [
    ('start', 'begin'), ('reconnect', 'begin'), ('attach', 'begin')])
def test_other_operations_do_nothing(env, operation, sub):
    proc = call_hook(env, operation, sub, b'not even XML')
    assert proc.returncode == 0, proc.stderr


def test_malformed_xml_is_refused(env):
    proc = call_hook(env, 'prepare', 'begin', b'<domain type="xen">')
    assert proc.returncode == 2
    assert b'not well-formed' in proc.stderr


def test_incoming_migration_is_refused(env):
    xml = restricted_xml(env)
    proc = call_hook(env, 'migrate', 'begin', xml)
    assert proc.returncode == 2
    assert b'incoming migration' in proc.stderr
    unrestricted = call_hook(env, 'migrate', 'begin', base.fixture('hvm.xml'))
    assert unrestricted.returncode == 2


@pytest.mark.parametrize('tamper, message', [
    (lambda args: [], b'does not start with the restriction arguments'),
    (lambda args: [a for a in args if a != '-xen-domid-restrict'],
     b'does not start with the restriction arguments'),
    # Ahead of ours, -name would take -xen-domid-restrict as its value.
    (lambda args: ['-name'] + args,
     b'does not start with the restriction arguments'),
    (lambda args: args + ['-xen-domid', '0'], b"-xen-domid '0'"),
    (lambda args: args + ['-readconfig', '/tmp/x'],
     b"-readconfig '/tmp/x'"),
    (lambda args: args + ['-incoming', 'exec:id'], b"-incoming 'exec:id'"),
    (lambda args: args + ['-name'], b'last extra argument'),
])
def test_record_without_its_arguments_is_refused(env, tamper, message):
    # libvirt's test driver, for one, drops <xen:commandline>.
    xml = edit_args(restricted_xml(env), tamper)
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_extra_user_option_is_refused(env):
    xml = edit_args(restricted_xml(env),
                    lambda args: args + ['-runas', '1000:1000'])
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b"-runas '1000:1000'" in proc.stderr
    assert b'restriction, which only dm_restrict may set' in proc.stderr


@pytest.mark.parametrize('device, message', [
    ("<serial type='file'><source path='/etc/cron.d/x'/></serial>",
     b'allowed_chardev_types'),
    ("<hostdev mode='subsystem' type='pci'><source><address domain='0' "
     "bus='1' slot='0' function='0'/></source></hostdev>",
     b'PCI passthrough'),
    ("<disk type='file' device='disk'><source file='/etc/shadow'/>"
     "<target dev='hdb'/></disk>", b'allowed_host_paths'),
])
def test_whole_domain_policy_applies_at_prepare(env, device, message):
    # A restricted domain edited after rendering (virsh edit, another
    # client) reaches libxl only through the same policy.
    xml = base.add_device(restricted_xml(env), device)
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert message in proc.stderr


@pytest.mark.parametrize('name', ['lo', 'vif7.0'])
def test_nic_named_after_dom0_or_libxl_is_refused_at_prepare(env, name):
    # lo exists in every dom0: with libxl, the failed rename would be
    # followed by "vif-bridge offline" on it (ip link set dev lo down).
    before = subprocess.run(['ip', '-o', 'link'], capture_output=True,
                            text=True).stdout
    xml = base.edit(restricted_xml(env), lambda root: root.find(
        'devices/interface').append(etree.fromstring(
            "<target dev='%s'/>" % name)))
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2, proc.stderr
    assert ("<target dev='%s'>" % name).encode() in proc.stderr
    assert b'libxl' in proc.stderr and b'Remedy:' in proc.stderr
    after = subprocess.run(['ip', '-o', 'link'], capture_output=True,
                           text=True).stdout

    def ours(listing):
        # Other tests may add and remove their own taps meanwhile.
        return [line for line in listing.splitlines()
                if not re.match(r'^[0-9]+: vif[0-9]+\.[0-9]+-emu[:@]',
                                line)]
    assert ours(before) == ours(after)
    assert ': %s:' % name not in after or name == 'lo'


def test_nic_on_an_unlisted_bridge_is_refused_at_prepare(env):
    xml = base.edit(restricted_xml(env), lambda root: root.find(
        'devices/interface/source').set('bridge', 'mgmtbr'))
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b"bridge 'mgmtbr'" in proc.stderr
    assert b'allowed_bridges' in proc.stderr


def test_network_resolved_at_prepare_from_libvirts_records(env, tmp_path):
    # libvirtd's hook must not call back into libvirt: the network is
    # read from the live definition libvirt's network driver keeps.
    state = tmp_path / 'network-state'
    state.mkdir()
    env.write_config(allowed_networks='default,sriov',
                     libvirt_network_state_dir=str(state))
    (state / 'sriov.xml').write_text(
        "<networkstatus><network><name>sriov</name>"
        "<forward mode='hostdev' managed='yes'><pf dev='eth9'/></forward>"
        "</network></networkstatus>")
    xml = base.edit(restricted_xml(env), lambda root: (
        root.find('devices/interface').set('type', 'network'),
        root.find('devices/interface/source').attrib.clear(),
        root.find('devices/interface/source').set('network', 'sriov')))
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b'forward mode hostdev' in proc.stderr
    assert b'PCI passthrough' in proc.stderr
    xml = base.edit(xml, lambda root: root.find(
        'devices/interface/source').set('network', 'default'))
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b'no active network' in proc.stderr


def test_forged_record_cannot_carry_arguments_past_the_policy(env):
    # Arguments listed in the record were once taken as ours and not
    # checked: a redefine with the same uuid could pass -incoming exec:.
    xml = restricted_xml(env)
    dom = domain.parse(xml, 1 << 20)
    extra = ['-incoming', 'exec:id > %s/pwned' % env.tmp]
    record = dom.metadata(restrict.RECORD_TAG)
    holder = record.find(restrict.META + 'args')
    for value in extra:
        etree.SubElement(holder, restrict.META + 'arg', value=value)
    dom.set_xen_args(dom.xen_args()[:len(holder) - 2] + extra
                     + dom.xen_args()[len(holder) - 2:])
    proc = call_hook(env, 'prepare', 'begin', dom.to_string())
    assert proc.returncode == 2
    assert b'record lists arguments this product never writes' in \
        proc.stderr


def test_dropped_sandbox_is_refused(env):
    # sandbox = when-supported and a syntax given: the hook writes
    # -sandbox; a client editing both record and arguments may not drop
    # it (the record is then still one this product could write).
    xml = restricted_xml(env)
    dom = domain.parse(xml, 1 << 20)
    args = dom.xen_args()
    at = args.index('-sandbox')
    del args[at:at + 2]
    dom.set_xen_args(args)
    holder = dom.metadata(restrict.RECORD_TAG).find(restrict.META + 'args')
    for node in list(holder):
        if node.get('value') in ('-sandbox', restrict.SANDBOX_POLICY):
            holder.remove(node)
    proc = call_hook(env, 'prepare', 'begin', dom.to_string())
    assert proc.returncode == 2
    assert b'has no -sandbox, but its device model has seccomp' in \
        proc.stderr


def test_pv_guest_is_checked_at_prepare(env):
    assert call_hook(env, 'prepare', 'begin',
                     base.fixture('pv.xml')).returncode == 0
    qdisk = base.fixture('pv.xml').replace("<driver name='phy'/>",
                                           "<driver name='qemu'/>")
    proc = call_hook(env, 'prepare', 'begin', qdisk)
    assert proc.returncode == 2 and b'pv_dom0_qemu' in proc.stderr
    args = base.edit(base.fixture('pvh.xml'), lambda root: root.append(
        etree.fromstring('<xen:commandline xmlns:xen="%s"><xen:arg '
                         'value="-incoming"/><xen:arg value="exec:id"/>'
                         '</xen:commandline>' % domain.XEN_NS)))
    proc = call_hook(env, 'prepare', 'begin', args)
    assert proc.returncode == 2 and b'-incoming' in proc.stderr


def test_copied_record_is_refused(env):
    # Nor may it reap the device model of the domain it was copied from.
    other = hooks.Instance('0b7a9c2e-5d1f-4a53-9e57-2f7f3c1d9a10', 'acme')
    xml = restricted_xml(env, other, base.edit(
        base.fixture('hvm.xml'),
        lambda root: setattr(root.find('uuid'), 'text', other.uuid)))
    copied = base.edit(xml, lambda root: setattr(
        root.find('uuid'), 'text', ACME.uuid))
    proc = call_hook(env, 'prepare', 'begin', copied)
    assert proc.returncode == 2
    assert b'is not leased to it (no lease)' in proc.stderr


def test_a_record_claiming_another_tenant_is_refused(env, tmp_path):
    """{tenant} is expanded with the tenant the domain's record names,
    which a libvirt client can edit (virsh edit): the start is refused
    unless the lease of the record's uid is that tenant's, so acme's
    domain cannot reach globex's files by claiming to be globex's.
    """
    tenants = tmp_path / 'tenants'
    (tenants / 'globex').mkdir(parents=True)
    data = tenants / 'globex' / 'data.img'
    data.write_bytes(b'\0' * (1 << 20))
    env.write_config(
        allowed_host_paths='%s,%s/{tenant}' % (base.images_dir(), tenants),
        writable_shared_host_paths=base.images_dir())
    dom = domain.parse(restricted_xml(env), 1 << 20)
    dom.root.find('devices').append(etree.fromstring(
        "<disk type='file' device='disk'><driver name='phy'/>"
        "<source file='%s'/><target dev='xvdc' bus='xen'/></disk>" % data))
    proc = call_hook(env, 'prepare', 'begin', dom.to_string())
    assert proc.returncode == 2 and b'not under' in proc.stderr, proc.stderr
    record = dom.root.find('metadata/%s' % restrict.RECORD_TAG)
    record.find('{%s}tenant' % restrict.META_NS).text = 'globex'
    proc = call_hook(env, 'prepare', 'begin', dom.to_string())
    assert proc.returncode == 2, proc.stderr
    assert b"claims tenant 'globex'" in proc.stderr
    assert b"leased to tenant 'acme'" in proc.stderr


def test_held_domain_is_refused(env):
    xml = restricted_xml(env)
    with leases.LeaseStore(env.settings().lease_db) as store:
        store.hold(ACME.uuid, 'uid in conflict with a running domain')
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b'it is held: uid in conflict' in proc.stderr


def test_launcher_required_when_configured(env):
    xml = restricted_xml(env)
    env.write_config(launcher='/usr/local/bin/xen-dm-restrict-launch',
                     network_namespace='except-vnc')
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b'not the configured launcher' in proc.stderr


def test_vnc_console_relay_failure_stops_the_start(env):
    # At "started begin" the hook relays the console libvirt reports; if
    # it cannot (here: no relay user), libvirtd destroys the domain.
    xml = restricted_xml(env)
    env.write_config(launcher='/usr/local/bin/xen-dm-restrict-launch',
                     console_relay_user='xdr-no-such-console-user')
    live = base.edit(xml, lambda root: root.find('devices/graphics').set(
        'port', '5999'))
    proc = call_hook(env, 'started', 'begin', live)
    assert proc.returncode == 2, proc.stderr
    assert b'VNC console cannot be relayed' in proc.stderr
    assert b'useradd' in proc.stderr


def test_a_console_port_someone_else_listens_on_stops_the_start(env):
    # Root binds the port libvirt reports before anything else: a
    # listener already there (a local user's, another domain's console
    # named as a fixed port, a dom0 service) is a clear refusal at
    # "started begin", and libvirtd destroys the domain.
    hostenv.require_root()
    xml = restricted_xml(env)
    relay_user = hostenv.unique_name('xdr-con-')
    env.add_user(relay_user, env.first + 600)
    env.write_config(launcher='/usr/local/bin/xen-dm-restrict-launch',
                     console_relay_user=relay_user)
    squatter = socket.socket()
    squatter.bind(('127.0.0.1', 0))
    squatter.listen(1)
    port = squatter.getsockname()[1]
    live = base.edit(xml, lambda root: root.find('devices/graphics').set(
        'port', str(port)))
    try:
        proc = call_hook(env, 'started', 'begin', live)
    finally:
        squatter.close()
    assert proc.returncode == 2, proc.stderr
    assert b'VNC console cannot be relayed' in proc.stderr
    assert b'another process already listens' in proc.stderr
    assert b'autoport' in proc.stderr


def test_sandbox_required_when_configured(env):
    env.write_config(sandbox='off')
    xml = restricted_xml(env)
    env.write_config(sandbox='required')
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b'has no -sandbox' in proc.stderr


def _sleeper(uid: int) -> subprocess.Popen:
    return subprocess.Popen(['sleep', '60'], user=uid, group=uid)


def test_start_creates_the_chroot_and_reaps_the_uid(env):
    hostenv.require_root()
    xml = restricted_xml(env)
    settings = env.settings()
    uid = restrict.read_record(domain.parse(xml, 1 << 20)).uid
    leftover = _sleeper(uid)
    bystander = _sleeper(env.globex[0])
    env.touched.add(env.globex[0])
    try:
        proc = call_hook(env, 'prepare', 'begin', xml)
        assert proc.returncode == 0, proc.stderr
        assert leftover.wait(timeout=5) == -signal.SIGKILL
        assert bystander.poll() is None
        st = os.lstat(settings.chroot_dir(uid))
        assert (st.st_uid, st.st_mode & 0o7777) == (0, 0)
        assert b'uid %d reaped: 1 process(es) found running' % uid in (
            proc.stderr)
        assert b'still ran processes %d before the reap' % leftover.pid in (
            proc.stderr)
        assert base.HVM_UUID.encode() in proc.stderr
    finally:
        for sleeper in (leftover, bystander):
            sleeper.kill()
            sleeper.wait()


@pytest.mark.parametrize('operation', ['stopped', 'release'])
def test_stop_reaps_the_uid(env, operation):
    hostenv.require_root()
    xml = restricted_xml(env)
    uid = restrict.read_record(domain.parse(xml, 1 << 20)).uid
    leftover = _sleeper(uid)
    try:
        proc = call_hook(env, operation, 'end', xml)
        assert proc.returncode == 0, proc.stderr
        assert leftover.wait(timeout=5) == -signal.SIGKILL
    finally:
        leftover.kill()
        leftover.wait()


def test_stop_after_release_does_not_reap_a_reused_uid(env):
    hostenv.require_root()
    xml = restricted_xml(env)
    uid = restrict.read_record(domain.parse(xml, 1 << 20)).uid
    with leases.LeaseStore(env.settings().lease_db) as store:
        store.release(ACME.uuid)
    other = _sleeper(uid)
    try:
        proc = call_hook(env, 'stopped', 'end', xml)
        assert proc.returncode == 0, proc.stderr
        assert b'no longer leased to it' in proc.stderr
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_start_refused_when_reaping_is_impossible(env):
    hostenv.require_root()
    xml = restricted_xml(env)
    env.reaper_name = ''
    env.write_config()
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b'reaper_user' in proc.stderr and b'does not exist' in proc.stderr


def test_hook_never_loads_libvirt(env):
    code = ('import sys\n'
            'from xen_dm_restrict_plugin.cmd import libvirt_hook\n'
            'rc = libvirt_hook.main(["d", "prepare", "begin", "-"])\n'
            'assert "libvirt" not in sys.modules, "libvirt imported"\n'
            'sys.exit(rc)\n')
    proc = subprocess.run([sys.executable, '-c', code],
                          input=base.fixture('pv.xml').encode(),
                          capture_output=True, env=env.environ(), timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_installed_hooks_are_found(tmp_path):
    hooks_dir = tmp_path / 'hooks'
    (hooks_dir / 'libxl.d').mkdir(parents=True)
    script = hooks_dir / 'libxl.d' / '50-dm-restrict'
    script.write_text('#!/usr/bin/python3\nfrom xen_dm_restrict_plugin.'
                      'cmd.libvirt_hook import main\n')
    assert preflight.installed_hooks(str(hooks_dir)) == []
    script.chmod(0o755)
    other = hooks_dir / 'libxl'
    other.write_text('#!/bin/sh\nexit 0\n')
    other.chmod(0o755)
    assert preflight.installed_hooks(str(hooks_dir)) == [str(script)]


def test_account_created_inside_a_lease_blocks_the_start(env):
    # An account made later with the leased uid would be the device
    # model's identity: its files, its processes.
    hostenv.require_root()
    xml = restricted_xml(env)
    uid = restrict.read_record(domain.parse(xml, 1 << 20)).uid
    late = hostenv.unique_name('xdr-late-')
    env.add_user(late, uid)
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b'is now the uid of user xdr-late-' in proc.stderr
    subprocess.run(['userdel', late], check=True, capture_output=True)
    env.users.remove(late)
    assert call_hook(env, 'prepare', 'begin', xml).returncode == 0


@pytest.mark.parametrize('operation', [('reconnect', 'begin'),
                                       ('start', 'begin')])
def test_operations_not_acted_on_import_nothing(env, operation):
    # libvirtd runs the hook for every operation, and a failure at
    # "started begin" destroys the domain: ignored calls must be cheap.
    code = ('import sys; from xen_dm_restrict_plugin.cmd import '
            'libvirt_hook as h; rc = h.main(["vm", "%s", "%s", "-"]); '
            'print(rc, sorted(m for m in ("oslo_config", "lxml", '
            '"sqlite3") if m in sys.modules))' % operation)
    proc = subprocess.run([sys.executable, '-c', code],
                          input=base.fixture('hvm.xml').encode(),
                          capture_output=True, env=env.environ(), timeout=30)
    assert proc.stdout.decode().split() == ['0', '[]'], proc.stderr


# The settings snapshot (launcher/settings.py): the hook reads it instead
# of loading oslo.config, while the configuration file holds the bytes it
# was made from and root alone can change it.

def _snapshot(env) -> str:
    return env.environ()[launch_settings.PATH_ENV]


def _chroot_of(env, xml) -> str:
    uid = restrict.read_record(domain.parse(xml, 1 << 20)).uid
    return env.settings().chroot_dir(uid)


def test_a_start_writes_the_snapshot_and_the_next_reads_it(env):
    hostenv.require_root()
    xml = restricted_xml(env)
    assert not os.path.exists(_snapshot(env))
    assert call_hook(env, 'prepare', 'begin', xml).returncode == 0
    st = os.stat(_snapshot(env))
    assert (st.st_uid, st.st_mode & 0o022) == (0, 0)
    with open(env.config, 'rb') as handle:
        made_from = [env.config, handle.read()]
    assert marshal.loads(open(_snapshot(env), 'rb').read())[
        'config'] == made_from
    # The next call imports neither oslo.config nor stevedore.
    proc = subprocess.run([sys.executable, '-X', 'importtime'] + HOOK[1:] + [
        'fixture-hvm', 'prepare', 'begin', '-'], input=xml.encode(),
        capture_output=True, env=env.environ(), timeout=30)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split(b'|')[-1].strip() for line in
                proc.stderr.splitlines() if line.startswith(b'import time')}
    assert b'xen_dm_restrict_plugin.daemon_hook.hook' in imported
    assert not {b'oslo_config', b'stevedore', b'rfc3986',
                b'netaddr'} & imported


def test_a_changed_configuration_is_read_again(env):
    # The same size and modification time: the bytes tell them apart.
    hostenv.require_root()
    plain = base.fixture('hvm.xml')
    assert call_hook(env, 'prepare', 'begin', plain).returncode == 2
    assert os.path.exists(_snapshot(env))
    with open(env.config, 'rb') as handle:
        before = handle.read()
    st = os.stat(env.config)
    line = b'allowed_networks = default\n'
    edit = b'enforce = 0\n'
    after = before.replace(line, edit + b'#' * (len(line) - len(edit) - 1)
                           + b'\n')
    assert len(after) == len(before) and after != before
    with open(env.config, 'r+b') as handle:
        handle.write(after)
    os.utime(env.config, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = call_hook(env, 'prepare', 'begin', plain)
    assert proc.returncode == 0, proc.stderr
    assert b'allowed unrestricted (enforce is off)' in proc.stderr


def test_an_account_change_is_seen_without_a_configuration_change(env):
    hostenv.require_root()
    xml = restricted_xml(env)
    assert call_hook(env, 'prepare', 'begin', xml).returncode == 0
    assert os.path.exists(_snapshot(env))
    subprocess.run(['userdel', env.reaper_name], check=True,
                   capture_output=True)
    env.users.remove(env.reaper_name)
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b'reaper_user' in proc.stderr and b'does not exist' in proc.stderr


@pytest.mark.parametrize('spoil', ['mode', 'owner', 'directory', 'symlink'])
def test_an_untrusted_snapshot_refuses_and_changes_nothing(env, spoil):
    hostenv.require_root()
    xml = restricted_xml(env)
    assert call_hook(env, 'prepare', 'begin', xml).returncode == 0
    chroot = _chroot_of(env, xml)
    os.rmdir(chroot)
    path = _snapshot(env)
    if spoil == 'mode':
        os.chmod(path, 0o666)
    elif spoil == 'owner':
        os.chown(path, env.first + 500, -1)  # the test's reaper user
    elif spoil == 'directory':
        os.chmod(os.path.dirname(path), 0o777)
    else:
        os.rename(path, path + '.real')
        os.symlink(path + '.real', path)
    with open(path, 'rb') as handle:
        before = handle.read()
    sleeper = _sleeper(restrict.read_record(domain.parse(xml, 1 << 20)).uid)
    try:
        proc = call_hook(env, 'prepare', 'begin', xml)
        assert proc.returncode == 2
        assert b'refused: settings snapshot %s: ' % path.encode() in (
            proc.stderr)
        assert b'Remedy: remove it' in proc.stderr
        assert b'xen-dm-restrict install-hook' in proc.stderr
        # Nothing happened: no chroot, no reap, the snapshot as it was.
        assert not os.path.exists(chroot)
        assert sleeper.poll() is None
        with open(path, 'rb') as handle:
            assert handle.read() == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_missing_snapshot_of_a_bad_configuration_refuses(env):
    hostenv.require_root()
    xml = restricted_xml(env)
    chroot = _chroot_of(env, xml)
    with open(env.config, 'a') as handle:
        handle.write('reaper_usr = nobody\n')
    proc = call_hook(env, 'prepare', 'begin', xml)
    assert proc.returncode == 2
    assert b'reaper_usr is not an option of [dm_restrict] (did you mean ' \
        b'reaper_user?)' in proc.stderr
    assert not os.path.exists(_snapshot(env))
    assert not os.path.exists(chroot)


def _install_hook(env, path, *extra):
    return subprocess.run(
        hostenv.module('xen_dm_restrict_plugin.cmd.cli')
        + ['install-hook', path] + list(extra), env=env.environ(),
        capture_output=True, text=True, timeout=60)


def test_install_hook_writes_the_hook_and_its_snapshot(env):
    hostenv.require_root()
    path = os.path.join(env.tmp, 'libxl')
    made = _install_hook(env, path)
    assert made.returncode == 0, made.stderr
    assert os.stat(path).st_mode & 0o7777 == 0o755
    with open(_snapshot(env), 'rb') as handle:
        data = marshal.loads(handle.read())
    with open(env.config, 'rb') as handle:
        assert data['config'] == [env.config, handle.read()]
    # An operation the hook ignores: exit 0 without reading stdin (libvirt
    # ignores the EPIPE), so a stdin that is never written nor closed
    # does not hold it.
    ignored = subprocess.Popen([path, 'vm', 'start', 'begin', '-'],
                               stdin=subprocess.PIPE, env={})
    try:
        assert ignored.wait(timeout=10) == 0
    finally:
        ignored.stdin.close()
    # One it acts on runs the hook.
    xml = restricted_xml(env)
    proc = subprocess.run([path, 'fixture-hvm', 'prepare', 'begin', '-'],
                          input=xml.encode(), capture_output=True,
                          env=env.environ(), timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert b'start of domain fixture-hvm' in proc.stderr


def test_install_hook_refuses_a_bad_configuration_and_writes_nothing(env):
    hostenv.require_root()
    path = os.path.join(env.tmp, 'libxl')
    with open(env.config, 'a') as handle:
        handle.write('[dm_restrcit]\n')
    made = _install_hook(env, path)
    assert made.returncode == 2
    assert 'did you mean [dm_restrict]?' in made.stderr
    assert not os.path.exists(path)
    assert not os.path.exists(_snapshot(env))


def test_install_hook_refuses_a_configuration_the_hook_does_not_read(
        env, tmp_path):
    hostenv.require_root()
    other = tmp_path / 'other.conf'
    other.write_text('[dm_restrict]\n')
    made = _install_hook(env, os.path.join(env.tmp, 'libxl'),
                         '--config-file', str(other))
    assert made.returncode == 2
    assert 'the hook reads %s' % env.config in made.stderr
