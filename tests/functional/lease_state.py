"""A stateful model of boots, refusals, failures, defines, starts,
undefines, reconciles and releases from several actors, against a
private libvirtd (tests/functional/libvirtd.py).

After every step the invariant of the product is checked against what
libvirt and the lease database really hold: no two live domains share a
uid, and every live restricted domain holds its lease; after every
reconcile, no lease without a domain is older than its grace.  Run by
tests/functional/test_leases_state.py (a few hundred steps) and by
``bench/run.py --steps leases_state`` (thousands).
"""

import pathlib
import shutil
import tempfile
import time
import typing

from hypothesis import stateful
from hypothesis import strategies as st
import libvirt

from tests import base
from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin.host import reconcile
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import loader
from xen_dm_restrict_plugin.orchestrator import virt

INSTANCES = 5
ACTORS = 3
PCI = ("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
       "<address domain='0x0000' bus='0x00' slot='0x1f' function='0x0'/>"
       "</source></hostdev>")
#: What the model counts, for the bench.
STATS: typing.Dict[str, int] = {}


def instance(n: int, tenant: str = 'acme') -> hooks.Instance:
    return hooks.Instance('5a5a5a5a-0000-4000-8000-%012d' % n, tenant)


def domain_xml(n: int, name: typing.Optional[str] = None) -> str:
    return base.fixture('hvm.xml').replace(
        base.HVM_UUID, instance(n).uuid).replace(
        'fixture-hvm', name or 'state-%d' % n)


