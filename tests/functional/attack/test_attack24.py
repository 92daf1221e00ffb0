"""Attack session 24: ways the lease guarantees of issue 24 still break.

Each test asserts the *promised* behaviour, so it FAILS today while the
hole is open.  Real private libvirtd (test driver), real lease database,
real separate processes for the "other client".
"""

import os
import stat
import subprocess
import sys
import textwrap

import libvirt
import pytest

from tests import base
from tests.functional import hostenv
from tests.functional import test_lease_races as races
from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin.host import reconcile
from xen_dm_restrict_plugin.leases import locks
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import loader
from xen_dm_restrict_plugin.orchestrator import virt

ROOT = races.ROOT
ONE_UID = {'acme': '200000-200000', 'globex': '201000-201099'}


def _conf_file(tmp_path, acme='200000-200000', db=None) -> str:
    path = tmp_path / 'dm.conf'
    path.write_text(
        '[dm_restrict]\n'
        'tenant_uid_ranges = acme:%s,globex:201000-201099\n'
        'device_model_syntax = runas\n'
        'lease_db = %s\n'
        'chroot_base_dir = %s\n'
        'reaper_user = nobody-reaper-not-created\n'
        'reap_device_models = false\n'
        'allowed_host_paths = %s\n'
        % (acme, db or races.db(tmp_path), tmp_path / 'chroots',
           base.images_dir()))
    return str(path)


def _uid(dom):
    from xen_dm_restrict_plugin.core import restrict
    rec = restrict.record_in_domain_xml(dom.XMLDesc(0))
    return None if rec is None else rec.uid


def _connect(tmp_path, uri):
    conf = base.make_conf(tmp_path, domain_hooks=['dm_restrict'],
                          tenant_uid_ranges=ONE_UID)
    return virt.HookedConnection.open(uri, loader.HookManager(conf))


# What libvirtd + the libxl daemon hook do for "virsh create saved.xml":
# the hook's start check (the same code libvirtd's hook runs, in a process
# of its own, taking no instance lock), then libvirt starts the domain.
_OUTSIDER = textwrap.dedent('''
    import sys, libvirt
    from oslo_config import cfg
    from xen_dm_restrict_plugin import conf as conf_mod
    from xen_dm_restrict_plugin.core import restrict
    from xen_dm_restrict_plugin.daemon_hook import hook
    conf_file, uri, xml_file = sys.argv[1:4]
    conf = cfg.ConfigOpts(); conf_mod.register_opts(conf)
    conf(['--config-file', conf_file], default_config_files=[])
    settings = conf_mod.load(conf)
    data = open(xml_file, 'rb').read()
    dom = settings.parse_domain(data)
    rec = restrict.read_record(dom)
    hook.LibxlHook(settings).check_restricted(dom.name, dom, rec)
    libvirt.open(uri).createXML(data.decode(), 0)
    print('started')
''')


