"""A thin libvirt-python wrapper that runs the domain hooks for the caller.

An orchestrator that defines domains through :class:`HookedConnection`
cannot forget the hooks: every define goes through
:meth:`~xen_dm_restrict_plugin.loader.HookManager.prepare`, and a domain
that fails to start after being defined is undefined again and its
instance released, so a failed boot leaves no domain and no lease.
"""

import logging
import typing

import libvirt

from xen_dm_restrict_plugin import hooks
from xen_dm_restrict_plugin import loader

LOG = logging.getLogger(__name__)

DEFAULT_URI = 'test:///default'


class HookedConnection:
    """A libvirt connection whose defines pass through the domain hooks.

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

    def define(self, xml: str, instance: hooks.Instance
               ) -> libvirt.virDomain:
        """Run the hooks on ``xml`` and define the result.

        When libvirt refuses a domain that did not exist before, the
        instance is released again so that no lease outlives the failure.
        """
        existed = self.lookup(instance) is not None
        prepared = self.hooks.prepare(xml, instance)
        try:
            return self.conn.defineXML(prepared)
        except libvirt.libvirtError:
            if not existed:
                self.hooks.release(instance)
            raise

    def define_and_start(self, xml: str, instance: hooks.Instance
                         ) -> libvirt.virDomain:
        """Define the domain through the hooks and start it.

        :raises DmRestrictError: a hook refused the domain; nothing was
            defined.
        :raises libvirt.libvirtError: libvirt failed; a domain that is
            new was undefined again and the instance released.
        """
        existed = self.lookup(instance) is not None
        dom = self.define(xml, instance)
        try:
            self.start(dom, instance)
        except BaseException:
            if existed:
                raise
            LOG.warning('instance %s of tenant %s failed to start; '
                        'undefining it', instance.uuid, instance.tenant)
            self._undefine_quietly(dom)
            self.hooks.release(instance)
            raise
        return dom

    def start(self, dom: libvirt.virDomain,
              instance: hooks.Instance) -> None:
        """Start a defined domain, telling the hooks first."""
        self.hooks.before_start(dom.XMLDesc(0), instance)
        dom.create()

    @staticmethod
    def _undefine_quietly(dom: libvirt.virDomain) -> None:
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError as err:
            LOG.error('could not undefine %s: %s', dom.name(), err)

    def lookup(self, instance: hooks.Instance) -> typing.Optional[
            libvirt.virDomain]:
        try:
            return self.conn.lookupByUUIDString(instance.uuid)
        except libvirt.libvirtError:
            return None
