"""Make the lease database and libvirt's domains agree again.

The lease database and libvirt can drift apart: an orchestrator crashes
between undefine and release, a database is restored from a backup, an
operator defines a domain by hand.  Every drift is a way for two device
models to share a uid or for a uid to be reused while its old QEMU runs,
so reconcile finds each kind and, when asked, repairs it:

* a lease whose domain is gone: reap its uid, then release it;
* a restricted domain without a lease: lease it the uid its record
  names, when that uid is free and inside its tenant's range;
* a uid claimed by two domains, or a recorded uid leased to another
  domain: hold the domains (they are refused at start) until an operator
  decides;
* a hold whose conflict is gone: lift it.

It only reads libvirt (never defines or undefines anything), and running
it twice in a row repairs nothing the second time.

Under concurrency, every repair is decided again where it is made: a
lease is released only while holding the instance's lifecycle lock
(:mod:`~xen_dm_restrict_plugin.leases.locks`, shared with the libvirt
wrapper's define, start and undefine) and inside the lease database's
write transaction (shared with every start check, the libvirt daemon
hook's included), after libvirt answered again, there, that the domain
does not exist.  A domain defined and started between the listing and
the repair keeps its lease; one started without the wrapper in that
moment is refused at start instead.  A domain is leased its recorded
uid only while libvirt still shows it.  A hold is lifted only under the
same lock and transaction, after libvirt is listed again there and the
conflict is gone: another reconcile may have placed it after this run's
listing.  A lease dated in the future (the clock stepped back) is dated
now, so its grace period ends.
"""

import dataclasses
import logging
import time
import typing

import libvirt

from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import reaper as reaper_mod
from xen_dm_restrict_plugin.leases import locks
from xen_dm_restrict_plugin.leases import store as leases

LOG = logging.getLogger(__name__)

ORPHAN_LEASE = 'orphan-lease'
UNLEASED_DOMAIN = 'unleased-domain'
UID_CONFLICT = 'uid-conflict'
STALE_HOLD = 'stale-hold'

#: Seconds a lease may exist before its domain is defined.
DEFAULT_GRACE = 300.0


@dataclasses.dataclass
class Finding:
    """One discrepancy, what was (or would be) done, and whether it was.

    :param kind: ORPHAN_LEASE, UNLEASED_DOMAIN, UID_CONFLICT or
        STALE_HOLD.
    :param resolved: True once repaired; conflicts stay unresolved until
        an operator decides.
    """

    kind: str
    uuid: str
    uid: typing.Optional[int]
    tenant: typing.Optional[str]
    detail: str
    action: str
    resolved: bool = False


def restricted_domains(listed: typing.Sequence[libvirt.virDomain]
                       ) -> typing.Dict[str, typing.Tuple[str,
                                                          restrict.Record]]:
    """uuid -> (name, record) of the listed domains that have a record."""
    found = {}
    for dom in listed:
        record = restrict.record_in_domain_xml(dom.XMLDesc(0))
        if record is not None:
            found[dom.UUIDString()] = (dom.name(), record)
    return found


