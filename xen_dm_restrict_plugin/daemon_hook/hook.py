"""libvirtd's libxl hook: enforce the restriction where domains really start.

The driver extension writes the restriction into the domains an
orchestrator defines, but anything can define a domain in libvirt (virsh,
another tool) and libvirt's libxl driver would start it unrestricted.
libvirtd runs ``/etc/libvirt/hooks/libxl`` (and, since libvirt 6.5.0,
every executable in ``/etc/libvirt/hooks/libxl.d/``) synchronously as
root with argv ``DOMAIN_NAME OPERATION SUB_OPERATION EXTRA`` and the full
domain XML on stdin; a non-zero exit stops a start or an incoming
migration.  Link ``xen-dm-restrict-libvirt-hook`` there and restart
libvirtd.

Operations acted on (every other one exits 0 and does nothing):

``prepare begin``
    Before a domain starts.  Every domain must pass the whole-domain
    policy (:mod:`xen_dm_restrict_plugin.core.policy`), whatever client
    defined it.  An HVM qemu-xen domain must carry our
    ``<metadata>`` record and its restriction arguments in
    ``<xen:commandline>`` (with ``-xen-domid-restrict``), for a uid of a
    configured range leased to this domain's uuid (and not held by
    reconcile), with the uid's chroot
    and, when configured, the launcher as ``<emulator>`` and ``-sandbox``
    (``sandbox = required``).  A domain without a record is refused when
    ``[dm_restrict] enforce`` is on (qemu-xen-traditional too); one with
    a record that does not hold is always refused.  Then the uid's chroot
    directory is created and the uid is reaped; a reap that is refused,
    impossible on this host or leaves a process alive refuses the start.
``stopped end`` and ``release end``
    After a domain stopped: the uid of its record is reaped, if it is
    still leased to this domain (a released uid may belong to another
    domain by now; it is reaped before that one starts).
``migrate begin``
    Incoming migration is refused for a restricted HVM qemu-xen domain
    (restrictions are not re-applied on the receiving side), and for an
    unrestricted one when ``enforce`` is on.

PV, PVH and stub-domain guests have no restricted device model; they
must pass the policy at ``prepare begin`` and ``migrate begin`` (a PV
guest that needs a dom0 QEMU is refused unless ``pv_dom0_qemu = allow``).
Exit codes: 0 allowed, 2 refused, 1 error; the message is on stderr.  The
hook never calls back into libvirt (libvirtd would deadlock): everything
it needs is in its argv, its stdin, the lease database and the host's
own records (interfaces in sysfs, libvirt's network files, Open
vSwitch's database through ``ovs-vsctl``, which it reads, never
changes).  When ``allowed_ovs_bridges`` is set and that database cannot
be read, a domain naming a ``<target dev>`` is not started (exit 1).
"""

import logging
import typing

from xen_dm_restrict_plugin.console import relay
from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import dm_argv
from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin.core import policy
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin.core import settings as settings_mod
from xen_dm_restrict_plugin.daemon_hook import operations as hook_operations
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import netfacts
from xen_dm_restrict_plugin.host import reaper
from xen_dm_restrict_plugin.launcher import chroot
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.storage import service as storage_service

LOG = logging.getLogger(__name__)

OP_PREPARE = hook_operations.OP_PREPARE
OP_STOPPED = hook_operations.OP_STOPPED
OP_RELEASE = hook_operations.OP_RELEASE
OP_MIGRATE = hook_operations.OP_MIGRATE
OP_STARTED = hook_operations.OP_STARTED
ACTED_ON = hook_operations.ACTED_ON

_REMEDY = ('define the domain through the orchestrator with the '
           'dm_restrict hook enabled (or "xen-dm-restrict render"), or set '
           '[dm_restrict] enforce = false to allow unrestricted domains')


def _describe(name: str, dom: domain_mod.Domain,
              record: typing.Optional[restrict.Record] = None) -> str:
    text = 'domain %s (uuid %s)' % (name, dom.uuid)
    if record is not None:
        text += ' of tenant %s, uid %d' % (record.tenant, record.uid)
    return text


