"""Boot tenant VMs through the hooks on libvirt's embedded test driver."""

import json
import os
import subprocess
import sys

import libvirt
import pytest

from tests import base
from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import hooks

ACME = hooks.Instance(base.HVM_UUID, 'acme')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_define_and_start_restricted_domain(conn):
    dom = conn.define_and_start(base.fixture('hvm.xml'), ACME)
    assert dom.isActive()
    assert dom.ID() > 0
    text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                        restrict.META_NS, 0)
    record = restrict.record_from_xml(text)
    store = conn.hooks.hooks[0][1].store
    assert record.uid == store.get(base.HVM_UUID).uid
    assert '-runas' in record.args
    # libvirt's test driver drops <xen:commandline>; the record stays.
    base.assert_schema_valid(dom.XMLDesc(0))


@pytest.mark.parametrize('device', [
    "<hostdev mode='subsystem' type='pci'><source><address domain='0' "
    "bus='1' slot='0' function='0'/></source></hostdev>",
    "<serial type='file'><source path='/etc/cron.d/x'/></serial>",
    "<disk type='file' device='disk'><source file='/etc/shadow'/>"
    "<target dev='hdb'/></disk>",
])
def test_refused_domain_is_not_defined(conn, device):
    before = set(conn.conn.listDefinedDomains()) | {
        d.name() for d in conn.conn.listAllDomains()}
    xml = base.add_device(base.fixture('hvm.xml'), device)
    with pytest.raises(exception.FeatureRefused):
        conn.define_and_start(xml, ACME)
    after = {d.name() for d in conn.conn.listAllDomains()}
    assert after == before
    assert 'fixture-hvm' not in after


def test_failed_start_undefines_and_releases(conn):
    # A second domain with the name of the test driver's running "test"
    # domain but a new uuid fails to define; use a running duplicate
    # instead: starting an active domain fails.
    dom = conn.define_and_start(base.fixture('hvm.xml'), ACME)
    store = conn.hooks.hooks[0][1].store
    assert store.get(base.HVM_UUID) is not None
    with pytest.raises(libvirt.libvirtError):
        conn.start(dom, ACME)
    other = hooks.Instance('44444444-2222-4333-8444-555555555555', 'acme')
    clash = base.fixture('hvm.xml').replace(base.HVM_UUID, other.uuid)
    with pytest.raises(libvirt.libvirtError):
        conn.define_and_start(clash, other)
    assert store.get(other.uuid) is None


def _cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli'] + list(args),
        input=stdin, capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT))


def _write_conf(tmp_path, extra=''):
    path = tmp_path / 'dm.conf'
    path.write_text(
        '[libvirt]\ndomain_hooks = dm_restrict\n'
        '[dm_restrict]\n'
        'tenant_uid_ranges = acme:200000-200099,globex:201000-201099\n'
        'device_model_syntax = runas\n'
        'reap_device_models = false\n'
        'allowed_host_paths = %s\n' % base.images_dir() +
        'allowed_bridges = xenbr0\n' +
        'writable_shared_host_paths = %s\n' % base.images_dir() +
        'lease_db = %s\n' % (tmp_path / 'leases.sqlite') + extra)
    return str(path)


def test_cli_boot_prints_uid_and_what_was_applied(tmp_path):
    conf = _write_conf(tmp_path)
    fixture = base.fixture_file('hvm.xml', tmp_path)
    result = _cli('boot', '--config-file', conf, '--tenant', 'acme',
                  '--format', 'json', fixture)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown['uid'] == 200000 and shown['gid'] == 200000
    assert shown['applied'][:3] == ['-xen-domid-restrict', '-runas',
                                    '200000:200000']
    assert shown['id'] > 0 and shown['uuid'] == base.HVM_UUID
    listed = _cli('leases', 'list', '--config-file', conf, '--format',
                  'json')
    assert [le['uid'] for le in json.loads(listed.stdout)] == [200000]
    again = _cli('boot', '--config-file', conf, '--tenant', 'acme',
                 '--format', 'json', fixture)
    assert json.loads(again.stdout)['uid'] == 200000
    released = _cli('leases', 'release', '--config-file', conf,
                    base.HVM_UUID)
    assert released.returncode == 0 and '200000' in released.stdout
    gone = _cli('leases', 'release', '--config-file', conf, base.HVM_UUID)
    assert gone.returncode == 2