def _outsider_start(tmp_path, conf_file, uri, xml_text):
    path = tmp_path / 'saved.xml'
    path.write_text(xml_text)
    proc = subprocess.run(
        [sys.executable, '-c', _OUTSIDER, conf_file, uri, str(path)],
        capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    return proc


# -- 1. undefine: "gone" is decided, then the lease is released in another
#       transaction; a start checked by the daemon hook fits in between ---
def test_undefine_then_outside_start_keeps_lease(tmp_path,
                                                 private_libvirtd):
    conf_file = _conf_file(tmp_path)
    conn = _connect(tmp_path, private_libvirtd.uri)
    victim, other = races.vm(1), races.vm(2)
    sent = []
    real_conn = conn.conn

    class _Record:
        def __getattr__(self, name):
            return getattr(real_conn, name)

        def defineXML(self, text):
            sent.append(text)
            return real_conn.defineXML(text)

    conn.conn = _Record()
    dom = conn.define(races.xml(victim), victim)
    conn.conn = real_conn
    saved = sent[0]       # the restricted XML libvirt holds (dumpxml)
    uid = races.record_uid(dom.dom)
    real_is_gone = conn.is_gone
    outsider = {}

    def is_gone(instance):
        gone = real_is_gone(instance)
        if gone and not outsider:
            # libvirt just said "no such domain"; the wrapper is about
            # to reap and release.  Another client starts it now.
            outsider['proc'] = _outsider_start(
                tmp_path, conf_file, private_libvirtd.uri, saved)
        return gone

    conn.is_gone = is_gone
    dom.undefine()
    proc = outsider['proc']
    assert proc.returncode == 0, proc.stderr   # the hook allowed it
    raw = libvirt.open(private_libvirtd.uri)
    live = raw.lookupByUUIDString(victim.uuid)
    assert live.isActive()
    # The second instance of the tenant gets the only uid of the range.
    conn.is_gone = real_is_gone
    second = conn.define_and_start(races.xml(other), other)
    shared = [d.UUIDString() for d in raw.listAllDomains(
        libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        if _uid(d) == uid]
    # Promised: every live restricted domain holds its lease, and no two
    # live domains share a uid.
    assert races.lease_of(tmp_path, victim) is not None, \
        'live domain %s lost its lease; live on uid %d: %s' % (
            victim.uuid, uid, shared)
    assert len(shared) == 1, 'two live domains on uid %d: %s' % (uid,
                                                                 shared)


# -- 2. the lock file next to the database: root follows a symlink the
#       database owner planted and chowns the target to that owner -------
def test_root_lock_follows_symlink_and_chowns_target(tmp_path):
    if os.geteuid() != 0:
        pytest.skip('needs root (the victim is root)')
    service_uid = hostenv.free_block() + 7     # the orchestrator's user
    state = tmp_path / 'state'
    state.mkdir(mode=0o700)
    os.chown(state, service_uid, service_uid)
    db = str(state / 'leases.sqlite')
    with leases.LeaseStore(db) as store:
        store.insert(races.vm(3).uuid, 'acme', 200000)
    for name in os.listdir(state):
        os.chown(state / name, service_uid, service_uid)
    secret = tmp_path / 'shadow'               # stands in for /etc/shadow
    secret.write_text('root:$6$secret\n')
    os.chmod(secret, 0o600)
    # What the service user can do in its own directory:
    os.symlink(str(secret), locks.lock_path(db))
    os.lchown(locks.lock_path(db), service_uid, service_uid)
    conf_file = _conf_file(tmp_path, db=db)
    # Root, later: the documented manual release.
    proc = subprocess.run(
        [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli', 'leases',
         'release', races.vm(3).uuid, '--config-file', conf_file],
        capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    print(proc.returncode, proc.stdout, proc.stderr)
    st = os.stat(secret)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), (
        'root chowned %s to uid %d through the lock symlink (release '
        'rc %d: %s)' % (secret, st.st_uid, proc.returncode,
                        proc.stdout + proc.stderr))


# -- 3. two reconciles: one lifts the hold the other just placed ---------
class _ListThen:
    def __init__(self, conn, after):
        self._conn, self._after = conn, after

    def __getattr__(self, name):
        real = getattr(self._conn, name)
        if name != 'listAllDomains':
            return real

        def call(*args):
            listed = real(*args)
            self._after()
            return listed
        return call


def test_concurrent_reconcile_lifts_a_fresh_hold(tmp_path,
                                                 private_libvirtd):
    conf_file = _conf_file(tmp_path)
    conn = _connect(tmp_path, private_libvirtd.uri)
    hook = conn.hooks.hooks[0][1]
    y, x = races.vm(4), races.vm(5)
    conn.define_and_start(races.xml(y), y)          # running on uid U
    with leases.LeaseStore(races.db(tmp_path)) as store:
        store.release(y.uuid)        # lease lost: database restored, ...
    rendered_x = hook.prepare(races.xml(x), x)      # render: leased U
    assert races.lease_of(tmp_path, x).uid == 200000
    raw = libvirt.open(private_libvirtd.uri)
    out = {}

    def meanwhile():
        raw.defineXML(rendered_x)                   # virsh define
        out['b'] = subprocess.run(
            [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli',
             'leases', 'reconcile', '--config-file', conf_file,
             '--connect', private_libvirtd.uri, '--apply', '--grace', '0'],
            capture_output=True, text=True, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
        with leases.LeaseStore(races.db(tmp_path)) as store:
            out['held_after_b'] = store.holds()

    settings = conf_mod.load(base.make_conf(tmp_path,
                                            tenant_uid_ranges=ONE_UID))
    with leases.LeaseStore(races.db(tmp_path)) as store:
        rec = reconcile.Reconciler(settings, store, grace=0)
        rec.run(_ListThen(libvirt.open(private_libvirtd.uri), meanwhile),
                apply=True)
    assert x.uuid in out['held_after_b'], out['b'].stdout
    with leases.LeaseStore(races.db(tmp_path)) as store:
        held = store.holds()
    started = None
    if x.uuid not in held:
        dom_x = conn.lookup(x)
        dom_x.create()                    # the wrapper lets it start
        started = [d.name() for d in raw.listAllDomains(
            libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            if _uid(d) == 200000]
    assert x.uuid in held, (
        'reconcile B held %s (uid conflict with running %s); reconcile A '
        'lifted it from its older listing; live on uid 200000: %s'
        % (x.uuid, y.uuid, started))


# -- 4. a refused boot creates a file (the lock) -------------------------
def test_refused_boot_creates_no_file(tmp_path, private_libvirtd):
    state = tmp_path / 'state'
    state.mkdir()
    conf_file = _conf_file(tmp_path, db=str(state / 'leases.sqlite'))
    with open(conf_file, 'a') as handle:
        handle.write('[libvirt]\ndomain_hooks = dm_restrict\n')
    proc = subprocess.run(
        [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli', 'boot',
         '--config-file', conf_file, '--connect', private_libvirtd.uri,
         '--tenant', 'initech',                  # no range: refused
         '--instance-uuid', races.vm(9).uuid, str(tmp_path / 'in.xml')],
        capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT), timeout=60,
        input=None) if (tmp_path / 'in.xml').write_text(
            races.xml(races.vm(9))) else None
    assert proc.returncode != 0, proc.stdout
    assert os.listdir(state) == [], (
        'refused boot (%s) left %s' % (proc.stderr.strip()[-200:],
                                      os.listdir(state)))


# -- 5. another tenant's instance handle releases the lease --------------
def test_other_tenant_handle_cannot_release(tmp_path, private_libvirtd):
    conn = _connect(tmp_path, private_libvirtd.uri)
    acme = races.vm(10)
    conn.define(races.xml(acme), acme)
    before = races.lease_of(tmp_path, acme)
    from xen_dm_restrict_plugin.orchestrator import hooks
    foreign = hooks.Instance(acme.uuid, 'globex')
    try:
        conn.lookup(foreign).undefine()
    except Exception:   # noqa: B902 - a refusal is the right answer
        pass
    assert races.lease_of(tmp_path, acme) == before, (
        "acme's lease of uid %d released through a globex handle"
        % before.uid)


def test_root_refusal_locks_out_the_service_user(tmp_path,
                                                 private_libvirtd,
                                                 request_cleanup):
    """A refused root 'boot' on a fresh host leaves a root-owned 0600 lock
    file; the orchestrator's service user then cannot take any instance
    lock (every define/start/undefine fails) until root takes a lock again.
    """
    if os.geteuid() != 0:
        pytest.skip('needs root')
    service_uid = hostenv.free_block() + 11
    import pathlib
    import shutil
    import tempfile
    top = pathlib.Path(tempfile.mkdtemp(prefix='atk24-'))
    os.chmod(top, 0o711)
    request_cleanup.append(lambda: shutil.rmtree(top, ignore_errors=True))
    state = top / 'state'
    state.mkdir(mode=0o700)
    os.chown(state, service_uid, service_uid)
    db = str(state / 'leases.sqlite')
    conf_file = _conf_file(tmp_path, db=db)
    with open(conf_file, 'a') as handle:
        handle.write('[libvirt]\ndomain_hooks = dm_restrict\n')
    (tmp_path / 'in.xml').write_text(races.xml(races.vm(11)))
    subprocess.run(
        [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli', 'boot',
         '--config-file', conf_file, '--connect', private_libvirtd.uri,
         '--tenant', 'initech', '--instance-uuid', races.vm(11).uuid,
         str(tmp_path / 'in.xml')], capture_output=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    pid = os.fork()
    if pid == 0:        # the service user: creates its db, takes a lock
        code = 0
        try:
            os.setresgid(service_uid, service_uid, service_uid)
            os.setresuid(service_uid, service_uid, service_uid)
            leases.LeaseStore(db).close()
            with locks.InstanceLock(db, races.vm(12).uuid, timeout=1):
                pass
        except Exception as err:   # noqa: B902
            os.write(2, ('service user: %s\n' % err).encode())
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, \
        'the service user cannot take instance locks after a root refusal'


@pytest.fixture
def request_cleanup():
    done = []
    yield done
    for func in done:
        func()
