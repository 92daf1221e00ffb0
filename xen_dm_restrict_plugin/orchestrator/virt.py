"""A thin libvirt-python wrapper that runs the domain hooks for the caller.

An orchestrator that goes through :class:`HookedConnection` and
:class:`HookedDomain` cannot forget the hooks: every define passes through
:meth:`~xen_dm_restrict_plugin.orchestrator.loader.HookManager.prepare`,
every start through ``before_start``, every stop through ``after_stop``, every
undefine through ``release``, and the calls a restricted device model
cannot survive (migration, save, restore, managed save, memory snapshots,
CD-ROM media changes, PCI passthrough) are checked before libvirt sees
them.  A domain that fails to start after being defined is undefined
again and its instance released, so a failed boot leaves nothing behind.
Unrestricted domains (PV, PVH, stub domains) pass through unchanged.
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


#: libvirt calls that change a running device model's state or devices;
#: a variant not wrapped below is refused on restricted domains.
_GUARDED_PREFIXES = ('migrate', 'save', 'managedSave', 'snapshotCreate',
                     'attachDevice', 'detachDevice', 'updateDevice',
                     'setMetadata', 'restore')


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
        """The instance's domain, or None when libvirt has none."""
        try:
            dom = self.conn.lookupByUUIDString(instance.uuid)
        except libvirt.libvirtError:
            return None
        return HookedDomain(self, dom, instance)

    def define(self, xml: str, instance: hooks.Instance) -> 'HookedDomain':
        """Run the hooks on ``xml`` and define the result.

        Redefining a restricted domain may not change its restriction.
        When libvirt refuses a domain that did not exist before, the
        instance is released again so that no lease outlives the failure.

        :raises DmRestrictError: a hook refused; nothing was defined.
        """
        existing = self.lookup(instance)
        try:
            prepared = self.hooks.prepare(xml, instance)
            if existing is not None:
                self._check_redefine(existing, prepared, instance)
            dom = self.conn.defineXML(prepared)
        except (libvirt.libvirtError, exception.DmRestrictError):
            # A later hook (or libvirt) failed after an earlier one leased.
            if existing is None:
                self.hooks.release(instance)
            raise
        return HookedDomain(self, dom, instance)

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
        :raises libvirt.libvirtError: libvirt failed; a domain that is
            new was undefined again and the instance released.
        """
        existed = self.lookup(instance) is not None
        dom = self.define(xml, instance)
        try:
            dom.create()
        except BaseException:
            if existed:
                raise
            LOG.warning('instance %s of tenant %s failed to start; '
                        'undefining it', instance.uuid, instance.tenant)
            dom.discard()
            raise
        return dom

    def start(self, dom: 'HookedDomain', instance: hooks.Instance) -> None:
        """Start a defined domain, telling the hooks first."""
        HookedDomain(self, getattr(dom, 'dom', dom), instance).create()

    def restore(self, path: str, flags: int = 0) -> int:
        """Restore a saved domain, unless it was restricted.

        :raises OperationRefused: the image holds a restricted domain, or
            its definition cannot be read to tell.
        """
        try:
            xml = self.conn.saveImageGetXMLDesc(path, 0)
        except libvirt.libvirtError as err:
            raise exception.OperationRefused(
                'restore of save image %s' % path, 'the saved domain '
                'definition cannot be read to tell whether it is '
                'restricted (%s)' % err, 'restore it without the '
                'dm_restrict wrapper only if you know it is not '
                'restricted') from None
        if restrict.record_in_domain_xml(xml) is not None:
            raise operations.refuse(operations.RESTORE, path)
        return self.conn.restoreFlags(path, None, flags)

    restoreFlags = restore


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
        self.hooks.before_start(self.xml(), self.instance)
        return self.dom.createWithFlags(flags)

    createWithFlags = create

    def destroy(self, flags: int = 0) -> int:
        xml = self.xml()
        result = self.dom.destroyFlags(flags)
        self.hooks.after_stop(xml, self.instance)
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

        :raises OperationRefused: the domain is running; destroy it first
            (its uid must not be released while its QEMU may run).
        """
        if self.dom.isActive():
            record = restrict.record_from_xml(self.metadata_record_xml())
            if record is not None:
                raise operations.refuse(
                    operations.UNDEFINE, self.dom.name(),
                    'it is running, and its uid must not be released '
                    'while its device model may still run',
                    'destroy or shut down the domain first')
        result = self.dom.undefineFlags(flags)
        self.hooks.release(self.instance)
        return result

    undefineFlags = undefine

    def discard(self) -> None:
        """Undefine a domain that failed to start, logging any error."""
        try:
            if self.dom.isActive():
                self.dom.destroy()
            self.dom.undefine()
        except libvirt.libvirtError as err:
            LOG.error('could not undefine %s: %s', self.dom.name(), err)
            return
        try:
            self.hooks.release(self.instance)
        except exception.DmRestrictError as err:
            LOG.error('instance %s of tenant %s keeps its uid lease until '
                      'reconcile can release it: %s', self.instance.uuid,
                      self.instance.tenant, err)

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