class LeaseMachine(stateful.RuleBasedStateMachine):
    """Set :attr:`uri` to the private libvirtd's before running."""

    uri: str = ''

    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix='xdr-state-')
        self.raw = libvirt.open(self.uri)
        for dom in self.raw.listAllDomains(0):
            if dom.name() != 'test':
                persistent = dom.isPersistent()
                if dom.isActive():
                    dom.destroy()
                if persistent:
                    dom.undefine()
        # Small ranges, so uids are reused and exhaustion happens.
        conf = base.make_conf(
            pathlib.Path(self.tmp), domain_hooks=['dm_restrict'],
            tenant_uid_ranges={'acme': '200000-200005',
                               'globex': '201000-201005'})
        self.settings = conf_mod.load(conf)
        self.actors = [virt.HookedConnection.open(self.uri,
                                                  loader.HookManager(conf))
                       for _ in range(ACTORS)]
        self.store = leases.LeaseStore(self.settings.lease_db)

    def teardown(self):
        for actor in self.actors:
            for _, hook in actor.hooks.hooks:
                hook.close()
            actor.close()
        self.store.close()
        self.raw.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _count(self, what: str) -> None:
        STATS[what] = STATS.get(what, 0) + 1

    def _try(self, what: str, func, *args) -> None:
        self._count('steps')
        try:
            func(*args)
            self._count(what + ' ok')
        except Exception:  # noqa: B902 - refusals and libvirt errors
            self._count(what + ' failed')

    def _snapshot(self):
        return sorted((le.uuid, le.uid) for le in self.store.list())

    # -- the orchestrator's calls, through the wrapper ------------------
    @stateful.rule(a=st.integers(0, ACTORS - 1),
                   n=st.integers(0, INSTANCES - 1),
                   clash=st.booleans())
    def boot(self, a, n, clash):
        # A shared name makes libvirt refuse the define of a second uuid.
        self._try('boot', self.actors[a].define_and_start,
                  domain_xml(n, 'shared' if clash else None), instance(n))

    @stateful.rule(a=st.integers(0, ACTORS - 1),
                   n=st.integers(0, INSTANCES - 1))
    def boot_refused_by_policy(self, a, n):
        before = self._snapshot()
        self._try('refused boot', self.actors[a].define_and_start,
                  base.add_device(domain_xml(n), PCI), instance(n))
        assert self._snapshot() == before

    @stateful.rule(a=st.integers(0, ACTORS - 1),
                   n=st.integers(0, INSTANCES - 1))
    def boot_for_another_tenant(self, a, n):
        self._try('other-tenant boot', self.actors[a].define_and_start,
                  domain_xml(n), instance(n, 'globex'))

    @stateful.rule(a=st.integers(0, ACTORS - 1),
                   n=st.integers(0, INSTANCES - 1))
    def define(self, a, n):
        self._try('define', self.actors[a].define, domain_xml(n),
                  instance(n))

    def _on(self, a, n, what, method):
        def call():
            dom = self.actors[a].lookup(instance(n))
            if dom is None:
                raise LookupError('no domain')
            getattr(dom, method)()
        self._try(what, call)

    @stateful.rule(a=st.integers(0, ACTORS - 1),
                   n=st.integers(0, INSTANCES - 1))
    def start(self, a, n):
        self._on(a, n, 'start', 'create')

    @stateful.rule(a=st.integers(0, ACTORS - 1),
                   n=st.integers(0, INSTANCES - 1))
    def destroy(self, a, n):
        self._on(a, n, 'destroy', 'destroy')

    @stateful.rule(a=st.integers(0, ACTORS - 1),
                   n=st.integers(0, INSTANCES - 1))
    def undefine(self, a, n):
        self._on(a, n, 'undefine', 'undefine')

    @stateful.rule(a=st.integers(0, ACTORS - 1),
                   n=st.integers(0, INSTANCES - 1))
    def transient_boot(self, a, n):
        self._try('createXML', self.actors[a].createXML, domain_xml(n),
                  instance(n))

    @stateful.rule(n=st.integers(0, INSTANCES - 1))
    def render(self, n):
        """``xen-dm-restrict render``: a lease, no domain (yet)."""
        hook = self.actors[0].hooks.hooks[0][1]
        self._try('render', hook.prepare, domain_xml(n), instance(n))

    # -- other clients of libvirtd -------------------------------------
    @stateful.rule(n=st.integers(0, INSTANCES - 1))
    def virsh_start(self, n):
        """A start outside the wrapper; libvirtd's hook checks it."""
        def call():
            dom = self.raw.lookupByUUIDString(instance(n).uuid)
            record = restrict.record_in_domain_xml(dom.XMLDesc(0))
            if record is not None and leases.start_blocker(
                    self.store, instance(n).uuid, record.uid):
                raise RuntimeError('refused by the daemon hook')
            dom.create()
        self._try('virsh start', call)

    @stateful.rule(n=st.integers(0, INSTANCES - 1))
    def virsh_destroy(self, n):
        self._try('virsh destroy', lambda: self.raw.lookupByUUIDString(
            instance(n).uuid).destroy())

    # -- the operator ---------------------------------------------------
    @stateful.rule(grace=st.sampled_from([0.0, 3600.0]))
    def reconcile(self, grace):
        self._count('steps')
        self._count('reconcile')
        started = time.time()
        reconcile.Reconciler(self.settings, self.store, grace=grace).run(
            self.raw, apply=True)
        known = {dom.UUIDString() for dom in self.raw.listAllDomains(0)}
        for lease in self.store.list():
            assert lease.uuid in known or \
                lease.created_at > started - grace, (
                    'lease %s without a domain outlived reconcile with '
                    'grace %g' % (lease, grace))

    @stateful.rule(n=st.integers(0, INSTANCES - 1))
    def release(self, n):
        """``leases release`` of an instance whose domain is gone."""
        def call():
            try:
                self.raw.lookupByUUIDString(instance(n).uuid)
                raise RuntimeError('it has a domain')
            except libvirt.libvirtError as err:
                if not virt.is_no_domain(err):
                    raise
            self.store.release(instance(n).uuid)
        self._try('release', call)

    # -- what must always hold ------------------------------------------
    @stateful.invariant()
    def no_shared_uid_and_every_live_domain_leased(self):
        seen: typing.Dict[int, str] = {}
        for dom in self.raw.listAllDomains(
                libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            record = restrict.record_in_domain_xml(dom.XMLDesc(0))
            if record is None:
                continue
            uuid = dom.UUIDString()
            assert record.uid not in seen, (
                'uid %d shared by live domains %s and %s'
                % (record.uid, seen[record.uid], uuid))
            seen[record.uid] = uuid
            lease = self.store.get(uuid)
            assert lease is not None and lease.uid == record.uid, (
                'live domain %s runs as uid %d but holds %s'
                % (uuid, record.uid, lease))
