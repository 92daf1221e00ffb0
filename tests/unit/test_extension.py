"""The dm_restrict hook: restrict, stay idempotent, refuse cleanly."""

import os

from lxml import etree
import pytest

from tests import base
from xen_dm_restrict_plugin.core import domain
from xen_dm_restrict_plugin.core import qemu_args
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import operations

ACME = hooks.Instance(base.HVM_UUID, 'acme')


@pytest.fixture
def make_hook(tmp_path):
    made = []

    def make(**overrides):
        conf = base.make_conf(tmp_path, **overrides)
        hook = extension.DmRestrictHook(conf)
        made.append(hook)
        return hook
    yield make
    for hook in made:
        hook.close()


@pytest.fixture
def hook(make_hook):
    return make_hook()


def _leases(hook):
    if not os.path.exists(hook.settings.lease_db):
        return []
    return hook.store.list()


def test_hvm_guest_is_restricted(hook):
    out = hook.prepare(base.fixture('hvm.xml'), ACME)
    dom = domain.parse(out, 1 << 20)
    record = restrict.read_record(dom)
    [lease] = hook.store.list()
    assert (lease.uuid, lease.tenant) == (base.HVM_UUID, 'acme')
    assert lease.uid in hook.settings.range_for('acme')
    assert record.uid == lease.uid and record.gid == lease.uid
    assert record.tenant == 'acme'
    chroot = hook.settings.chroot_dir(lease.uid)
    assert dom.xen_args() == [
        '-xen-domid-restrict', '-runas', '%d:%d' % (lease.uid, lease.uid),
        '-chroot', chroot, '-sandbox', restrict.SANDBOX_POLICY]
    assert list(record.args) == dom.xen_args()
    base.assert_schema_valid(out)


def test_everything_else_is_kept(hook):
    source = domain.parse(base.fixture('hvm.xml'), 1 << 20)
    out = domain.parse(hook.prepare(base.fixture('hvm.xml'), ACME), 1 << 20)
    for node in (out.root.find('metadata'),
                 out.root.find('{%s}commandline' % domain.XEN_NS)):
        out.root.remove(node)
    assert out.root.attrib == source.root.attrib
    canon = [[etree.tostring(child, method='c14n', exclusive=True)
              for child in d.root] for d in (source, out)]
    assert canon[0] == canon[1]


def test_prepare_is_idempotent(hook):
    once = hook.prepare(base.fixture('hvm.xml'), ACME)
    twice = hook.prepare(once, ACME)
    assert twice == once
    assert len(hook.store.list()) == 1


def test_uids_are_per_instance_and_stable(hook):
    first = hook.prepare(base.fixture('hvm.xml'), ACME)
    other_uuid = '11111111-2222-4333-8444-555555555555'
    other = hook.prepare(base.fixture('hvm.xml').replace(
        base.HVM_UUID, other_uuid), hooks.Instance(other_uuid, 'acme'))
    uid = {x: restrict.read_record(domain.parse(x, 1 << 20)).uid
           for x in (first, other)}
    assert uid[first] != uid[other]
    again = hook.prepare(base.fixture('hvm.xml'), ACME)
    assert restrict.read_record(domain.parse(again, 1 << 20)).uid == \
        uid[first]


def test_tenant_ranges_are_respected(hook):
    globex_uuid = '22222222-2222-4333-8444-555555555555'
    out = hook.prepare(base.fixture('hvm.xml').replace(
        base.HVM_UUID, globex_uuid), hooks.Instance(globex_uuid, 'globex'))
    uid = restrict.read_record(domain.parse(out, 1 << 20)).uid
    assert 201000 <= uid <= 201099


def test_foreign_arguments_are_kept_behind_ours(make_hook):
    hook = make_hook(allowed_qemu_options=['d', 'no-hpet'])
    xml = base.edit(base.fixture('hvm.xml'), lambda root: None)
    dom = domain.parse(xml, 1 << 20)
    dom.set_xen_args(['-d', 'guest_errors', '-xen-domid-restrict',
                      '-no-hpet'])
    out = domain.parse(hook.prepare(dom.to_string(), ACME), 1 << 20)
    args = out.xen_args()
    assert args[0] == '-xen-domid-restrict'
    assert args[-3:] == ['-d', 'guest_errors', '-no-hpet']
    assert args.count('-xen-domid-restrict') == 1


def test_run_with_syntax_and_fixed_gid(make_hook):
    hook = make_hook(device_model_syntax='run-with', device_model_gid=64000,
                     sandbox='off')
    out = domain.parse(hook.prepare(base.fixture('hvm.xml'), ACME), 1 << 20)
    uid = hook.store.get(base.HVM_UUID).uid
    assert out.xen_args() == [
        '-xen-domid-restrict', '-run-with',
        'user=%d:64000,chroot=%s' % (uid, hook.settings.chroot_dir(uid))]
    base.assert_schema_valid(out.to_string())