class LibxlHook:
    """What the hook does for one configuration.

    :param settings: the host's ``[dm_restrict]`` settings.
    """

    def __init__(self, settings: settings_mod.Settings):
        self.settings = settings
        self.reaper = reaper.Reaper(settings)

    def handle(self, name: str, operation: str, sub_operation: str,
               xml: bytes) -> None:
        """Act on one hook call.

        :param name: the domain name libvirtd passed.
        :param operation: e.g. ``prepare``.
        :param sub_operation: e.g. ``begin``.
        :param xml: the domain XML libvirtd wrote to stdin.
        :raises Refused: the operation must not proceed.
        :raises DmRestrictError: the hook failed.
        """
        key = (operation, sub_operation)
        if key not in ACTED_ON:
            LOG.debug('%s %s of domain %s: nothing to do', operation,
                      sub_operation, name)
            return
        dom = self.settings.parse_domain(xml)
        if not dom.kind.has_dom0_device_model:
            if key in (OP_PREPARE, OP_MIGRATE):
                self.check_unrestricted_kind(name, dom)
            return
        record = restrict.read_record(dom)
        if key == OP_PREPARE:
            self.before_start(name, dom, record)
        elif key == OP_STARTED:
            self.after_start(name, dom, record)
        elif key == OP_MIGRATE:
            self.refuse_migration(name, dom, record)
        else:
            self.after_stop(name, dom, record)

    def network_facts(self) -> netfacts.HostNetwork:
        """The host's interfaces and active networks, as a domain about
        to start meets them: none of its interfaces exists yet.
        """
        return netfacts.HostNetwork(self.settings, at_start=True)

    def check_unrestricted_kind(self, name: str,
                                dom: domain_mod.Domain) -> None:
        """PV, PVH and stub-domain guests: the whole-domain policy, so
        nothing reaches libxl or a dom0 QEMU that the operator did not
        allow (their ``<xen:commandline>`` goes to that QEMU too).
        """
        try:
            policy.check_domain(dom, dom.xen_args(), self.settings,
                                self.network_facts())
        except exception.FeatureRefused as err:
            LOG.warning('refused start of %s: %s', _describe(name, dom), err)
            raise exception.OperationRefused(
                'start of %s' % _describe(name, dom), err.reason,
                err.remedy) from None
        except exception.Unavailable as err:
            LOG.error('start of %s cannot be checked: %s',
                      _describe(name, dom), err)
            raise

    def _unrestricted(self, name: str, dom: domain_mod.Domain,
                      what: str) -> None:
        if dom.kind is domain_mod.GuestKind.HVM_TRADITIONAL:
            reason = ('its device model is qemu-xen-traditional, which '
                      'cannot be restricted')
        else:
            reason = 'it carries no dm_restrict <metadata> record'
        if self.settings.enforce:
            LOG.warning('refused %s of unrestricted %s: %s', what,
                        _describe(name, dom), reason)
            raise exception.OperationRefused(
                '%s of %s' % (what, _describe(name, dom)), reason, _REMEDY)
        LOG.warning('%s of %s allowed unrestricted (enforce is off): %s',
                    what, _describe(name, dom), reason)

    def check_restricted(self, name: str, dom: domain_mod.Domain,
                         record: restrict.Record) -> None:
        """Refuse a domain whose record does not hold.

        :raises OperationRefused: naming what does not hold.
        """
        subject = 'start of %s' % _describe(name, dom, record)
        args = dom.xen_args()

        def refuse(reason: str, remedy: str = _REMEDY):
            LOG.warning('refused %s: %s', subject, reason)
            return exception.OperationRefused(subject, reason, remedy)

        if list(record.args) not in restrict.canonical_args(record):
            raise refuse('its dm_restrict record lists arguments this '
                         'product never writes for uid %d (a record edited '
                         'or forged to pass arguments unchecked)'
                         % record.uid)
        if not record.args or list(args[:len(record.args)]) != list(
                record.args):
            raise refuse('its <xen:commandline> does not start with the '
                         'restriction arguments its dm_restrict record '
                         'lists (ahead of them, an option could take one '
                         'as its value)')
        try:
            policy.check_domain(dom, args[len(record.args):], self.settings,
                                self.network_facts(),
                                scope=pathscope.Scope(record.tenant,
                                                      dom.uuid or ''))
        except exception.FeatureRefused as err:
            raise refuse(str(err), err.remedy) from None
        except exception.Unavailable as err:
            # Fails closed: the start stops (exit 1) until it can be read.
            LOG.error('%s cannot be checked: %s', subject, err)
            raise
        parsed = dm_argv.parse_argv(args)
        if not parsed.domid_restrict:
            raise refuse('its <xen:commandline> has no -xen-domid-restrict')
        if (parsed.uid, parsed.gid, parsed.chroot) != (
                record.uid, record.gid, record.chroot):
            raise refuse('its <xen:commandline> runs the device model as '
                         '%s:%s in %s, not as its record says'
                         % (parsed.uid, parsed.gid, parsed.chroot))
        try:
            dm_argv.check_identity(self.settings, parsed)
        except exception.Refused as err:
            raise refuse(str(err)) from None
        if (self.settings.sandbox == constants.SANDBOX_REQUIRED
                and parsed.sandbox != restrict.SANDBOX_POLICY):
            raise refuse('it has no -sandbox and [dm_restrict] sandbox is '
                         '"required"')
        if (self.settings.sandbox == constants.SANDBOX_WHEN_SUPPORTED
                and parsed.sandbox is None):
            # The hook writes -sandbox whenever the device model has it; a
            # client that edited the domain must not drop it.
            from xen_dm_restrict_plugin.host import capabilities

            try:
                wanted = capabilities.syntax_for(self.settings,
                                                 dom.emulator).sandbox
            except exception.Refused as err:
                raise refuse(str(err)) from None
            if wanted:
                raise refuse('it has no -sandbox, but its device model has '
                             'seccomp and [dm_restrict] sandbox is '
                             '"when-supported" (the domain was edited '
                             'after the dm_restrict hook wrote it)')
        launcher_path = self.settings.launcher
        if launcher_path and dom.emulator != launcher_path:
            raise refuse('its <emulator> is %s, not the configured launcher '
                         '%s' % (dom.emulator, launcher_path))
        if dom.uuid is None:
            raise refuse('it has no <uuid>, so no lease can be its own')
        # A missing database means no lease: refused, and not created.
        # The lease's tenant must be the record's, with which {tenant}
        # was expanded above.
        store = self._store()
        try:
            blocker = leases.start_blocker(
                store, dom.uuid, record.uid,
                gid_is_uid=self.settings.gid is None,
                tenant=record.tenant)
        finally:
            if store is not None:
                store.close()
        if blocker is not None:
            raise refuse(*blocker)

    def _store(self) -> typing.Optional[leases.LeaseStore]:
        """The lease database, or None when it does not exist (the hook
        never creates it: it only checks and refuses).
        """
        return leases.LeaseStore.open_existing(
            self.settings.lease_db, self.settings.lease_db_timeout)

    def before_start(self, name: str, dom: domain_mod.Domain,
                     record: typing.Optional[restrict.Record]) -> None:
        """``prepare begin``: check, create the chroot, reap the uid."""
        if record is None:
            self._unrestricted(name, dom, 'start')
            return
        self.check_restricted(name, dom, record)
        relay.stop(self.settings, record.uid, _describe(name, dom, record))
        chroot.prepare(self.settings, record.uid)
        self.reaper.reap(record.uid, _describe(name, dom, record))
        # After the reap: the storage daemons run as the domain's uid.
        served = storage_service.start(self.settings, dom, record.tenant,
                                       record.uid, record.gid)
        LOG.info('start of %s allowed: restricted, chroot ready, uid '
                 'reaped%s', _describe(name, dom, record),
                 ', %d disk(s) served by storage daemons' % len(served)
                 if served else '')

    def relays_console(self) -> bool:
        """Whether restricted VNC consoles are relayed from dom0."""
        return bool(self.settings.launcher) and \
            self.settings.network_namespace == constants.NETNS_REQUIRED

    def after_start(self, name: str, dom: domain_mod.Domain,
                    record: typing.Optional[restrict.Record]) -> None:
        """``started begin``: relay the VNC console where libvirt says it
        is (a failure here makes libvirtd destroy the domain).
        """
        if record is None or not self.relays_console():
            return
        where = relay.display(dom.root)
        if where is None:
            return
        try:
            relay.start(self.settings, record.uid, where[0], where[1],
                        _describe(name, dom, record))
        except exception.Refused as err:
            LOG.error('VNC console of %s cannot be relayed: %s',
                      _describe(name, dom, record), err)
            raise exception.OperationRefused(
                'start of %s' % _describe(name, dom, record),
                'its VNC console cannot be relayed: %s' % err.reason,
                err.remedy) from None

    def after_stop(self, name: str, dom: domain_mod.Domain,
                   record: typing.Optional[restrict.Record]) -> None:
        """``stopped end`` / ``release end``: reap the domain's uid."""
        if record is None:
            return
        storage_service.stop(self.settings, dom.uuid)
        lease = None
        store = self._store() if dom.uuid is not None else None
        if store is not None:
            with store:
                lease = store.get(dom.uuid)
        if lease is None or lease.uid != record.uid:
            LOG.warning('%s stopped, but uid %d is no longer leased to it; '
                        'not reaping it now (it is reaped before its next '
                        'start)', _describe(name, dom, record), record.uid)
            return
        # The relay runs as its own user, in the uid's console cgroup.
        relay.stop(self.settings, record.uid, _describe(name, dom, record))
        self.reaper.reap(record.uid, _describe(name, dom, record))

    def refuse_migration(self, name: str, dom: domain_mod.Domain,
                         record: typing.Optional[restrict.Record]) -> None:
        """``migrate begin``: restricted domains never migrate."""
        if record is None:
            self._unrestricted(name, dom, 'incoming migration')
            return
        LOG.warning('refused incoming migration of %s',
                    _describe(name, dom, record))
        raise exception.OperationRefused(
            'incoming migration of %s' % _describe(name, dom, record),
            'the restriction is not re-applied on the receiving side and a '
            'restricted device model cannot write or read its state',
            'shut the domain down and start it on this host instead')


def read_stdin(stream: typing.BinaryIO, max_bytes: int) -> bytes:
    """Read up to ``max_bytes + 1`` bytes and drain the rest.

    libvirtd writes the whole document; a hook that stops reading early
    would leave it writing into a closed pipe.
    """
    data = stream.read(max_bytes + 1)
    while stream.read(65536):
        pass
    return data
