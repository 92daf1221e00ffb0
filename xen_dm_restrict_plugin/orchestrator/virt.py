"""A thin libvirt-python wrapper that runs the domain hooks for the caller.

An orchestrator that goes through :class:`HookedConnection` and
:class:`HookedDomain` cannot forget the hooks: every define passes through
:meth:`~xen_dm_restrict_plugin.orchestrator.loader.HookManager.prepare`,
every start (``create``, ``createWithFlags``, ``createWithFiles``, and a
transient domain's ``createXML``/``createXMLWithFiles``) through
``before_start``, every stop through ``after_stop``, every undefine
through ``release``, and the calls a restricted device model cannot
survive (migration, save, restore, managed save, memory snapshots,
snapshot reverts, CD-ROM media changes, PCI passthrough) are checked
before libvirt sees them.  Unrestricted domains (PV, PVH, stub domains)
pass through unchanged.

Leases are given back by one rule: a call gives back only the claim its
own prepare took, and only on positive evidence that the domain it
prepared does not exist (libvirt answered ``VIR_ERR_NO_DOMAIN``); a
libvirt or connection error is never that evidence.  A failed boot
removes only the domain it defined itself.  Define, start, undefine and
that clean-up run under the instance's lifecycle lock
(:mod:`xen_dm_restrict_plugin.leases.locks`), which reconcile takes too,
so no interleaving of them releases a running domain's lease.
"""

import logging
import typing

import libvirt

from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import loader
from xen_dm_restrict_plugin.orchestrator import operations

LOG = logging.getLogger(__name__)


#: libvirt calls that start, re-create or change a running device
#: model's state or devices; a variant not wrapped below is refused on
#: restricted domains.
_GUARDED_PREFIXES = ('migrate', 'save', 'managedSave', 'snapshotCreate',
                     'attachDevice', 'detachDevice', 'updateDevice',
                     'setMetadata', 'restore', 'create', 'revert')

#: libvirt methods whose names look like a start but are not one, and why
#: (tests/unit/test_virt_start_paths.py holds every other one wrapped).
NOT_STARTS = {
    'autostart': 'reads the autostart flag',
    'setAutostart': 'libvirtd starts the domain at its own start-up, '
                    'through the daemon hook, which checks it',
    'hasManagedSaveImage': 'reads whether an image exists',
    'managedSaveGetXMLDesc': 'reads the image\'s definition',
    'managedSaveRemove': 'removes an image',
    'startDirtyRateCalc': 'measures memory dirtying of a running domain',
    'migrateStartPostCopy': 'switches a running migration (migration '
                            'itself is refused)',
}


def is_no_domain(err: libvirt.libvirtError) -> bool:
    """True when libvirt said the domain does not exist."""
    return err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


