"""Interleavings that once ended with two live instances on one uid.

Each test reproduces one for real: a private libvirtd serving the test
driver to several processes (tests/functional/libvirtd.py), the real
lease database, real processes, SIGKILL of the daemon at a step.  The
rule under test: a call gives back only the claim it took, only when
libvirt answered "no such domain", and decides under the instance's
lifecycle lock, which reconcile shares.
"""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import libvirt
import pytest

from tests import base
from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import reconcile
from xen_dm_restrict_plugin.leases import locks
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import loader
from xen_dm_restrict_plugin.orchestrator import virt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FORK = multiprocessing.get_context('fork')


def vm(n: int, tenant: str = 'acme') -> hooks.Instance:
    return hooks.Instance('7a7a7a7a-0000-4000-8000-%012d' % n, tenant)


def xml(instance: hooks.Instance, name: str = '') -> str:
    return base.fixture('hvm.xml').replace(
        base.HVM_UUID, instance.uuid).replace(
        'fixture-hvm', name or 'race-%s' % instance.uuid[-4:])


def connect(tmp_path, uri: str) -> virt.HookedConnection:
    conf = base.make_conf(tmp_path, domain_hooks=['dm_restrict'])
    return virt.HookedConnection.open(uri, loader.HookManager(conf))


def db(tmp_path) -> str:
    return str(tmp_path / 'leases.sqlite')


def lease_of(tmp_path, instance):
    with leases.LeaseStore(db(tmp_path)) as store:
        return store.get(instance.uuid)


def record_uid(dom) -> int:
    return restrict.record_in_domain_xml(dom.XMLDesc(0)).uid


def _run(target, *args):
    proc = FORK.Process(target=target, args=args)
    proc.start()
    return proc


def _join(procs, timeout=120):
    for proc in procs:
        proc.join(timeout)
        assert proc.exitcode == 0, 'worker failed: %s' % proc.exitcode


# -- a libvirt error is never evidence that a domain is gone -------------
class _KillBefore:
    """The real connection; SIGKILLs libvirtd right before one call."""

    def __init__(self, conn, daemon, method):
        self._conn, self._daemon, self._method = conn, daemon, method

    def __getattr__(self, name):
        real = getattr(self._conn, name)
        if name == 'defineXML' and self._method == 'createWithFlags':
            return lambda *args: _KillBefore(real(*args), self._daemon,
                                             self._method)
        if name != self._method:
            return real

        def call(*args, **kwargs):
            self._daemon.kill()
            return real(*args, **kwargs)
        return call


@pytest.mark.parametrize('step', ['lookupByUUIDString', 'defineXML'])
def test_broken_connection_never_releases_a_running_domain(
        tmp_path, private_libvirtd, step):
    conn = connect(tmp_path, private_libvirtd.uri)
    running = conn.define_and_start(xml(vm(1)), vm(1))
    before = lease_of(tmp_path, vm(1))
    assert before is not None and running.isActive()
    conn.conn = _KillBefore(conn.conn, private_libvirtd, step)
    with pytest.raises(libvirt.libvirtError):
        conn.define(xml(vm(1)), vm(1))
    after = lease_of(tmp_path, vm(1))
    assert after == before, 'a libvirt error gave the lease back'
    # The claim the failed define took stays (no evidence); never less.
    assert after.claims >= before.claims


def test_broken_connection_keeps_the_lease_on_undefine(
        tmp_path, private_libvirtd):
    conn = connect(tmp_path, private_libvirtd.uri)
    dom = conn.define(xml(vm(2)), vm(2))
    before = lease_of(tmp_path, vm(2))
    dom.dom = _KillBefore(dom.dom, private_libvirtd, 'undefineFlags')
    with pytest.raises(libvirt.libvirtError):
        dom.undefine()
    assert lease_of(tmp_path, vm(2)) == before


