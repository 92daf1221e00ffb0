"""Leases at the edges: clocks, refusals, new databases, holds, range
edits and full disks (issue 24).

Real files, real processes, libvirt's test driver; the full filesystem
is a small tmpfs this test mounts (root only, skipped otherwise).
"""

import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from tests import base
from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin.daemon_hook import hook as daemon_hook
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import reconcile
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import loader
from xen_dm_restrict_plugin.orchestrator import virt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FORK = multiprocessing.get_context('fork')


def vm(n: int, tenant: str = 'acme') -> hooks.Instance:
    return hooks.Instance('6b6b6b6b-0000-4000-8000-%012d' % n, tenant)


def xml(n: int) -> str:
    return base.fixture('hvm.xml').replace(base.HVM_UUID, vm(n).uuid) \
        .replace('fixture-hvm', 'edge-%d' % n)


def _cli(*args):
    return subprocess.run(
        [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli'] +
        list(args), capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)


def _conf_file(tmp_path, acme='200000-200099') -> str:
    path = tmp_path / 'dm.conf'
    path.write_text(
        '[dm_restrict]\n'
        'tenant_uid_ranges = acme:%s,globex:201000-201099\n'
        'device_model_syntax = runas\n'
        'lease_db = %s\n'
        'chroot_base_dir = %s\n'
        'reap_device_models = false\n'
        'allowed_host_paths = %s\n'
        % (acme, tmp_path / 'leases.sqlite', tmp_path / 'chroots',
           base.images_dir()))
    return str(path)


# -- a lease dated in the future ------------------------------------------
def test_lease_from_the_future_is_judged(conn):
    hook = conn.hooks.hooks[0][1]
    lease = hook.store.acquire(vm(1).uuid, 'acme',
                               hook.settings.range_for('acme'))
    with hook.store._write() as db:
        db.execute('UPDATE leases SET created_at = ? WHERE uuid = ?',
                   (time.time() + 86400, lease.uuid))
    # Default grace: dated now, so left alone this time, not forever.
    found = reconcile.Reconciler(hook.settings, hook.store).run(
        conn.conn, apply=True)
    assert found == []
    assert hook.store.get(lease.uuid).created_at <= time.time()
    # --grace 0 judges everything.
    found = reconcile.Reconciler(hook.settings, hook.store, grace=0).run(
        conn.conn, apply=True)
    assert [(f.kind, f.resolved) for f in found] == [
        (reconcile.ORPHAN_LEASE, True)]
    assert hook.store.get(lease.uuid) is None


def test_grace_zero_judges_a_future_lease_even_without_apply(conn):
    hook = conn.hooks.hooks[0][1]
    lease = hook.store.acquire(vm(2).uuid, 'acme',
                               hook.settings.range_for('acme'))
    with hook.store._write() as db:
        db.execute('UPDATE leases SET created_at = ? WHERE uuid = ?',
                   (time.time() + 86400, lease.uuid))
    found = reconcile.Reconciler(hook.settings, hook.store, grace=0).run(
        conn.conn, apply=False)
    assert [f.kind for f in found] == [reconcile.ORPHAN_LEASE]


# -- refusals create no file ----------------------------------------------
@pytest.mark.parametrize('action', ['release', 'unhold'])
def test_release_and_unhold_create_no_database(tmp_path, action):
    conf = _conf_file(tmp_path)
    result = _cli('leases', action, '--config-file', conf, vm(3).uuid)
    assert result.returncode == 2, result.stderr
    assert 'there is none' in result.stderr
    assert sorted(os.listdir(tmp_path)) == ['dm.conf']


def test_daemon_hook_refusing_a_start_creates_no_database(tmp_path):
    other = tmp_path / 'other'
    other.mkdir()
    rendered = extension.DmRestrictHook(base.make_conf(
        other, chroot_base_dir=str(tmp_path / 'chroots'))).prepare(
        xml(4), vm(4))
    settings = base.make_settings(tmp_path)
    with pytest.raises(exception.OperationRefused, match='no lease'):
        daemon_hook.LibxlHook(settings).handle(
            'edge-4', 'prepare', 'begin', rendered.encode())
    assert not os.path.exists(settings.lease_db)
    assert not os.path.exists(settings.lease_db + '-wal')


def test_wrapper_start_refused_creates_no_database(tmp_path, conn):
    other = tmp_path / 'other'
    other.mkdir()
    rendered = extension.DmRestrictHook(base.make_conf(other)).prepare(
        xml(5), vm(5))
    dom = conn.conn.defineXML(rendered)
    hook = conn.hooks.hooks[0][1]
    with pytest.raises(exception.OperationRefused):
        virt.HookedDomain(conn, dom, vm(5))._create()
    assert not os.path.exists(hook.settings.lease_db)


# -- a new database opened by many processes at once ----------------------
def _open(path, go, errors):
    go.wait(30)
    try:
        leases.LeaseStore(path, 30).close()
    except exception.LeaseError as err:
        errors.put(str(err))


def test_new_database_opened_by_many_at_once_never_fails(tmp_path):
    errors = FORK.Queue()
    for round_ in range(15):
        path = str(tmp_path / ('db%d.sqlite' % round_))
        go = FORK.Event()
        procs = [FORK.Process(target=_open, args=(path, go, errors))
                 for _ in range(10)]
        for proc in procs:
            proc.start()
        go.set()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
    assert errors.empty(), errors.get()


# -- release lifts the hold -----------------------------------------------
def test_cli_release_lifts_the_hold(tmp_path):
    conf = _conf_file(tmp_path)
    settings = base.make_settings(tmp_path)
    with leases.LeaseStore(settings.lease_db) as store:
        store.acquire(vm(6).uuid, 'acme', settings.range_for('acme'))
        store.hold(vm(6).uuid, 'uid conflict')
    result = _cli('leases', 'release', '--config-file', conf, vm(6).uuid)
    assert result.returncode == 0, result.stderr
    assert 'hold is lifted' in result.stdout
    with leases.LeaseStore(settings.lease_db) as store:
        assert store.holds() == {}
        assert store.get(vm(6).uuid) is None


# -- range edits ----------------------------------------------------------
def _connect(tmp_path, acme, reap=False):
    conf = base.make_conf(tmp_path, domain_hooks=['dm_restrict'],
                          reap_device_models=reap,
                          tenant_uid_ranges={'acme': acme,
                                             'globex': '201000-201099'})
    return virt.HookedConnection.open('test:///default',
                                      loader.HookManager(conf))


def test_shrunk_range_leaves_every_lease_releasable(tmp_path, conn):
    wide = _connect(tmp_path, '200000-200009')
    doms = [wide.define(xml(n), vm(n)) for n in range(10, 16)]
    uids = {dom.instance.uuid: wide.hooks.hooks[0][1].store.get(
        dom.instance.uuid).uid for dom in doms}
    assert max(uids.values()) > 200002
    # Reaping on: the reaper refuses uids outside every range, which are
    # released without a reap.
    narrow = _connect(tmp_path, '200000-200002', reap=True)
    hook = narrow.hooks.hooks[0][1]
    high = [d for d in doms if uids[d.instance.uuid] > 200002]
    narrow.lookup(high[0].instance).undefine()
    assert hook.store.get(high[0].instance.uuid) is None
    # reconcile, after the domain went without the wrapper.
    narrow.conn.lookupByUUIDString(high[1].instance.uuid).undefine()
    found = reconcile.Reconciler(hook.settings, hook.store, grace=0).run(
        narrow.conn, apply=True)
    assert all(f.resolved for f in found), found
    assert hook.store.get(high[1].instance.uuid) is None
    # leases release.
    conf = _conf_file(tmp_path, acme='200000-200002')
    narrow.conn.lookupByUUIDString(high[2].instance.uuid).undefine()
    result = _cli('leases', 'release', '--config-file', conf,
                  high[2].instance.uuid)
    assert result.returncode == 0, result.stderr
    for dom in (wide, narrow):
        dom.close()


def test_widening_keeps_round_robin(tmp_path):
    settings = base.make_settings(tmp_path)
    narrow = ranges.parse('300000-300009', 'acme', 'tenant_uid_ranges')
    wide = ranges.parse('300000-300019', 'acme', 'tenant_uid_ranges')
    moved = ranges.parse('300005-300024', 'acme', 'tenant_uid_ranges')
    with leases.LeaseStore(settings.lease_db) as store:
        taken = [store.acquire(vm(40 + i).uuid, 'acme', narrow,
                               lambda uid: True) for i in range(4)]
        assert [le.uid for le in taken] == [300000, 300001, 300002, 300003]
        store.release(taken[-1].uuid)          # 300003 comes back last
        after = [store.acquire(vm(50 + i).uuid, 'acme', wide,
                               lambda uid: True).uid for i in range(17)]
        assert after[0] == 300004
        assert after[-1] == 300003
        for i in range(17):
            store.release(vm(50 + i).uuid)
        again = store.acquire(vm(70).uuid, 'acme', moved, lambda uid: True)
        # Goes on from the cursor after the last uid handed out (300003).
        assert again.uid == 300005


# -- render -o on a full disk ---------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip('mounting a small tmpfs needs root (CI runs as root)')
    path = tmp_path / 'tiny'
    path.mkdir()
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o',
                           'size=400k,mode=0755', 'tmpfs', str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip('cannot mount a tmpfs: %s' % done.stderr.strip())
    try:
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], check=False)