class Reconciler:
    """Compares one lease database with one libvirt connection.

    :param settings: the validated ``[dm_restrict]`` settings.
    :param store: the lease database.
    :param reaper: kills a uid's processes before its lease is released.
    :param grace: seconds a new lease may go without a domain: a boot
        takes its lease before libvirt defines the domain.
    """

    def __init__(self, settings: conf_mod.Settings,
                 store: leases.LeaseStore,
                 reaper: typing.Optional[reaper_mod.Reaper] = None,
                 grace: float = DEFAULT_GRACE):
        self.settings = settings
        self.store = store
        self.reaper = reaper or reaper_mod.Reaper(settings)
        self.grace = grace
        #: Leases without a domain left alone for being younger than the
        #: grace period, in the last :meth:`run`.
        self.skipped_young = 0

    def run(self, conn: libvirt.virConnect,
            apply: bool = False) -> typing.List[Finding]:
        """Find (and with ``apply``, repair) every discrepancy."""
        now = time.time()
        if apply:
            self.store.clamp_future(now)
        listed = conn.listAllDomains(0)
        domains = restricted_domains(listed)
        known = {dom.UUIDString() for dom in listed}
        young = now - self.grace
        findings: typing.List[Finding] = []
        conflicts = self._conflicts(domains)
        for uuid, reason in sorted(conflicts.items()):
            name, record = domains[uuid]
            finding = Finding(UID_CONFLICT, uuid, record.uid, record.tenant,
                              'domain %s: %s' % (name, reason),
                              'hold the domain until an operator decides')
            if apply:
                self.store.hold(uuid, reason)
                finding.action = 'held: refused at start until an operator '\
                    'resolves it and runs reconcile again'
            findings.append(finding)
        self.skipped_young = 0
        for lease in self.store.list():
            if lease.uuid not in known:
                # A lease dated in the future is judged as taken now.
                if min(lease.created_at, now) <= young:
                    findings.append(self._orphan(conn, lease, apply))
                else:
                    self.skipped_young += 1
        for uuid, (name, record) in sorted(domains.items()):
            if uuid not in conflicts and self.store.get(uuid) is None:
                findings.append(self._unleased(conn, uuid, name, record,
                                               apply))
        for uuid, reason in sorted(self.store.holds().items()):
            if uuid not in conflicts:
                findings.append(self._stale_hold(conn, uuid, reason,
                                                 apply))
        for finding in findings:
            LOG.warning('reconcile: %s instance %s uid %s tenant %s: %s; %s',
                        finding.kind, finding.uuid, finding.uid,
                        finding.tenant, finding.detail, finding.action)
        return findings

    def _conflicts(self, domains,
                   every: typing.Optional[typing.Sequence[leases.Lease]]
                   = None) -> typing.Dict[str, str]:
        """uuid -> reason, for every domain whose uid is in conflict.

        :param every: the leases to judge against (read inside a write
            transaction); the store's current leases when None.
        """
        if every is None:
            every = self.store.list()
        by_uuid = {lease.uuid: lease for lease in every}
        by_lease_uid = {lease.uid: lease for lease in every}
        by_uid: typing.Dict[int, typing.List[str]] = {}
        for uuid, (_, record) in domains.items():
            by_uid.setdefault(record.uid, []).append(uuid)
        conflicts = {}
        for uid, uuids in by_uid.items():
            names = ', '.join(sorted(domains[u][0] for u in uuids))
            if len(uuids) > 1:
                for uuid in uuids:
                    conflicts[uuid] = ('uid %d is claimed by domains %s'
                                       % (uid, names))
                continue
            [uuid] = uuids
            holder = by_lease_uid.get(uid)
            if holder is not None and holder.uuid != uuid:
                conflicts[uuid] = ('its recorded uid %d is leased to '
                                   'instance %s' % (uid, holder.uuid))
                continue
            own = by_uuid.get(uuid)
            if own is not None and own.uid != uid:
                conflicts[uuid] = ('its recorded uid %d differs from its '
                                   'leased uid %d' % (uid, own.uid))
                continue
            if own is None:
                problem = self._unleasable(uid, domains[uuid][1].tenant)
                if problem:
                    conflicts[uuid] = problem
        return conflicts

    def _unleasable(self, uid: int, tenant: str) -> typing.Optional[str]:
        try:
            uid_range = self.settings.range_for(tenant)
        except exception.Refused:
            return 'its tenant %s has no uid range' % tenant
        if uid not in uid_range:
            return ('its recorded uid %d is outside tenant %s\'s range %s'
                    % (uid, tenant, uid_range))
        if not leases.uid_has_no_account(uid):
            return 'its recorded uid %d belongs to an account' % uid
        return None

    def _lock(self, uuid: str) -> locks.InstanceLock:
        return locks.InstanceLock(
            self.settings.lease_db, uuid,
            max(locks.DEFAULT_TIMEOUT, self.settings.lease_db_timeout))

    @staticmethod
    def _has_domain(conn: libvirt.virConnect, uuid: str
                    ) -> typing.Optional[libvirt.virDomain]:
        """The domain, or None only when libvirt answered "no such domain".

        :raises libvirt.libvirtError: libvirt could not tell.
        """
        try:
            return conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _orphan(self, conn: libvirt.virConnect, lease: leases.Lease,
                apply: bool) -> Finding:
        finding = Finding(ORPHAN_LEASE, lease.uuid, lease.uid, lease.tenant,
                          'libvirt has no domain with this uuid',
                          'reap the uid, then release the lease')
        if not apply:
            return finding

        def still_orphan() -> bool:
            return self._has_domain(conn, lease.uuid) is None

        def reap(uid: int) -> None:
            reaper_mod.reap_for_release(
                self.reaper, uid, 'orphan lease of instance %s' % lease.uuid)

        try:
            with self._lock(lease.uuid):
                released = self.store.release_orphan(lease, still_orphan,
                                                     reap)
        except libvirt.libvirtError as err:
            finding.action = ('not released: libvirt could not tell '
                              'whether the domain exists (%s)' % err)
            return finding
        except exception.DmRestrictError as err:
            finding.action = 'not released: %s' % err
            return finding
        if released:
            finding.action = 'reaped and released'
        else:
            finding.action = ('kept: its domain appeared (or the lease '
                              'changed) meanwhile')
        finding.resolved = True
        return finding

    def _unleased(self, conn: libvirt.virConnect, uuid: str, name: str,
                  record: restrict.Record, apply: bool) -> Finding:
        finding = Finding(UNLEASED_DOMAIN, uuid, record.uid, record.tenant,
                          'domain %s is restricted to uid %d but holds no '
                          'lease' % (name, record.uid),
                          'lease it its recorded uid')
        if not apply:
            return finding
        try:
            with self._lock(uuid):
                dom = self._has_domain(conn, uuid)
                now = (restrict.record_in_domain_xml(dom.XMLDesc(0))
                       if dom is not None else None)
                if now is None or now.uid != record.uid:
                    finding.action = ('not leased: the domain is gone or '
                                      'changed meanwhile')
                    finding.resolved = True
                    return finding
                self.store.insert(uuid, record.tenant, record.uid)
        except libvirt.libvirtError as err:
            finding.action = ('not leased: libvirt could not tell whether '
                              'the domain still exists (%s)' % err)
            return finding
        except exception.DmRestrictError as err:
            finding.action = 'not leased: %s' % err
            return finding
        finding.action = 'leased its recorded uid'
        finding.resolved = True
        return finding

    def _stale_hold(self, conn: libvirt.virConnect, uuid: str, reason: str,
                    apply: bool) -> Finding:
        """Lift a hold whose conflict this run's listing no longer shows.

        That listing may be older than the hold (another reconcile held
        the domain after it), so the hold is lifted only under the
        instance's lock and inside the lease database's write
        transaction, after libvirt is listed again there and the
        conflict is still gone.  Every start reads its hold under that
        same lock, and a hold placed meanwhile is judged on a listing at
        least as new as the one that placed it, so no run lifts a hold
        it has not seen to be stale.
        """
        finding = Finding(STALE_HOLD, uuid, None, None,
                          'held for "%s", which no longer holds' % reason,
                          'lift the hold')
        if not apply:
            return finding

        def still_clear(every: typing.List[leases.Lease]) -> bool:
            fresh = restricted_domains(conn.listAllDomains(0))
            return uuid not in self._conflicts(fresh, every)

        try:
            with self._lock(uuid):
                lifted = self.store.unhold_if(uuid, still_clear)
        except libvirt.libvirtError as err:
            finding.action = ('kept: libvirt could not list the domains '
                              'again (%s)' % err)
            return finding
        except exception.DmRestrictError as err:
            finding.action = 'kept: %s' % err
            return finding
        if lifted:
            finding.action = 'hold lifted'
            finding.resolved = True
        else:
            finding.action = ('kept: the conflict is back (or the hold is '
                              'gone) on a fresh look')
        return finding
