"""Leases at the edges: clocks, refusals, new databases, holds, range
edits and full disks (issue 24).

Real files, real processes, libvirt's test driver; the full filesystem
is a small tmpfs this test mounts (root only, skipped otherwise).
"""

import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests import base
from tests.functional import hostenv
from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin.daemon_hook import hook as daemon_hook
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import reconcile
from xen_dm_restrict_plugin.leases import locks
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
        'writable_shared_host_paths = %s\n'
        % (acme, tmp_path / 'leases.sqlite', tmp_path / 'chroots',
           base.images_dir(), base.images_dir()))
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


# -- the lock file next to the database, in the service user's directory --
def _service_state(top, service_uid):
    state = top / 'state'
    state.mkdir(mode=0o700)
    os.chown(state, service_uid, service_uid)
    return state


def _root_only():
    if os.geteuid() != 0:
        pytest.skip('needs root: root is the one tricked here')


@pytest.mark.parametrize('planted', ['symlink', 'hardlink', 'fifo',
                                     'world-writable', 'foreign-owner'])
def test_root_never_follows_or_takes_over_a_planted_lock_file(tmp_path,
                                                              planted):
    """The service user owns the database's directory and can put
    anything at lease_db + '.lock'.  Root (a manual "leases release")
    refuses it, naming the file, and changes nothing it points at.
    """
    _root_only()
    service_uid = hostenv.free_block() + 7
    state = _service_state(tmp_path, service_uid)
    db = str(state / 'leases.sqlite')
    with leases.LeaseStore(db) as store:
        store.insert(vm(60).uuid, 'acme', 200000)
    for name in os.listdir(state):
        os.chown(state / name, service_uid, service_uid)
    secret = tmp_path / 'shadow'               # stands in for /etc/shadow
    secret.write_text('root:$6$secret\n')
    os.chmod(secret, 0o600)
    lock = locks.lock_path(db)
    if planted == 'symlink':
        os.symlink(str(secret), lock)
    elif planted == 'hardlink':
        os.link(str(secret), lock)
    elif planted == 'fifo':
        os.mkfifo(lock, 0o600)
    else:
        with open(lock, 'w'):
            pass
        os.chmod(lock, 0o666 if planted == 'world-writable' else 0o600)
    os.lchown(lock, *(2 * (service_uid + (planted == 'foreign-owner'),)))
    if planted == 'hardlink':
        os.chown(secret, 0, 0)          # the link's inode stays root's
    conf_file = _conf_file(tmp_path)
    text = open(conf_file).read().replace(
        str(tmp_path / 'leases.sqlite'), db)
    open(conf_file, 'w').write(text)
    proc = _cli('leases', 'release', vm(60).uuid, '--config-file',
                conf_file)
    assert proc.returncode != 0, proc.stdout
    assert 'instance lock file %s' % lock in proc.stderr
    assert 'Remedy:' in proc.stderr
    st = os.stat(secret)
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert secret.read_text() == 'root:$6$secret\n'
    with leases.LeaseStore(db) as store:
        assert store.get(vm(60).uuid) is not None     # nothing released


def test_a_lock_file_root_creates_first_belongs_to_the_service_user(
        tmp_path):
    """Root takes an instance lock before any database exists: the lock
    file it creates belongs to the owner of the database's directory, so
    the service user can take instance locks afterwards.
    """
    _root_only()
    service_uid = hostenv.free_block() + 9
    top = tempfile.mkdtemp(prefix='lease-edge-')
    try:
        os.chmod(top, 0o711)
        state = _service_state(pathlib.Path(top), service_uid)
        db = str(state / 'leases.sqlite')
        with locks.InstanceLock(db, vm(61).uuid, timeout=1):
            pass
        st = os.stat(locks.lock_path(db))
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (
            service_uid, service_uid, 0o600)
        assert _as_service_user(service_uid, db, vm(62).uuid) == 0
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _as_service_user(service_uid, db, uuid) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgroups([])
            os.setresgid(service_uid, service_uid, service_uid)
            os.setresuid(service_uid, service_uid, service_uid)
            leases.LeaseStore(db).close()
            with locks.InstanceLock(db, uuid, timeout=1):
                pass
        except BaseException as err:   # noqa: B902 - reported by code
            os.write(2, ('service user: %s\n' % err).encode())
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _boot_args(tmp_path, conf_file, uri, n, tenant):
    (tmp_path / 'in.xml').write_text(xml(n))
    return ('boot', '--config-file', conf_file, '--connect', uri,
            '--tenant', tenant, '--instance-uuid', vm(n).uuid,
            str(tmp_path / 'in.xml'))


def _state_conf(tmp_path, state) -> str:
    conf_file = _conf_file(tmp_path)
    text = open(conf_file).read().replace(
        str(tmp_path / 'leases.sqlite'), str(state / 'leases.sqlite'))
    open(conf_file, 'w').write(
        text + 'allowed_bridges = xenbr0,br-ten1\nallowed_networks = '
        'default\n[libvirt]\ndomain_hooks = dm_restrict\n')
    return conf_file