@pytest.mark.parametrize('xml,code,words', [
    ('<domain type="xen"><name>x</name>', 2, 'not well-formed'),
    ('<!DOCTYPE d [<!ENTITY e "x">]><domain type="xen"/>', 2, 'DOCTYPE'),
    ('<network/>', 2, 'not <domain>'),
])
def test_cli_refusals_exit_2_and_leave_nothing(tmp_path, xml, code, words):
    conf = _write_conf(tmp_path)
    for command in ('boot', 'render'):
        result = _cli(command, '--config-file', conf, '--tenant', 'acme',
                      '--instance-uuid', base.HVM_UUID, '-', stdin=xml)
        assert result.returncode == code, result.stderr
        assert words in result.stderr
    assert not (tmp_path / 'leases.sqlite').exists()


def test_cli_bad_config_exits_2(tmp_path):
    conf = _write_conf(tmp_path).replace('dm.conf', 'dm.conf')
    with open(conf, 'a') as handle:
        handle.write('reaper_user = root\n')
    result = _cli('validate', '--config-file', conf,
                  base.fixture_file('hvm.xml', tmp_path))
    assert result.returncode == 2
    assert 'reaper_user' in result.stderr


def test_cli_render_and_validate(tmp_path):
    conf = _write_conf(tmp_path)
    fixture = base.fixture_file('hvm.xml', tmp_path)
    checked = _cli('validate', '--config-file', conf, '--tenant', 'acme',
                   fixture)
    assert checked.returncode == 0, checked.stderr
    assert 'can be restricted' in checked.stdout
    assert not (tmp_path / 'leases.sqlite').exists()
    out = tmp_path / 'out.xml'
    rendered = _cli('render', '--config-file', conf, '--tenant', 'acme',
                    '-o', str(out), fixture)
    assert rendered.returncode == 0, rendered.stderr
    base.assert_schema_valid(out.read_text())
    refused = _cli('render', '--config-file', conf, '--tenant', 'initech',
                   '-o', str(tmp_path / 'no.xml'), fixture)
    assert refused.returncode == 2 and 'initech' in refused.stderr
    assert not (tmp_path / 'no.xml').exists()