def test_launcher_becomes_the_emulator(make_hook):
    hook = make_hook(launcher='/usr/bin/xen-dm-restrict-launch',
                     network_namespace='except-vnc')
    out = domain.parse(hook.prepare(base.fixture('hvm.xml'), ACME), 1 << 20)
    assert out.emulator == '/usr/bin/xen-dm-restrict-launch'


def test_vnc_is_allowed_when_the_launcher_cuts_the_network(make_hook):
    # QEMU listens on a unix socket in its chroot; libvirtd's hook relays
    # it from the address and port libvirt reports (console.relay).
    hook = make_hook(launcher='/usr/bin/xen-dm-restrict-launch')
    hook.prepare(base.fixture('hvm.xml'), ACME)
    make_hook().prepare(base.fixture('hvm.xml'), ACME)


def test_missing_uuid_is_filled_in(hook):
    xml = base.edit(base.fixture('hvm.xml'),
                    lambda root: root.remove(root.find('uuid')))
    out = domain.parse(hook.prepare(xml, ACME), 1 << 20)
    assert out.uuid == base.HVM_UUID
    base.assert_schema_valid(out.to_string())


def _same(xml):
    """``xml`` as the hook writes it back: as checked, without comments."""
    return domain.parse(xml, 1 << 20).to_string()


@pytest.mark.parametrize('name', ['pv.xml', 'pvh.xml'])
def test_guests_without_device_model_pass_unchanged(hook, name):
    xml = base.fixture(name)
    instance = hooks.Instance(domain.parse(xml, 1 << 20).uuid, 'acme')
    assert hook.prepare(xml, instance) == _same(xml)
    assert not os.path.exists(hook.settings.lease_db)


def test_stub_domain_emulators_are_refused_at_load(make_hook):
    # libvirt never asks libxl for a stub domain: a "stub-domain"
    # emulator would run in dom0 as an unrestricted root device model.
    with pytest.raises(exception.ConfigError) as err:
        make_hook(stubdom_emulators=['/usr/lib/xen/bin/stubdom-dm'])
    assert err.value.subject == 'stubdom_emulators'


def test_undeclared_emulator_is_refused_without_a_lease(hook):
    xml = base.add_device(base.fixture('hvm.xml'),
                          '<emulator>/srv/tenant/stubdom-dm</emulator>')
    with pytest.raises(exception.FeatureRefused) as err:
        hook.prepare(xml, ACME)
    assert '/srv/tenant/stubdom-dm' in str(err.value)
    assert not os.path.exists(hook.settings.lease_db)


REFUSED = [
    ('pci', lambda: base.add_device(base.fixture('hvm.xml'),
                                    "<hostdev mode='subsystem' type='pci'>"
                                    "<source><address domain='0' bus='1' "
                                    "slot='0' function='0'/></source>"
                                    "</hostdev>"),
     exception.FeatureRefused),
    ('traditional', lambda: base.add_device(
        base.fixture('hvm.xml'), '<emulator>/usr/bin/qemu-dm</emulator>'),
     exception.FeatureRefused),
    ('runas', lambda: base.fixture('hvm.xml').replace(
        '</devices>', '</devices><xen:commandline xmlns:xen="%s">'
        '<xen:arg value="-runas"/><xen:arg value="0:0"/>'
        '</xen:commandline>' % domain.XEN_NS), exception.FeatureRefused),
    ('malformed', lambda: base.fixture('hvm.xml')[:-20],
     exception.InvalidDomainXML),
    ('entity', lambda: '<!DOCTYPE d [<!ENTITY e "x">]>'
     + base.fixture('hvm.xml').replace('fixture-hvm', '&e;'),
     exception.InvalidDomainXML),
    ('wrong uuid', lambda: base.fixture('hvm.xml').replace(
        base.HVM_UUID, '99999999-2222-4333-8444-555555555555'),
     exception.InvalidDomainXML),
    ('incoming exec', lambda: base.fixture('hvm.xml').replace(
        '</devices>', '</devices><xen:commandline xmlns:xen="%s">'
        '<xen:arg value="-incoming"/><xen:arg value="exec:id"/>'
        '</xen:commandline>' % domain.XEN_NS), exception.FeatureRefused),
    ('serial file', lambda: base.add_device(
        base.fixture('hvm.xml'), "<serial type='file'><source "
        "path='/etc/cron.d/x'/></serial>"), exception.FeatureRefused),
    ('kernel', lambda: base.fixture('hvm.xml').replace(
        '</os>', '<kernel>/etc/shadow</kernel></os>'),
     exception.FeatureRefused),
    ('qdisk tap qcow2', lambda: base.fixture('hvm.xml').replace(
        "<driver name='phy'/>", "<driver name='tap' type='qcow2'/>"),
     exception.FeatureRefused),
    ('namespaced driver', lambda: base.fixture('hvm.xml').replace(
        "<driver name='phy'/>", "<driver xmlns:a='urn:a' a:name='qemu'/>"),
     exception.FeatureRefused),
    ('interface script', lambda: base.add_device(
        base.fixture('hvm.xml'), "<interface type='bridge'><source "
        "bridge='xenbr0'/><script path='/tmp/x.sh'/></interface>"),
     exception.FeatureRefused),
    ('pv framebuffer', lambda: base.add_device(
        base.fixture('pv.xml').replace(base.PV_UUID, base.HVM_UUID),
        "<graphics type='vnc' listen='127.0.0.1'/>"),
     exception.FeatureRefused),
]


