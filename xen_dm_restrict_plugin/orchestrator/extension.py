"""The ``dm_restrict`` domain hook: restrict every tenant VM's device model.

This is the stevedore-loaded entry point an orchestrator enables.  For
each domain it parses the XML once, refuses what cannot work restricted,
leases the instance a uid from its tenant's range, and writes the
restriction and its record into the XML.  Everything that can refuse runs
before the lease is taken, and what runs after it runs inside the lease's
transaction, so a refused boot leaves nothing behind.  A boot that fails
later gives back only the claim it took (:meth:`DmRestrictHook.
prepare_with_undo`), never a lease another boot holds.
"""

import logging
import os
import typing

from oslo_config import cfg

from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin.core import disks
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin.core import policy
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import capabilities
from xen_dm_restrict_plugin.host import netfacts
from xen_dm_restrict_plugin.host import reaper as reaper_mod
from xen_dm_restrict_plugin.leases import locks
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import operations

LOG = logging.getLogger(__name__)


class DmRestrictHook(hooks.DomainHook):
    """Restrict the device model of every HVM qemu-xen tenant VM.

    :param conf: the orchestrator's configuration; ``[dm_restrict]`` is
        registered and validated here.
    :param settings: already validated settings (tests, embedding).
    :raises ConfigError: the ``[dm_restrict]`` options are invalid.
    """

    CONFIG_GROUP = conf_mod.GROUP

    def __init__(self, conf: cfg.ConfigOpts,
                 settings: typing.Optional[conf_mod.Settings] = None):
        super().__init__(conf)
        if settings is None:
            conf_mod.register_opts(conf)
            settings = conf_mod.load(conf)
        self.settings = settings
        self._store: typing.Optional[leases.LeaseStore] = None

    @property
    def store(self) -> leases.LeaseStore:
        if self._store is None:
            self._store = leases.LeaseStore(self.settings.lease_db,
                                            self.settings.lease_db_timeout)
        return self._store

    def _existing_store(self) -> typing.Optional[leases.LeaseStore]:
        """The store, or None when the database does not exist (a check
        that refuses must not create it).
        """
        if self._store is None:
            self._store = leases.LeaseStore.open_existing(
                self.settings.lease_db, self.settings.lease_db_timeout)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def restriction_for(self, lease: leases.Lease,
                        syntax: restrict.DeviceModelSyntax
                        ) -> restrict.Restriction:
        return restrict.Restriction(
            tenant=lease.tenant, uid=lease.uid,
            gid=self.settings.gid_for(lease.uid),
            chroot=self.settings.chroot_dir(lease.uid), syntax=syntax)

    def prepare(self, xml: str, instance: hooks.Instance) -> str:
        return self.prepare_with_undo(xml, instance)[0]

    def prepare_with_undo(self, xml: str, instance: hooks.Instance,
                          finish: typing.Optional[
                              typing.Callable[[str], None]] = None
                          ) -> typing.Tuple[str, hooks.Undo]:
        """Restrict the domain; the undo gives back this call's claim.

        :param finish: called with the restricted XML before the lease
            is committed (e.g. to write it out); when it raises, nothing
            was leased.
        """
        try:
            return self._prepare(xml, instance, finish)
        except exception.DmRestrictError as err:
            LOG.warning('refused domain for instance %s of tenant %s: %s',
                        instance.uuid, instance.tenant, err)
            raise

    def lifecycle_lock(self, instance: hooks.Instance) -> locks.InstanceLock:
        return locks.InstanceLock(
            self.settings.lease_db, instance.uuid,
            max(locks.DEFAULT_TIMEOUT, self.settings.lease_db_timeout))

    def validate(self, xml: str, instance: hooks.Instance) -> None:
        """Run every check of :meth:`prepare` that needs no lease, before
        the wrapper takes any lock: a refused domain creates no file.
        """
        try:
            self._validated(xml, instance)
        except exception.DmRestrictError as err:
            LOG.warning('refused domain for instance %s of tenant %s: %s',
                        instance.uuid, instance.tenant, err)
            raise

    def _validated(self, xml: str, instance: hooks.Instance):
        """(dom, foreign args, uid range, syntax) of a domain that passes
        every check; range and syntax are None for a domain with no dom0
        device model.
        """
        dom = self.settings.parse_domain(xml)
        uuid = dom.uuid
        if uuid is not None and uuid != instance.uuid:
            raise exception.InvalidDomainXML(
                '<uuid>%s</uuid>' % uuid,
                'it is not the uuid of instance %s' % instance.uuid,
                'define the domain with the instance uuid')
        record = restrict.read_record(dom)
        foreign = restrict.foreign_args(dom, record)
        scope = pathscope.Scope(instance.tenant, instance.uuid)
        if uuid is None:
            dom.set_uuid(instance.uuid)
        # What render reads of the host, the check that follows reads
        # too: once, for this call only.
        view = disks.HostView(self.settings, scope)
        for change in disks.render(dom, self.settings, scope, view):
            LOG.info('instance %s of tenant %s: %s', instance.uuid,
                     instance.tenant, change)
        # Checked again, strictly, by libvirtd's hook at prepare.
        policy.check_domain(dom, foreign, self.settings,
                            netfacts.HostNetwork(self.settings), scope=scope,
                            view=view)
        if not dom.kind.has_dom0_device_model:
            return dom, foreign, None, None
        if record is not None and record.tenant != instance.tenant:
            raise exception.InvalidDomainXML(
                'dm_restrict metadata record',
                'it belongs to tenant %r, not %r'
                % (record.tenant, instance.tenant),
                'remove the stale <metadata> record before defining the '
                'domain for another tenant')
        uid_range = self.settings.range_for(instance.tenant)
        syntax = capabilities.syntax_for(self.settings, dom.emulator)
        if self.settings.reap_device_models:
            # A uid that cannot be reaped must not be leased: its next
            # start would be refused anyway.
            self.reaper.check_available()
        return dom, foreign, uid_range, syntax

    def _prepare(self, xml: str, instance: hooks.Instance,
                 finish: typing.Optional[typing.Callable[[str], None]]
                 ) -> typing.Tuple[str, hooks.Undo]:
        dom, foreign, uid_range, syntax = self._validated(xml, instance)
        if uid_range is None:
            kind = dom.kind
            reasons = policy.pv_dom0_qemu_reasons(dom)
            if reasons:
                LOG.warning('instance %s of tenant %s: libxl serves %s of '
                            'this %s guest with a dom0 QEMU that runs as '
                            'root, unrestricted (pv_dom0_qemu = allow)',
                            instance.uuid, instance.tenant,
                            ', '.join(reasons), kind.value)
            LOG.info('instance %s of tenant %s is a %s guest with no dom0 '
                     'device model to restrict; passed the policy '
                     'unchanged', instance.uuid, instance.tenant, kind.value)
            out = dom.to_string()
            if finish is not None:
                finish(out)
            return out, hooks.nothing_to_undo

        rendered: typing.Dict[str, typing.Any] = {}

        def render(lease: leases.Lease, created: bool) -> None:
            # Inside the claim's transaction: an error here rolls the
            # claim back, so nothing is left to give back.
            if dom.uuid is None:
                dom.set_uuid(instance.uuid)
            restriction = self.restriction_for(lease, syntax)
            restrict.apply(dom, restriction, foreign, self.settings.launcher)
            out = dom.to_string()
            if finish is not None:
                finish(out)
            rendered.update(out=out, restriction=restriction)

        lease, created = self.store.claim(
            instance.uuid, instance.tenant, uid_range,
            leases.uid_has_no_account if self.settings.gid is not None
            else leases.uid_and_gid_are_free, inside=render)
        restriction = rendered['restriction']
        LOG.info('instance %s of tenant %s: device model restricted to uid '
                 '%d gid %d (%s lease), chroot %s, args %s',
                 instance.uuid, instance.tenant, restriction.uid,
                 restriction.gid, 'new' if created else 'existing',
                 restriction.chroot, ' '.join(restriction.args()))

        def undo(still_gone: hooks.Evidence = hooks.no_domain_yet) -> None:
            self.give_back(lease, instance, still_gone)
        return rendered['out'], undo

    def give_back(self, lease: leases.Lease, instance: hooks.Instance,
                  still_gone: hooks.Evidence = hooks.no_domain_yet
                  ) -> None:
        """Give back one claim a prepare took, for a domain that was not
        defined after all.

        A claim among several is only counted down.  The last claim
        releases the lease (after reaping the uid) only when
        ``still_gone``, asked inside the lease database's write
        transaction, answers that libvirt has no domain of the instance.
        """
        outcome = self.store.give_back(
            instance.uuid, still_gone,
            lambda uid: self._reap(uid, instance,
                                   'before giving back its lease',
                                   releasing=True),
            claim=lease, tenant=instance.tenant)
        LOG.info('instance %s of tenant %s: giving back the claim on uid '
                 '%d: %s', instance.uuid, instance.tenant, lease.uid,
                 outcome)

    # -- lifecycle --------------------------------------------------------
    def _reap(self, uid: int, instance: hooks.Instance, why: str,
              releasing: bool = False) -> None:
        if not self.settings.reap_device_models:
            LOG.info('instance %s of tenant %s: not reaping uid %d %s '
                     '(reap_device_models is off)', instance.uuid,
                     instance.tenant, uid, why)
            return
        context = 'instance %s of tenant %s, %s' % (
            instance.uuid, instance.tenant, why)
        if releasing:
            result = reaper_mod.reap_for_release(self.reaper, uid, context)
        else:
            result = self.reaper.reap(uid, context)
        if result is not None:
            LOG.info('instance %s of tenant %s: %s', instance.uuid,
                     instance.tenant, result.summary())

    @property
    def reaper(self) -> reaper_mod.Reaper:
        """In-process as root; through the privsep daemon otherwise."""
        if os.geteuid() == 0:
            return reaper_mod.Reaper(self.settings)
        from xen_dm_restrict_plugin.orchestrator import privileged
        return privileged.PrivsepReaper(self.settings)

    def _restricted_record(self, xml: str, instance: hooks.Instance,
                           operation: str
                           ) -> typing.Optional[restrict.Record]:
        """Our record in ``xml``; None for a domain with nothing to
        restrict; refuses an HVM qemu-xen domain that is not restricted.
        """
        dom = self.settings.parse_domain(xml)
        record = restrict.read_record(dom)
        if record is None and dom.hypervisor == 'xen' and \
                dom.kind.has_dom0_device_model:
            raise operations.refuse(
                operation, dom.name or instance.uuid,
                'the domain carries no dm_restrict record, so its device '
                'model would run as root', 'define it through the '
                'dm_restrict hook')
        self._check_tenant(record, instance, operation, dom.name)
        return record

    @staticmethod
    def _check_tenant(record: typing.Optional[restrict.Record],
                      instance: hooks.Instance, operation: str,
                      name: typing.Optional[str]) -> None:
        """Refuse a handle that names another tenant than the record."""
        if record is not None and record.tenant != instance.tenant:
            raise operations.refuse(
                operation, name or instance.uuid,
                'the domain belongs to tenant %s, not to tenant %s the '
                'instance handle names' % (record.tenant, instance.tenant),
                'act on the instance with the handle of the tenant that '
                'owns it')

    def before_start(self, xml: str, instance: hooks.Instance) -> None:
        """Refuse a held, unleased or unrestricted domain; reap its uid.

        Called right before the domain starts.
        """
        try:
            record = self._restricted_record(xml, instance, operations.START)
            if record is None:
                return
            blocker = leases.start_blocker(
                self._existing_store(), instance.uuid, record.uid,
                gid_is_uid=self.settings.gid is None, tenant=record.tenant)
            if blocker is not None:
                raise operations.refuse(operations.START, instance.uuid,
                                        *blocker)
            self._reap(record.uid, instance, 'before start')
        except exception.DmRestrictError as err:
            LOG.warning('refused start of instance %s of tenant %s: %s',
                        instance.uuid, instance.tenant, err)
            raise

    def after_stop(self, xml: str, instance: hooks.Instance) -> None:
        """Kill whatever is left of the stopped domain's device model."""
        dom = self.settings.parse_domain(xml)
        record = restrict.read_record(dom)
        if record is None:
            return
        lease = self.store.get(instance.uuid)
        if lease is None or lease.uid != record.uid:
            # The uid may belong to another domain by now; it is reaped
            # before this one starts again.
            LOG.warning('instance %s of tenant %s stopped, but uid %d is no '
                        'longer leased to it; not reaping it',
                        instance.uuid, instance.tenant, record.uid)
            return
        self._reap(record.uid, instance, 'after stop')

    def check_operation(self, xml: str, instance: hooks.Instance,
                        operation: str,
                        device_xml: typing.Optional[str] = None,
                        live: bool = False) -> None:
        """Refuse what a restricted device model cannot survive, and any
        device the policy would refuse, on every Xen domain.

        A device attached or updated later reaches libxl (and, for a PV
        guest's qdisk or framebuffer, a root QEMU) without the daemon
        hook, so it passes the same policy as at define time, restricted
        domain or not.
        """
        try:
            dom = self.settings.parse_domain(xml)
            name = dom.name or instance.uuid
            if operation in _DEVICE_OPERATIONS and device_xml is not None:
                operations.check_device(
                    operation, name, operations.parse_device(device_xml),
                    live, self.settings, dom)
                return
            record = restrict.read_record(dom)
            if record is None:
                return
            self._check_tenant(record, instance, operation, name)
            if operation not in _ALLOWED:
                raise operations.refuse(operation, name)
        except exception.DmRestrictError as err:
            LOG.warning('refused %s of instance %s of tenant %s: %s',
                        operation, instance.uuid, instance.tenant, err)
            raise

    def release(self, instance: hooks.Instance,
                still_gone: hooks.Evidence) -> None:
        """Reap the instance's uid, then give its lease back.

        The caller saw libvirt answer "no such domain" and holds
        :meth:`lifecycle_lock`; ``still_gone`` is asked again inside the
        lease database's write transaction, which every start check
        shares, so a start by another client in between keeps the lease.

        :raises OperationRefused: the lease belongs to another tenant
            than the instance handle names; nothing is released.
        """
        if self._store is None and not os.path.exists(
                self.settings.lease_db):
            # No database, so no lease and no hold: do not create one.
            return
        lease = self.store.get(instance.uuid)
        if lease is not None and lease.tenant != instance.tenant:
            raise self._foreign(instance, lease)
        outcome = self.store.give_back(
            instance.uuid, still_gone,
            lambda uid: self._reap(uid, instance, 'before release',
                                   releasing=True),
            tenant=instance.tenant)
        if outcome == leases.LeaseStore.FOREIGN:
            raise self._foreign(instance, self.store.get(instance.uuid))
        if outcome == leases.LeaseStore.KEPT:
            LOG.warning('instance %s of tenant %s: libvirt shows its domain '
                        'again (started meanwhile by another client?); its '
                        'uid lease is kept', instance.uuid, instance.tenant)
        else:
            LOG.info('instance %s of tenant %s: %s', instance.uuid,
                     instance.tenant, outcome)

    @staticmethod
    def _foreign(instance: hooks.Instance,
                 lease: typing.Optional[leases.Lease]
                 ) -> exception.OperationRefused:
        owner = lease.tenant if lease is not None else 'another tenant'
        LOG.warning('refused release of instance %s of tenant %s: its '
                    'lease belongs to tenant %s', instance.uuid,
                    instance.tenant, owner)
        return exception.OperationRefused(
            'release of the uid lease of instance %s for tenant %s'
            % (instance.uuid, instance.tenant),
            'the lease belongs to tenant %s' % owner,
            'act on the instance with the handle of the tenant that owns '
            'it')


#: What a restricted domain may do; anything else (migration, save,
#: restore, memory snapshots, libvirt calls we do not know) is refused.
_ALLOWED = frozenset((
    operations.START, operations.SHUTDOWN, operations.DESTROY,
    operations.REBOOT, operations.UNDEFINE, operations.SNAPSHOT_DISK))
_DEVICE_OPERATIONS = frozenset((
    operations.ATTACH_DEVICE, operations.DETACH_DEVICE,
    operations.UPDATE_DEVICE))