# -- two boots of one instance at once ------------------------------------
def _boot_worker(tmp_path, uri, name, barrier, results):
    conn = connect(tmp_path, uri)
    barrier.wait()
    try:
        conn.define_and_start(xml(vm(3), name), vm(3))
        results.put(('ok', name))
    except (libvirt.libvirtError, Exception) as err:  # noqa: B902
        results.put(('failed', '%s: %s' % (type(err).__name__, err)))
    finally:
        conn.close()


@pytest.mark.parametrize('renamed', [False, True])
def test_two_boots_of_one_instance_leave_the_winner_running(
        tmp_path, private_libvirtd, renamed):
    checker = connect(tmp_path, private_libvirtd.uri)
    for round_ in range(8):
        barrier, results = FORK.Barrier(2), FORK.Queue()
        names = ['race-a', 'race-b' if renamed else 'race-a']
        _join([_run(_boot_worker, tmp_path, private_libvirtd.uri, name,
                    barrier, results) for name in names])
        outcomes = [results.get(timeout=10) for _ in names]
        assert [o[0] for o in outcomes].count('ok') >= 1, outcomes
        dom = checker.lookup(vm(3))
        assert dom is not None and dom.isActive(), (round_, outcomes)
        lease = lease_of(tmp_path, vm(3))
        assert lease is not None, (round_, outcomes)
        assert lease.uid == record_uid(dom.dom)
        dom.destroy()
        dom.undefine()
        assert lease_of(tmp_path, vm(3)) is None


# -- reconcile against a define and start in the middle -------------------
def _cli(*args):
    return subprocess.Popen(
        [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli'] +
        list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))


def _write_conf(tmp_path) -> str:
    path = tmp_path / 'dm.conf'
    path.write_text(
        '[dm_restrict]\n'
        'tenant_uid_ranges = acme:200000-200099,globex:201000-201099\n'
        'device_model_syntax = runas\n'
        'lease_db = %s\n'
        'chroot_base_dir = %s\n'
        'reap_device_models = false\n'
        'allowed_host_paths = %s\n'
        'writable_shared_host_paths = %s\n'
        % (db(tmp_path), tmp_path / 'chroots', base.images_dir(),
           base.images_dir()))
    return str(path)


def test_reconcile_keeps_the_lease_of_a_domain_defined_meanwhile(
        tmp_path, private_libvirtd):
    """render, then virsh define and start, while reconcile walks leases.

    The test holds the instance's lock while reconcile lists the domains
    (none) and reaches the lease; it then defines and starts the domain
    through a plain libvirt connection (as virsh would) and lets go.
    """
    conf = _write_conf(tmp_path)
    hooked = connect(tmp_path, private_libvirtd.uri)
    hook = hooked.hooks.hooks[0][1]
    rendered = hook.prepare(xml(vm(4)), vm(4))
    lease = lease_of(tmp_path, vm(4))
    for attempt in range(3):
        with locks.InstanceLock(db(tmp_path), vm(4).uuid):
            proc = _cli('leases', 'reconcile', '--config-file', conf,
                        '--connect', private_libvirtd.uri, '--apply',
                        '--grace', '0', '--format', 'json')
            time.sleep(2.0 + attempt)   # it lists, then waits for us
            raw = libvirt.open(private_libvirtd.uri)
            raw.defineXML(rendered).create()
        out, err = proc.communicate(timeout=60)
        findings = json.loads(out)
        assert lease_of(tmp_path, vm(4)) == lease, (out, err)
        if any('appeared' in f['action'] for f in findings):
            break
        # Reconcile was too slow to list before the define: again.
        dom = raw.lookupByUUIDString(vm(4).uuid)
        dom.destroy()
        dom.undefine()
    else:
        pytest.fail('reconcile never listed before the define: %s' % out)
    assert raw.lookupByUUIDString(vm(4).uuid).isActive()


# -- undefine racing a start ----------------------------------------------
def _starter(uri, uuid, stop):
    raw = libvirt.open(uri)
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    while not stop.is_set():
        try:
            raw.lookupByUUIDString(uuid).create()
        except libvirt.libvirtError:
            pass