class HookedConnection:
    """A libvirt connection whose domains go through the domain hooks.

    :param conn: an open ``libvirt.virConnect``.
    :param manager: the enabled hooks.
    """

    def __init__(self, conn: libvirt.virConnect,
                 manager: loader.HookManager):
        self.conn = conn
        self.hooks = manager

    @classmethod
    def open(cls, uri: str, manager: loader.HookManager
             ) -> 'HookedConnection':
        """Open ``uri`` (e.g. ``test:///default``, ``xen:///system``)."""
        return cls(libvirt.open(uri), manager)

    def close(self) -> None:
        self.conn.close()

    def lookup(self, instance: hooks.Instance
               ) -> typing.Optional['HookedDomain']:
        """The instance's domain, or None when libvirt has none.

        :raises libvirt.libvirtError: any other error (a broken
            connection, a restarting libvirtd): it never means the
            domain is gone.
        """
        try:
            dom = self.conn.lookupByUUIDString(instance.uuid)
        except libvirt.libvirtError as err:
            if is_no_domain(err):
                return None
            raise
        return HookedDomain(self, dom, instance)

    def is_gone(self, instance: hooks.Instance) -> bool:
        """True only when libvirt answered that the domain does not exist;
        False when it exists or libvirt could not tell.
        """
        try:
            return self.lookup(instance) is None
        except libvirt.libvirtError as err:
            LOG.warning('instance %s of tenant %s: libvirt could not tell '
                        'whether its domain exists (%s); treating it as '
                        'present', instance.uuid, instance.tenant, err)
            return False

    def still_gone(self, instance: hooks.Instance) -> hooks.Evidence:
        """The evidence the hooks ask, inside their own write transaction,
        right before they give a lease back: libvirt answers again.
        """
        return lambda: self.is_gone(instance)

    def give_back(self, instance: hooks.Instance, undo: hooks.Undo,
                  why: str) -> None:
        """Give back a prepare's claim after a define or start that did
        not take effect.

        A claim among several is only counted down; the last one frees
        the lease only when libvirt answers, inside the lease database's
        write transaction, that the instance has no domain (a domain
        that exists, or a libvirt that cannot tell, keeps it until
        reconcile can tell).  Never raises.
        """
        try:
            undo(self.still_gone(instance))
        except Exception as err:   # a hook's own error, logged by it
            LOG.error('instance %s of tenant %s: %s, and its claim could '
                      'not be given back (%s): reconcile releases it',
                      instance.uuid, instance.tenant, why, err)

    def define(self, xml: str, instance: hooks.Instance) -> 'HookedDomain':
        """Run the hooks on ``xml`` and define the result.

        Redefining a restricted domain may not change its restriction.
        When libvirt refuses the domain, this call's claim is given back
        (:meth:`give_back`) so that no lease outlives the failure.

        :raises DmRestrictError: a hook refused; nothing was defined.
        """
        self.hooks.validate(xml, instance)
        with self.hooks.locked(instance):
            return self._define(xml, instance)[0]

    def _define(self, xml: str, instance: hooks.Instance
                ) -> typing.Tuple['HookedDomain', hooks.Undo]:
        existing = self.lookup(instance)
        prepared, undo = self.hooks.prepare_with_undo(
            xml, instance, self.still_gone(instance))
        try:
            if existing is not None:
                self._check_redefine(existing, prepared, instance)
            dom = self.conn.defineXML(prepared)
        except BaseException:
            self.give_back(instance, undo, 'its define failed')
            raise
        return HookedDomain(self, dom, instance), undo

    def _check_redefine(self, existing: 'HookedDomain', prepared: str,
                        instance: hooks.Instance) -> None:
        old = restrict.record_from_xml(existing.metadata_record_xml())
        if old is None:
            return
        new = restrict.record_in_domain_xml(prepared)
        if new is None or (new.uid, new.gid, new.chroot) != (
                old.uid, old.gid, old.chroot):
            raise operations.refuse(
                operations.REDEFINE, existing.dom.name(),
                'it would change the device model from uid %d to %s'
                % (old.uid, new.uid if new else 'no restriction'))

    def define_and_start(self, xml: str, instance: hooks.Instance
                         ) -> 'HookedDomain':
        """Define the domain through the hooks and start it.

        :raises DmRestrictError: a hook refused the domain; nothing new
            was defined.
        :raises libvirt.libvirtError: libvirt failed; a domain this call
            defined was undefined again and its claim given back.
        """
        self.hooks.validate(xml, instance)
        with self.hooks.locked(instance):
            existed = self.lookup(instance) is not None
            dom, undo = self._define(xml, instance)
            try:
                dom._create()
            except BaseException:
                if existed:
                    self.give_back(instance, undo, 'its start failed')
                    raise
                LOG.warning('instance %s of tenant %s failed to start; '
                            'undefining the domain this boot defined',
                            instance.uuid, instance.tenant)
                dom._discard(undo)
                raise
            return dom

    def start(self, dom: 'HookedDomain', instance: hooks.Instance) -> None:
        """Start a defined domain, telling the hooks first."""
        HookedDomain(self, getattr(dom, 'dom', dom), instance).create()

    # -- transient domains: define and start in one call ---------------
    def createXML(self, xml: str, instance: hooks.Instance,
                  flags: int = 0) -> 'HookedDomain':
        """Start a transient domain through the hooks.

        :raises DmRestrictError: a hook refused; nothing runs.
        """
        return self._create_transient(xml, instance, None, flags)

    createLinux = createXML

    def createXMLWithFiles(self, xml: str, files: typing.List[int],
                           instance: hooks.Instance,
                           flags: int = 0) -> 'HookedDomain':
        """Like :meth:`createXML`, passing file descriptors to the guest.
        """
        return self._create_transient(xml, instance, files, flags)

    def _create_transient(self, xml: str, instance: hooks.Instance,
                          files: typing.Optional[typing.List[int]],
                          flags: int) -> 'HookedDomain':
        self.hooks.validate(xml, instance)
        with self.hooks.locked(instance):
            prepared, undo = self.hooks.prepare_with_undo(
                xml, instance, self.still_gone(instance))
            try:
                self.hooks.before_start(prepared, instance)
                if files is None:
                    dom = self.conn.createXML(prepared, flags)
                else:
                    dom = self.conn.createXMLWithFiles(prepared, files,
                                                       flags)
            except BaseException:
                self.give_back(instance, undo, 'its start failed')
                raise
            return HookedDomain(self, dom, instance)

    # -- restore: refused for restricted domains -------------------------
    def restore(self, path: str, flags: int = 0) -> int:
        """Restore a saved domain, unless it was restricted.

        :raises OperationRefused: the image holds a restricted domain, or
            its definition cannot be read to tell.
        """
        return self.restoreFlags(path, None, flags)

    def restoreFlags(self, path: str, dxml: typing.Optional[str] = None,
                     flags: int = 0) -> int:
        """Like :meth:`restore`; a replacement definition ``dxml`` must
        not be restricted either.
        """
        self._check_restore(path, dxml)
        return self.conn.restoreFlags(path, dxml, flags)

    def restoreParams(self, params: typing.Dict[str, typing.Any],
                      flags: int = 0) -> int:
        """Like :meth:`restoreFlags`, with libvirt's typed parameters."""
        self._check_restore(params.get(libvirt.VIR_DOMAIN_SAVE_PARAM_FILE),
                            params.get(libvirt.VIR_DOMAIN_SAVE_PARAM_DXML))
        return self.conn.restoreParams(params, flags)

    def _check_restore(self, path: typing.Optional[str],
                       dxml: typing.Optional[str]) -> None:
        try:
            if path is None:
                raise libvirt.libvirtError('no save image file given')
            xml = self.conn.saveImageGetXMLDesc(path, 0)
        except libvirt.libvirtError as err:
            raise exception.OperationRefused(
                'restore of save image %s' % path, 'the saved domain '
                'definition cannot be read to tell whether it is '
                'restricted (%s)' % err, 'restore it without the '
                'dm_restrict wrapper only if you know it is not '
                'restricted') from None
        for text in (xml, dxml):
            if text and restrict.record_in_domain_xml(text) is not None:
                raise operations.refuse(operations.RESTORE, path)


