"""Reconcile: leases against the domains libvirt knows (test driver)."""

import json
import os
import subprocess
import sys

import libvirt
import pytest

from tests import base
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import reconcile
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
UUIDS = ['aaaaaaaa-0000-4000-8000-%012d' % i for i in range(6)]


@pytest.fixture
def env(conn):
    return conn, conn.hooks.hooks[0][1]


def _xml(index):
    return base.fixture('hvm.xml').replace(
        base.HVM_UUID, UUIDS[index]).replace(
        'fixture-hvm', 'vm%d' % index)


def _boot(conn, index, tenant='acme'):
    return conn.define_and_start(_xml(index), hooks.Instance(UUIDS[index],
                                                             tenant))


def _run(hook, conn, apply):
    return reconcile.Reconciler(hook.settings, hook.store, grace=0).run(
        conn.conn, apply=apply)


def _kinds(findings):
    return sorted((f.kind, f.uuid) for f in findings)


def test_agreement_reports_nothing(env):
    conn, hook = env
    _boot(conn, 0)
    _boot(conn, 1, 'globex')
    assert _run(hook, conn, apply=True) == []


def test_orphan_lease_is_released(env):
    conn, hook = env
    _boot(conn, 0)
    orphan = hook.store.acquire(UUIDS[5], 'acme',
                                hook.settings.range_for('acme'))
    found = _run(hook, conn, apply=False)
    assert _kinds(found) == [(reconcile.ORPHAN_LEASE, UUIDS[5])]
    assert found[0].uid == orphan.uid and not found[0].resolved
    assert hook.store.get(UUIDS[5]) is not None
    found = _run(hook, conn, apply=True)
    assert found[0].resolved and found[0].action == 'reaped and released'
    assert hook.store.get(UUIDS[5]) is None
    assert _run(hook, conn, apply=True) == []


def test_unleased_domain_gets_its_recorded_uid_back(env):
    conn, hook = env
    dom = _boot(conn, 0)
    uid = hook.store.get(UUIDS[0]).uid
    hook.store.release(UUIDS[0])
    found = _run(hook, conn, apply=True)
    assert _kinds(found) == [(reconcile.UNLEASED_DOMAIN, UUIDS[0])]
    assert found[0].resolved
    assert hook.store.get(UUIDS[0]).uid == uid
    assert _run(hook, conn, apply=True) == []
    dom.destroy()
    dom.create()


def test_recorded_uid_leased_elsewhere_is_held(env):
    conn, hook = env
    dom = _boot(conn, 0)
    uid = hook.store.get(UUIDS[0]).uid
    hook.store.release(UUIDS[0])
    hook.store.insert(UUIDS[4], 'acme', uid)
    dom.destroy()
    found = _run(hook, conn, apply=True)
    kinds = _kinds(found)
    assert (reconcile.UID_CONFLICT, UUIDS[0]) in kinds
    assert (reconcile.ORPHAN_LEASE, UUIDS[4]) in kinds
    assert 'leased to instance %s' % UUIDS[4] in next(
        f.detail for f in found if f.kind == reconcile.UID_CONFLICT)
    # The orphan went, so the next run re-leases the domain and lifts the
    # hold: the conflict is resolved.
    again = _run(hook, conn, apply=True)
    assert _kinds(again) == [(reconcile.STALE_HOLD, UUIDS[0]),
                             (reconcile.UNLEASED_DOMAIN, UUIDS[0])]
    assert _run(hook, conn, apply=True) == []
    dom.create()
    assert dom.isActive()


def test_two_domains_claiming_one_uid_are_both_held(env):
    conn, hook = env
    first = _boot(conn, 0)
    uid = hook.store.release(UUIDS[0]).uid
    # The uid goes to another instance while the first domain still
    # records it, as after a lease database restored from an old backup.
    hook.store.insert(UUIDS[1], 'acme', uid)
    second = _boot(conn, 1)
    assert hook.store.get(UUIDS[1]).uid == uid
    first.destroy()
    second.destroy()
    found = _run(hook, conn, apply=True)
    assert _kinds(found) == [(reconcile.UID_CONFLICT, UUIDS[0]),
                             (reconcile.UID_CONFLICT, UUIDS[1])]
    assert all(not f.resolved for f in found)
    for dom in (first, second):
        with pytest.raises(exception.OperationRefused) as err:
            dom.create()
        assert 'held' in str(err.value)
        assert not dom.isActive()
    # Safe to run again: the same conflicts, nothing else changes.
    assert _kinds(_run(hook, conn, apply=True)) == _kinds(found)
    assert len(hook.store.holds()) == 2
    # The operator decides: the first VM goes away.
    first.undefine()
    found = _run(hook, conn, apply=True)
    assert _kinds(found) == [(reconcile.STALE_HOLD, UUIDS[1])]
    assert _run(hook, conn, apply=True) == []
    second.create()
    assert second.isActive()


def test_cli_reconcile_reads_libvirt_and_repairs(tmp_path):
    conf = base.make_conf(tmp_path)
    settings = extension.DmRestrictHook(conf).settings
    rendered = extension.DmRestrictHook(conf, settings).prepare(
        _xml(2), hooks.Instance(UUIDS[2], 'acme'))
    with leases.LeaseStore(settings.lease_db) as store:
        store.release(UUIDS[2])
        store.acquire(UUIDS[3], 'globex', settings.range_for('globex'))
    node = tmp_path / 'node.xml'
    node.write_text('<node>%s</node>' % rendered.split('?>')[-1])
    config = tmp_path / 'dm.conf'
    config.write_text(
        '[dm_restrict]\ntenant_uid_ranges = acme:200000-200099,'
        'globex:201000-201099\nlease_db = %s\nreap_device_models = false\n'
        'allowed_host_paths = %s\n' % (settings.lease_db, base.images_dir()))
    uri = 'test://%s' % node

    def cli(*extra, grace='0', form='json'):
        return subprocess.run(
            [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli',
             'leases', 'reconcile', '--config-file', str(config),
             '--connect', uri, '--format', form, '--grace', grace]
            + list(extra),
            capture_output=True, text=True, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT))

    # The grace period hides the young orphan lease, and says so.
    young = cli(grace='300', form='table')
    assert young.returncode == 3, young.stderr
    assert ('1 lease(s) without a domain are younger than the grace period'
            in young.stdout)
    assert reconcile.ORPHAN_LEASE not in young.stdout
    dry = cli()
    assert dry.returncode == 3, dry.stderr
    assert sorted(f['kind'] for f in json.loads(dry.stdout)) == [
        reconcile.ORPHAN_LEASE, reconcile.UNLEASED_DOMAIN]
    applied = cli('--apply')
    assert applied.returncode == 0, applied.stderr
    assert all(f['resolved'] for f in json.loads(applied.stdout))
    clean = cli('--apply')
    assert clean.returncode == 0 and json.loads(clean.stdout) == []
    with leases.LeaseStore(settings.lease_db) as store:
        assert [le.uuid for le in store.list()] == [UUIDS[2]]
    # Reconcile never changes libvirt.
    check = libvirt.openReadOnly(uri)
    assert check.lookupByUUIDString(UUIDS[2]).name() == 'vm2'
    check.close()


def test_a_boot_in_progress_keeps_its_lease(env):
    conn, hook = env
    # prepare() has leased, libvirt has not defined the domain yet.
    hook.prepare(_xml(3), hooks.Instance(UUIDS[3], 'acme'))
    found = reconcile.Reconciler(hook.settings, hook.store).run(
        conn.conn, apply=True)
    assert found == []
    assert hook.store.get(UUIDS[3]) is not None