def _remove(conn, instance):
    """Destroy and undefine through the wrapper, however often the
    starter starts it again.
    """
    while True:
        dom = conn.lookup(instance)
        if dom is None:
            return
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except Exception:  # noqa: B902 - started again meanwhile
            continue


def test_undefine_racing_a_start_never_releases_a_running_domain(
        tmp_path, private_libvirtd):
    conn = connect(tmp_path, private_libvirtd.uri)
    stop = FORK.Event()
    starter = _run(_starter, private_libvirtd.uri, vm(5).uuid, stop)
    kept = released = 0
    # Bounded in time as well as in rounds: each round may wait for the
    # starter's instance lock, so a loaded machine makes rounds slow.
    deadline = time.monotonic() + 20
    rounds = 0
    try:
        while rounds < 60 and (rounds < 5 or time.monotonic() < deadline):
            rounds += 1
            dom = conn.define(xml(vm(5)), vm(5))
            try:
                dom.undefine()
            except Exception:  # noqa: B902 - refused: it was running
                pass
            now = conn.lookup(vm(5))
            if now is not None and now.isActive():
                assert lease_of(tmp_path, vm(5)) is not None
                kept += 1
                _remove(conn, vm(5))
            else:
                released += 1
    finally:
        stop.set()
        starter.join(30)
    assert lease_of(tmp_path, vm(5)) is None or conn.lookup(vm(5))
    assert kept + released == rounds >= 5


# -- a refused boot never touches another tenant's lease ------------------
def test_refused_boot_keeps_the_other_tenants_lease(tmp_path,
                                                    private_libvirtd):
    conn = connect(tmp_path, private_libvirtd.uri)
    conn.define_and_start(xml(vm(6)), vm(6))
    before = lease_of(tmp_path, vm(6))
    with pytest.raises(Exception):
        conn.define_and_start(xml(vm(6)), vm(6, 'globex'))
    assert lease_of(tmp_path, vm(6)) == before


# -- every start path through the checks ----------------------------------
def test_create_with_files_is_checked(tmp_path, private_libvirtd):
    conn = connect(tmp_path, private_libvirtd.uri)
    dom = conn.define(xml(vm(7)), vm(7))
    with leases.LeaseStore(db(tmp_path)) as store:
        store.hold(vm(7).uuid, 'test conflict')
    with pytest.raises(Exception, match='held'):
        dom.createWithFiles([])
    assert not dom.isActive()


def test_transient_domain_is_checked_and_gives_its_lease_back(
        tmp_path, private_libvirtd):
    conn = connect(tmp_path, private_libvirtd.uri)
    dom = conn.createXML(xml(vm(8)), vm(8))
    assert dom.isActive()
    lease = lease_of(tmp_path, vm(8))
    assert lease.uid == record_uid(dom.dom)
    dom.destroy()
    assert conn.lookup(vm(8)) is None
    assert lease_of(tmp_path, vm(8)) is None


def test_daemon_kill_at_every_step_of_a_boot_leaves_no_shared_uid(
        tmp_path, private_libvirtd):
    """SIGKILL libvirtd before each libvirt call of a boot: afterwards no
    lease is lost for a domain libvirt may have, and a new daemon's
    domains never share a uid.
    """
    steps = ['lookupByUUIDString', 'defineXML', 'createWithFlags']
    for n, step in enumerate(steps):
        daemon = private_libvirtd
        if daemon.proc is None or daemon.proc.poll() is not None:
            daemon.start()
        conn = connect(tmp_path, daemon.uri)
        conn.conn = _KillBefore(conn.conn, daemon, step)
        with pytest.raises(libvirt.libvirtError):
            conn.define_and_start(xml(vm(20 + n)), vm(20 + n))
        lease = lease_of(tmp_path, vm(20 + n))
        if step == 'lookupByUUIDString':
            assert lease is None      # failed before any claim
        else:
            # libvirt may or may not have the domain: no evidence, kept.
            assert lease is not None
        daemon.stop()
    with leases.LeaseStore(db(tmp_path)) as store:
        uids = [le.uid for le in store.list()]
    assert len(uids) == len(set(uids))
    # Kill a process holding an instance lock: the kernel drops it.
    pid = os.fork()
    if pid == 0:
        with locks.InstanceLock(db(tmp_path), vm(30).uuid):
            os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    with locks.InstanceLock(db(tmp_path), vm(30).uuid, timeout=2):
        pass