def test_documented_orchestrator_example_runs(tmp_path):
    """The code the orchestrator guide shows works as shown."""
    example = os.path.join(ROOT, 'doc', 'source', 'configuration',
                           'orchestrator_example.py')
    with open(os.path.join(ROOT, 'etc', 'xen-dm-restrict',
                           'boot-example-domain.xml')) as handle:
        text = handle.read().replace('/var/tmp/xen-dm-restrict-boot',
                                     base.images_dir())
    open(os.path.join(base.images_dir(), 'acme-web-1.img'), 'ab').close()
    domain_xml = str(tmp_path / 'boot-example-domain.xml')
    with open(domain_xml, 'w') as handle:
        handle.write(text)
    result = subprocess.run(
        [sys.executable, example, _write_conf(tmp_path), domain_xml],
        capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == 'started acme-web-1'
    assert lines[1].startswith('refused: migrate of restricted domain '
                               'acme-web-1')
    assert lines[2] == 'deleted'


def test_cli_release_keeps_the_lease_when_the_uid_cannot_be_reaped(
        tmp_path):
    conf = _write_conf(tmp_path)
    with open(conf) as handle:
        text = handle.read().replace('reap_device_models = false',
                                     'reap_device_models = true')
    with open(conf, 'w') as handle:
        handle.write(text + 'reaper_user = xdr-no-such-reaper-user\n')
    with leases.LeaseStore(str(tmp_path / 'leases.sqlite')) as store:
        store.acquire(base.HVM_UUID, 'acme',
                      ranges.UidRange('acme', 200000, 200099))
    result = _cli('leases', 'release', '--config-file', conf, base.HVM_UUID)
    assert result.returncode == 2
    assert 'xdr-no-such-reaper-user' in result.stderr
    with leases.LeaseStore(str(tmp_path / 'leases.sqlite')) as store:
        assert store.get(base.HVM_UUID).uid == 200000


@pytest.mark.parametrize('where', ['missing-dir', 'full-stdout'])
def test_cli_render_that_cannot_write_keeps_no_lease(tmp_path, where):
    conf = _write_conf(tmp_path)
    fixture = base.fixture_file('hvm.xml', tmp_path)
    if where == 'missing-dir':
        result = _cli('render', '--config-file', conf, '--tenant', 'acme',
                      '-o', str(tmp_path / 'no' / 'out.xml'), fixture)
    else:
        with open('/dev/full', 'w') as full:
            result = subprocess.run(
                [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli',
                 'render', '--config-file', conf, '--tenant', 'acme',
                 fixture], stdout=full, stderr=subprocess.PIPE, text=True,
                cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert result.returncode != 0
    assert 'no lease was kept' in result.stderr
    listed = _cli('leases', 'list', '--config-file', conf, '--format',
                  'json')
    assert json.loads(listed.stdout) == []
    assert not list(tmp_path.glob('**/*.tmp'))


def test_cli_boot_says_what_it_did_and_what_a_xen_host_would_do(tmp_path):
    conf = _write_conf(tmp_path)
    fixture = base.fixture_file('hvm.xml', tmp_path)
    first = _cli('boot', '--config-file', conf, '--tenant', 'acme', fixture)
    assert first.returncode == 0, first.stderr
    assert 'lease:   new: uid 200000' in first.stdout
    assert "test:///default (libvirt's embedded test driver: no QEMU ran" \
        in first.stdout
    assert 'next:    on a Xen host (xen:///system)' in first.stdout
    again = _cli('boot', '--config-file', conf, '--tenant', 'acme', fixture)
    assert 'lease:   reused: this instance already held uid 200000' in \
        again.stdout


def test_cli_boot_without_a_hook_refuses_unless_asked(tmp_path):
    conf = _write_conf(tmp_path).replace('dm.conf', 'nohook.conf')
    with open(_write_conf(tmp_path)) as handle:
        text = handle.read().replace('domain_hooks = dm_restrict',
                                     'domain_hooks =')
    with open(conf, 'w') as handle:
        handle.write(text)
    fixture = base.fixture_file('hvm.xml', tmp_path)
    refused = _cli('boot', '--config-file', conf, '--tenant', 'acme',
                   fixture)
    assert refused.returncode == 2
    assert 'no domain hook is enabled' in refused.stderr
    assert conf in refused.stderr and '--unrestricted' in refused.stderr
    allowed = _cli('boot', '--config-file', conf, '--tenant', 'acme',
                   '--unrestricted', fixture)
    assert allowed.returncode == 0, allowed.stderr
    assert 'applied: nothing' in allowed.stdout


def test_cli_says_when_it_read_no_configuration(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop('XEN_DM_RESTRICT_CONFIG', None)
    if os.path.exists('/etc/xen-dm-restrict/xen-dm-restrict.conf'):
        pytest.skip('this host has a configuration file')
    result = subprocess.run(
        [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli', 'boot',
         '--tenant', 'acme', base.fixture_file('hvm.xml', tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 2
    assert 'no configuration file read' in result.stderr
    assert 'configuration files read: none' in result.stderr


def test_cli_shows_warnings_without_verbose(tmp_path):
    conf = _write_conf(tmp_path, 'pv_dom0_qemu = allow\n')
    xml = base.fixture('pv.xml').replace("<driver name='phy'/>",
                                         "<driver name='qemu'/>")
    path = tmp_path / 'pv-qdisk.xml'
    path.write_text(xml)
    result = _cli('render', '--config-file', conf, '--tenant', 'acme',
                  str(path))
    assert result.returncode == 0, result.stderr
    assert 'WARNING' in result.stderr
    assert 'runs as root, unrestricted' in result.stderr