def test_render_to_a_full_disk_keeps_no_lease(tmp_path, tiny_fs):
    db = tiny_fs / 'leases.sqlite'
    conf = tmp_path / 'dm.conf'
    conf.write_text(
        '[dm_restrict]\ntenant_uid_ranges = acme:200000-200099\n'
        'device_model_syntax = runas\nlease_db = %s\nchroot_base_dir = %s\n'
        'reap_device_models = false\nallowed_host_paths = %s\n'
        'writable_shared_host_paths = %s\n'
        'allowed_bridges = xenbr0\n'
        % (db, tmp_path / 'chroots', base.images_dir(), base.images_dir()))
    source = tmp_path / 'domain.xml'
    source.write_text(xml(80))
    first = _cli('render', '--config-file', str(conf), '--tenant', 'acme',
                 '-o', str(tiny_fs / 'first.xml'), str(source))
    assert first.returncode == 0, first.stderr
    with leases.LeaseStore(str(db)) as store:
        before = store.list()
    # Fill the disk, database and output alike.
    filler = os.open(tiny_fs / 'filler', os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(filler, b'\0' * 4096)
    except OSError:
        pass
    finally:
        os.close(filler)
    for n in range(81, 84):
        source.write_text(xml(n))
        result = _cli('render', '--config-file', str(conf), '--tenant',
                      'acme', '-o', str(tiny_fs / ('out%d.xml' % n)),
                      str(source))
        assert result.returncode != 0
        assert not os.path.exists(tiny_fs / ('out%d.xml' % n))
        assert not os.path.exists(tiny_fs / ('out%d.xml.tmp' % n))
    os.unlink(tiny_fs / 'filler')
    with leases.LeaseStore(str(db)) as store:
        assert store.list() == before