# -- undefine, then another client starts the domain before the release ---
ONE_UID = {'acme': '200000-200000', 'globex': '201000-201099'}

# What libvirtd and its libxl daemon hook do for "virsh create saved.xml":
# the hook's start check (the daemon hook's own code, in a process of its
# own, taking no instance lock), then libvirt starts the domain.
_OUTSIDER = '''
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
hook.LibxlHook(settings).check_restricted(dom.name, dom,
                                          restrict.read_record(dom))
libvirt.open(uri).createXML(data.decode(), 0)
'''


def _one_uid_conf_file(tmp_path) -> str:
    path = tmp_path / 'dm.conf'
    path.write_text(
        '[dm_restrict]\n'
        'tenant_uid_ranges = acme:%s,globex:%s\n'
        'device_model_syntax = runas\n'
        'lease_db = %s\n'
        'chroot_base_dir = %s\n'
        'reap_device_models = false\n'
        'allowed_host_paths = %s\n'
        'writable_shared_host_paths = %s\n'
        'allowed_bridges = xenbr0,br-ten1\n'
        'allowed_networks = default\n'
        % (ONE_UID['acme'], ONE_UID['globex'], db(tmp_path),
           tmp_path / 'chroots', base.images_dir(), base.images_dir()))
    return str(path)


def _one_uid_connect(tmp_path, uri) -> virt.HookedConnection:
    conf = base.make_conf(tmp_path, domain_hooks=['dm_restrict'],
                          tenant_uid_ranges=ONE_UID)
    return virt.HookedConnection.open(uri, loader.HookManager(conf))