def test_a_refused_boot_creates_no_file(tmp_path, private_libvirtd):
    """A tenant with no range is refused before any lock is taken: no
    database, no lock file.
    """
    state = tmp_path / 'state'
    state.mkdir()
    conf_file = _state_conf(tmp_path, state)
    proc = _cli(*_boot_args(tmp_path, conf_file, private_libvirtd.uri, 63,
                            'initech'))
    assert proc.returncode != 0, proc.stdout
    assert 'no uid range' in proc.stderr
    assert os.listdir(state) == []


def test_a_root_refusal_leaves_the_service_user_able_to_lock(
        tmp_path, private_libvirtd):
    """A refused root 'boot' on a fresh host once left a root-owned 0600
    lock file that locked the service user out of every instance.
    """
    _root_only()
    service_uid = hostenv.free_block() + 11
    top = pathlib.Path(tempfile.mkdtemp(prefix='lease-edge-'))
    try:
        os.chmod(top, 0o711)
        state = _service_state(top, service_uid)
        conf_file = _state_conf(tmp_path, state)
        _cli(*_boot_args(tmp_path, conf_file, private_libvirtd.uri, 64,
                         'initech'))
        assert os.listdir(state) == []
        assert _as_service_user(service_uid, str(state / 'leases.sqlite'),
                                vm(65).uuid) == 0
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_another_tenants_handle_cannot_release_the_lease(tmp_path,
                                                         private_libvirtd):
    """An instance handle naming another tenant is refused before
    libvirt undefines anything, logged with the instance and tenant.
    """
    conf = base.make_conf(tmp_path, domain_hooks=['dm_restrict'])
    conn = virt.HookedConnection.open(private_libvirtd.uri,
                                      loader.HookManager(conf))
    acme = vm(66)
    conn.define(xml(66), acme)
    with leases.LeaseStore(str(tmp_path / 'leases.sqlite')) as store:
        before = store.get(acme.uuid)
    foreign = hooks.Instance(acme.uuid, 'globex')
    with pytest.raises(exception.OperationRefused,
                       match='belongs to tenant acme'):
        conn.lookup(foreign).undefine()
    hook = conn.hooks.hooks[0][1]
    with pytest.raises(exception.OperationRefused,
                       match='belongs to tenant acme'):
        hook.release(foreign, lambda: True)       # even with evidence
    with leases.LeaseStore(str(tmp_path / 'leases.sqlite')) as store:
        assert store.get(acme.uuid) == before
    assert conn.lookup(acme) is not None          # still defined


@pytest.mark.parametrize('planted', ['', '-wal', '-shm'])
def test_root_never_writes_through_a_planted_database_link(tmp_path,
                                                           planted):
    """The database, its -wal and its -shm live in the service user's
    directory: a link planted there is refused (ours for the database,
    SQLite's own for -wal and -shm), and the file it names is untouched.
    """
    _root_only()
    service_uid = hostenv.free_block() + 13
    state = _service_state(tmp_path, service_uid)
    db = str(state / 'leases.sqlite')
    with leases.LeaseStore(db) as store:
        store.insert(vm(67).uuid, 'acme', 200000)
    for name in os.listdir(state):
        os.chown(state / name, service_uid, service_uid)
    target = tmp_path / 'root-file'
    target.write_text('')                   # an empty root file: a
    os.chmod(target, 0o600)                 # database SQLite could write
    if not planted:
        os.rename(db, str(state / 'real.sqlite'))
    os.symlink(str(target), db + planted)
    os.lchown(db + planted, service_uid, service_uid)
    with pytest.raises(exception.LeaseError, match='lease database'):
        with leases.LeaseStore(db) as store:
            store.release(vm(67).uuid)
    assert target.read_text() == ''
    assert os.stat(target).st_uid == 0


def test_files_root_creates_beside_the_database_belong_to_its_owner(
        tmp_path):
    """Root writing the service user's database leaves no root-owned
    -wal, -shm or lock file behind to lock the service user out.
    """
    _root_only()
    service_uid = hostenv.free_block() + 15
    state = _service_state(tmp_path, service_uid)
    db = str(state / 'leases.sqlite')
    leases.LeaseStore(db).close()
    for name in os.listdir(state):
        os.chown(state / name, service_uid, service_uid)
    with leases.LeaseStore(db) as store, \
            locks.InstanceLock(db, vm(68).uuid, timeout=1):
        store.insert(vm(68).uuid, 'acme', 200000)
        owners = {name: os.stat(state / name).st_uid
                  for name in os.listdir(state)}
    assert set(owners) >= {'leases.sqlite', 'leases.sqlite-wal',
                           'leases.sqlite-shm', 'leases.sqlite.lock'}
    assert set(owners.values()) == {service_uid}