@pytest.mark.parametrize('label,make_xml,error', REFUSED,
                         ids=[r[0] for r in REFUSED])
def test_refusals_leave_nothing_behind(hook, label, make_xml, error):
    with pytest.raises(error):
        hook.prepare(make_xml(), ACME)
    assert not os.path.exists(hook.settings.lease_db)


def test_unmapped_tenant_is_refused_without_a_lease(hook):
    with pytest.raises(exception.Refused) as err:
        hook.prepare(base.fixture('hvm.xml'),
                     hooks.Instance(base.HVM_UUID, 'initech'))
    assert 'initech' in str(err.value)
    assert not os.path.exists(hook.settings.lease_db)


def test_record_of_another_tenant_is_refused(hook):
    out = hook.prepare(base.fixture('hvm.xml'), ACME)
    with pytest.raises(exception.InvalidDomainXML) as err:
        hook.prepare(out, hooks.Instance(base.HVM_UUID, 'globex'))
    assert "tenant 'acme'" in str(err.value)


def test_tampered_restriction_is_refused(hook):
    out = hook.prepare(base.fixture('hvm.xml'), ACME)
    dom = domain.parse(out, 1 << 20)
    args = dom.xen_args()
    args[args.index('-runas') + 1] = '0:0'
    dom.set_xen_args(args)
    with pytest.raises(exception.FeatureRefused) as err:
        hook.prepare(dom.to_string(), ACME)
    assert '-runas' in str(err.value)


def test_restriction_options_cover_what_we_inject(hook):
    out = domain.parse(hook.prepare(base.fixture('hvm.xml'), ACME), 1 << 20)
    names = {qemu_args.option_name(a) for a in out.xen_args()} - {None}
    assert names <= qemu_args.RESTRICTION_OPTIONS


@pytest.mark.parametrize('operation', [
    operations.MIGRATE, operations.MIGRATE_OFFLINE, operations.SAVE,
    operations.RESTORE, operations.MANAGED_SAVE, operations.SNAPSHOT_MEMORY,
    operations.REDEFINE, 'a-future-libvirt-call'])
def test_check_operation_refuses_what_restriction_cannot_survive(
        hook, operation):
    restricted = hook.prepare(base.fixture('hvm.xml'), ACME)
    with pytest.raises(exception.OperationRefused) as err:
        hook.check_operation(restricted, ACME, operation)
    assert operation in str(err.value) and 'fixture-hvm' in str(err.value)
    pv = base.fixture('pv.xml')
    hook.check_operation(pv, hooks.Instance(domain.parse(pv, 1 << 20).uuid,
                                            'acme'), operation)


@pytest.mark.parametrize('operation', [
    operations.START, operations.SHUTDOWN, operations.DESTROY,
    operations.REBOOT, operations.UNDEFINE, operations.SNAPSHOT_DISK])
def test_check_operation_allows_ordinary_lifecycle(hook, operation):
    restricted = hook.prepare(base.fixture('hvm.xml'), ACME)
    hook.check_operation(restricted, ACME, operation)