def test_undefine_keeps_the_lease_of_a_domain_started_before_release(
        tmp_path, private_libvirtd):
    """libvirt said "no such domain" to undefine; before the release,
    another client (checked by the daemon hook, without the instance
    lock) starts the saved definition.  The release asks libvirt again
    inside the lease database's write transaction, which the hook's start
    check shares: the running domain keeps its lease, and the tenant's
    next boot is refused rather than handed the same uid.
    """
    conf_file = _one_uid_conf_file(tmp_path)
    conn = _one_uid_connect(tmp_path, private_libvirtd.uri)
    victim, other = vm(31), vm(32)
    sent = []
    real_conn = conn.conn

    class _Recording:
        def __getattr__(self, name):
            return getattr(real_conn, name)

        def defineXML(self, text):
            sent.append(text)
            return real_conn.defineXML(text)

    conn.conn = _Recording()
    dom = conn.define(xml(victim), victim)
    conn.conn = real_conn
    # What libvirt holds ("virsh dumpxml"; the test driver drops the xen
    # namespace from its own dump).
    saved = sent[0]
    uid = record_uid(dom.dom)
    real_is_gone = conn.is_gone
    started = {}

    def is_gone(instance):
        gone = real_is_gone(instance)
        if gone and not started:
            path = tmp_path / 'saved.xml'
            path.write_text(saved)
            started['proc'] = subprocess.run(
                [sys.executable, '-c', _OUTSIDER, conf_file,
                 private_libvirtd.uri, str(path)],
                capture_output=True, text=True, cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
        return gone

    conn.is_gone = is_gone
    dom.undefine()
    conn.is_gone = real_is_gone
    assert started['proc'].returncode == 0, started['proc'].stderr
    raw = libvirt.open(private_libvirtd.uri)
    assert raw.lookupByUUIDString(victim.uuid).isActive()
    assert lease_of(tmp_path, victim).uid == uid
    with pytest.raises(exception.RangeExhausted):
        conn.define_and_start(xml(other), other)
    live = [d.UUIDString() for d in raw.listAllDomains(
        libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        if restrict.record_in_domain_xml(d.XMLDesc(0)) is not None and
        restrict.record_in_domain_xml(d.XMLDesc(0)).uid == uid]
    assert live == [victim.uuid]


# -- two reconciles: one never lifts the hold the other just placed ------
class _ListThen:
    """A libvirt connection that runs ``after`` right after listing."""

    def __init__(self, conn, after):
        self._conn, self._after = conn, after

    def __getattr__(self, name):
        real = getattr(self._conn, name)
        if name != 'listAllDomains':
            return real

        def call(*args):
            listed = real(*args)
            if self._after is not None:
                after, self._after = self._after, None
                after()
            return listed
        return call


def test_reconcile_never_lifts_a_hold_placed_after_its_listing(
        tmp_path, private_libvirtd):
    """Reconcile A lists libvirt; then a rendered domain X is defined on
    the uid of a running domain Y that lost its lease, and reconcile B
    holds X.  A's older listing shows no conflict for X, but A lifts a
    hold only after listing libvirt again under the instance lock and the
    write transaction: X stays held and cannot start beside Y.
    """
    conf_file = _one_uid_conf_file(tmp_path)
    conn = _one_uid_connect(tmp_path, private_libvirtd.uri)
    hook = conn.hooks.hooks[0][1]
    y, x = vm(34), vm(35)
    conn.define_and_start(xml(y), y)                  # running on U
    with leases.LeaseStore(db(tmp_path)) as store:
        store.release(y.uuid)        # lease lost: a restored database
    rendered_x = hook.prepare(xml(x), x)              # render: leased U
    assert lease_of(tmp_path, x).uid == 200000
    raw = libvirt.open(private_libvirtd.uri)
    out = {}

    def meanwhile():
        raw.defineXML(rendered_x)                     # virsh define
        out['b'] = subprocess.run(
            [sys.executable, '-m', 'xen_dm_restrict_plugin.cmd.cli',
             'leases', 'reconcile', '--config-file', conf_file,
             '--connect', private_libvirtd.uri, '--apply', '--grace', '0'],
            capture_output=True, text=True, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
        with leases.LeaseStore(db(tmp_path)) as store:
            out['held'] = store.holds()

    settings = conf_mod.load(base.make_conf(tmp_path,
                                            tenant_uid_ranges=ONE_UID))
    with leases.LeaseStore(db(tmp_path)) as store:
        findings = reconcile.Reconciler(settings, store, grace=0).run(
            _ListThen(libvirt.open(private_libvirtd.uri), meanwhile),
            apply=True)
    assert x.uuid in out['held'], out['b'].stdout + out['b'].stderr
    stale = [f for f in findings if f.kind == reconcile.STALE_HOLD and
             f.uuid == x.uuid]
    assert stale and not stale[0].resolved and 'kept' in stale[0].action
    with leases.LeaseStore(db(tmp_path)) as store:
        assert x.uuid in store.holds()
    with pytest.raises(exception.OperationRefused, match='held'):
        conn.lookup(x).create()
    live = [d.UUIDString() for d in raw.listAllDomains(
        libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
    assert x.uuid not in live and y.uuid in live


def test_reconcile_lifts_a_hold_whose_conflict_is_gone(tmp_path,
                                                       private_libvirtd):
    """The fresh look does not keep holds forever: once the conflict is
    gone, the next reconcile lifts the hold.
    """
    conn = _one_uid_connect(tmp_path, private_libvirtd.uri)
    x = vm(36)
    conn.define(xml(x), x)
    with leases.LeaseStore(db(tmp_path)) as store:
        store.hold(x.uuid, 'a conflict since resolved')
    settings = conf_mod.load(base.make_conf(tmp_path,
                                            tenant_uid_ranges=ONE_UID))
    with leases.LeaseStore(db(tmp_path)) as store:
        findings = reconcile.Reconciler(settings, store, grace=0).run(
            libvirt.open(private_libvirtd.uri), apply=True)
        assert store.holds() == {}
    assert [(f.kind, f.resolved, f.action) for f in findings] == [
        (reconcile.STALE_HOLD, True, 'hold lifted')]