def _checked(method: str, operation: str):
    """A HookedDomain method that asks the hooks before calling libvirt."""
    def call(self, *args, **kwargs):
        self._check(operation)
        return getattr(self.dom, method)(*args, **kwargs)
    call.__name__ = method
    call.__doc__ = 'libvirt %s, refused on restricted domains (%s).' % (
        method, operation)
    return call


class HookedDomain:
    """A libvirt domain whose risky calls are checked by the hooks.

    Calls not wrapped here go straight to the ``libvirt.virDomain``,
    except new variants of the guarded families (``migrate*``,
    ``save*``, ...), which are refused on restricted domains.
    """

    def __init__(self, conn: HookedConnection, dom: libvirt.virDomain,
                 instance: hooks.Instance):
        self.conn = conn
        self.dom = dom
        self.instance = instance

    @property
    def hooks(self) -> loader.HookManager:
        return self.conn.hooks

    def __getattr__(self, name: str):
        if name.startswith(_GUARDED_PREFIXES):
            self._check(name)
        return getattr(self.dom, name)

    def xml(self) -> str:
        return self.dom.XMLDesc(0)

    def metadata_record_xml(self) -> str:
        try:
            return self.dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                     restrict.META_NS, 0)
        except libvirt.libvirtError:
            return '<none/>'

    def _check(self, operation: str, device_xml: typing.Optional[str] = None,
               live: bool = False) -> None:
        self.hooks.check_operation(self.xml(), self.instance, operation,
                                   device_xml, live)

    def _live(self, flags: int) -> bool:
        if flags & libvirt.VIR_DOMAIN_AFFECT_LIVE:
            return True
        return (not flags & libvirt.VIR_DOMAIN_AFFECT_CONFIG
                and bool(self.dom.isActive()))

    # -- start and stop ---------------------------------------------------
    def create(self, flags: int = 0) -> int:
        """Start the domain, after the hooks checked it."""
        with self.hooks.locked(self.instance):
            return self._create(flags)

    createWithFlags = create

    def createWithFiles(self, files: typing.List[int],
                        flags: int = 0) -> int:
        """Like :meth:`create`, passing file descriptors to the guest."""
        with self.hooks.locked(self.instance):
            return self._create(flags, files)

    def _create(self, flags: int = 0,
                files: typing.Optional[typing.List[int]] = None) -> int:
        self.hooks.before_start(self.xml(), self.instance)
        if files is None:
            return self.dom.createWithFlags(flags)
        return self.dom.createWithFiles(files, flags)

    def destroy(self, flags: int = 0) -> int:
        """Stop the domain; a transient one is gone after it, and so is
        its lease.
        """
        xml = self.xml()
        self._check(operations.DESTROY)
        with self.hooks.locked(self.instance):
            result = self.dom.destroyFlags(flags)
            self.hooks.after_stop(xml, self.instance)
            if self.conn.is_gone(self.instance):
                self.hooks.release(self.instance,
                                   self.conn.still_gone(self.instance))
            return result

    destroyFlags = destroy

    def shutdown(self, flags: int = 0) -> int:
        """Ask the guest to shut down; reap at once if it already stopped.

        A guest that takes its time is reaped by the libvirt daemon hook
        on ``stopped``, or by :meth:`stopped` when the caller sees it go.
        """
        xml = self.xml()
        result = self.dom.shutdownFlags(flags)
        if not self.dom.isActive():
            self.hooks.after_stop(xml, self.instance)
        return result

    shutdownFlags = shutdown

    def stopped(self) -> None:
        """Tell the hooks the domain stopped on its own (e.g. poweroff)."""
        self.hooks.after_stop(self.xml(), self.instance)

    def undefine(self, flags: int = 0) -> int:
        """Undefine a stopped domain, then reap and release its uid.

        The lease is released only when libvirt then answers that the
        domain does not exist: a domain started meanwhile by a client
        outside this wrapper lives on as a transient domain and keeps it.

        :raises OperationRefused: the domain is running; destroy it first
            (its uid must not be released while its QEMU may run).
        """
        self._check(operations.UNDEFINE)
        with self.hooks.locked(self.instance):
            if self.dom.isActive():
                record = restrict.record_from_xml(
                    self.metadata_record_xml())
                if record is not None:
                    raise operations.refuse(
                        operations.UNDEFINE, self.dom.name(),
                        'it is running, and its uid must not be released '
                        'while its device model may still run',
                        'destroy or shut down the domain first')
            result = self.dom.undefineFlags(flags)
            if self.conn.is_gone(self.instance):
                # Asked again inside the lease database's transaction:
                # a start by another client now keeps the lease.
                self.hooks.release(self.instance,
                                   self.conn.still_gone(self.instance))
            else:
                LOG.warning('instance %s of tenant %s: undefined, but '
                            'libvirt still has its domain (started '
                            'meanwhile, now transient?); its uid lease is '
                            'kept', self.instance.uuid, self.instance.tenant)
            return result

    undefineFlags = undefine

    def _discard(self, undo: typing.Callable[[], None]) -> None:
        """Undefine the domain a failed boot defined (never one it found)
        and give back the boot's claim; log any error.  The caller holds
        the lifecycle lock.
        """
        try:
            if self.dom.isActive():
                self.dom.destroy()
            self.dom.undefine()
        except libvirt.libvirtError as err:
            LOG.error('instance %s of tenant %s: could not undefine %s '
                      '(%s); its uid lease is kept', self.instance.uuid,
                      self.instance.tenant, self.instance.uuid, err)
            return
        self.conn.give_back(self.instance, undo, 'its boot failed')

    # -- refused on restricted domains -----------------------------------
    migrate = _checked('migrate', operations.MIGRATE)
    migrate2 = _checked('migrate2', operations.MIGRATE)
    migrate3 = _checked('migrate3', operations.MIGRATE)
    migrateToURI = _checked('migrateToURI', operations.MIGRATE)
    migrateToURI2 = _checked('migrateToURI2', operations.MIGRATE)
    migrateToURI3 = _checked('migrateToURI3', operations.MIGRATE)
    save = _checked('save', operations.SAVE)
    saveFlags = _checked('saveFlags', operations.SAVE)
    managedSave = _checked('managedSave', operations.MANAGED_SAVE)

    def snapshotCreateXML(self, xml: str, flags: int = 0):
        self._check(self._snapshot_kind(xml, flags))
        return self.dom.snapshotCreateXML(xml, flags)

    def _snapshot_kind(self, xml: str, flags: int) -> str:
        if flags & libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY:
            return operations.SNAPSHOT_DISK
        if not self.dom.isActive():
            return operations.SNAPSHOT_DISK
        memory = operations.parse_snapshot_memory(xml)
        if memory == 'no':
            return operations.SNAPSHOT_DISK
        return operations.SNAPSHOT_MEMORY

    # -- device changes ---------------------------------------------------
    def attachDevice(self, xml: str) -> int:
        self._check(operations.ATTACH_DEVICE, xml, bool(self.dom.isActive()))
        return self.dom.attachDevice(xml)

    def attachDeviceFlags(self, xml: str, flags: int = 0) -> int:
        self._check(operations.ATTACH_DEVICE, xml, self._live(flags))
        return self.dom.attachDeviceFlags(xml, flags)

    def detachDevice(self, xml: str) -> int:
        self._check(operations.DETACH_DEVICE, xml, bool(self.dom.isActive()))
        return self.dom.detachDevice(xml)

    def detachDeviceFlags(self, xml: str, flags: int = 0) -> int:
        self._check(operations.DETACH_DEVICE, xml, self._live(flags))
        return self.dom.detachDeviceFlags(xml, flags)

    def updateDeviceFlags(self, xml: str, flags: int = 0) -> int:
        self._check(operations.UPDATE_DEVICE, xml, self._live(flags))
        return self.dom.updateDeviceFlags(xml, flags)

    def setMetadata(self, type: int, metadata: typing.Optional[str],
                    key: typing.Optional[str], uri: typing.Optional[str],
                    flags: int = 0) -> int:
        if uri == restrict.META_NS:
            self._check(operations.REDEFINE)
        return self.dom.setMetadata(type, metadata, key, uri, flags)