@pytest.mark.parametrize('operation,device,live,refused', [
    (operations.UPDATE_DEVICE, "<disk device='cdrom'><source file='/a.iso'/>"
     "<target dev='hdc'/></disk>", True, 'cdrom-media-change'),
    (operations.UPDATE_DEVICE, "<disk device='cdrom'><source "
     "file='@IMAGES@/installer.iso'/><target dev='hdc'/></disk>", False,
     None),
    (operations.ATTACH_DEVICE, "<hostdev mode='subsystem' type='pci'>"
     "<source><address domain='0' bus='1' slot='0' function='0'/></source>"
     "</hostdev>", False, 'PCI passthrough'),
    (operations.ATTACH_DEVICE, "<disk type='file' device='disk'><driver "
     "name='qemu'/><source file='/d.img'/><target dev='hdb'/></disk>", True,
     'qdisk'),
    (operations.ATTACH_DEVICE, "<disk type='file' device='disk'><source "
     "file='@IMAGES@/root-disk.img'/><target dev='hdb'/></disk>", True,
     None),
    (operations.ATTACH_DEVICE, "<disk type='file' device='disk'><source "
     "file='/etc/shadow'/><target dev='hdb'/></disk>", True,
     'allowed_host_paths'),
    (operations.DETACH_DEVICE, "<disk type='block' device='disk'><source "
     "dev='/dev/vg0/x'/><target dev='hdb'/></disk>", True, None),
])
def test_check_operation_on_devices(hook, operation, device, live, refused):
    device = device.replace(base.IMAGES_TOKEN, base.images_dir())
    restricted = hook.prepare(base.fixture('hvm.xml'), ACME)
    if refused is None:
        hook.check_operation(restricted, ACME, operation, device, live)
        return
    with pytest.raises(exception.OperationRefused) as err:
        hook.check_operation(restricted, ACME, operation, device, live)
    assert refused in str(err.value)


def test_no_lease_when_the_uid_could_not_be_reaped(make_hook):
    hook = make_hook(reap_device_models=True,
                     reaper_user='xdr-no-such-reaper-user')
    with pytest.raises(exception.CapabilityMissing) as err:
        hook.prepare(base.fixture('hvm.xml'), ACME)
    assert 'reap' in str(err.value)
    assert not os.path.exists(hook.settings.lease_db)


def test_pv_guest_with_a_dom0_qemu_backend_is_logged(make_hook, caplog):
    hook = make_hook(pv_dom0_qemu='allow')
    xml = base.fixture('pv.xml').replace("<driver name='phy'/>",
                                         "<driver name='qemu'/>")
    instance = hooks.Instance(domain.parse(xml, 1 << 20).uuid, 'acme')
    with caplog.at_level('WARNING'):
        assert hook.prepare(xml, instance) == _same(xml)
    assert "<disk type='file' device='disk'> (target xvda)" in caplog.text
    assert 'unrestricted' in caplog.text and instance.uuid in caplog.text


def test_pv_guest_with_a_dom0_qemu_backend_is_refused(hook):
    xml = base.fixture('pv.xml').replace("<driver name='phy'/>",
                                         "<driver name='qemu'/>")
    instance = hooks.Instance(domain.parse(xml, 1 << 20).uuid, 'acme')
    with pytest.raises(exception.FeatureRefused) as err:
        hook.prepare(xml, instance)
    assert 'pv_dom0_qemu' in str(err.value)
    assert not os.path.exists(hook.settings.lease_db)


@pytest.mark.parametrize('device', [
    "<disk type='block' device='disk'><driver name='phy'/><source "
    "dev='/dev/sda'/><target dev='xvdb'/></disk>",
    "<disk type='file' device='cdrom'><source file='/etc/shadow'/><target "
    "dev='xvdc'/></disk>",
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    "<source file='@IMAGES@/root-disk.img'/><target dev='xvdb'/></disk>",
    "<interface type='ethernet'><script path='/tmp/evil.sh'/></interface>",
    "<hostdev mode='subsystem' type='pci'><source><address domain='0' "
    "bus='1' slot='0' function='0'/></source></hostdev>",
])
@pytest.mark.parametrize('operation', [operations.ATTACH_DEVICE,
                                       operations.UPDATE_DEVICE])
def test_devices_of_pv_guests_are_checked_too(hook, device, operation):
    # libvirt hot-plugs them as root, without the daemon hook.
    xml = base.fixture('pv.xml')
    instance = hooks.Instance(domain.parse(xml, 1 << 20).uuid, 'acme')
    passed = hook.prepare(xml, instance)
    device = device.replace(base.IMAGES_TOKEN, base.images_dir())
    with pytest.raises(exception.OperationRefused):
        hook.check_operation(passed, instance, operation, device, True)


def test_a_safe_device_attaches_to_a_pv_guest(hook):
    xml = base.fixture('pv.xml')
    instance = hooks.Instance(domain.parse(xml, 1 << 20).uuid, 'acme')
    passed = hook.prepare(xml, instance)
    hook.check_operation(
        passed, instance, operations.ATTACH_DEVICE,
        "<disk type='file' device='disk'><driver name='phy'/><source "
        "file='%s/root-disk.img'/><target dev='xvdb'/></disk>"
        % base.images_dir(), True)
