"""The domain hook interface an orchestrator calls, and a no-op hook.

An orchestrator that builds libvirt domain XML hands it, with the
instance it belongs to, to every enabled hook before defining the domain,
and tells the hooks when the instance is deleted.  Hooks are found by
name in the stevedore namespace :data:`NAMESPACE`.  :class:`NoopHook` is
the smallest possible hook and the example to copy.
"""

import abc
import contextlib
import dataclasses
import typing
import uuid as uuid_mod

from oslo_config import cfg

from xen_dm_restrict_plugin import exception

#: The stevedore entry point group domain hooks register in.
NAMESPACE = 'libvirt.domain_hooks'

#: Asks libvirt, when called, whether the instance has no domain; True
#: only when libvirt answered "no such domain".  A hook calls it inside
#: its own write transaction, right before giving anything back, so no
#: start can slip in between the answer and the release.
Evidence = typing.Callable[[], bool]

#: Gives back exactly what one ``prepare`` took; what would free the
#: instance's last claim is given back only when the evidence says the
#: domain does not exist.
Undo = typing.Callable[[Evidence], None]


def no_domain_yet() -> bool:
    """The :data:`Evidence` where nothing was defined and nothing is
    asked of libvirt (a ``render``): the claim was never used.
    """
    return True


def nothing_to_undo(still_gone: Evidence = no_domain_yet) -> None:
    """The :data:`Undo` of a prepare that took nothing."""


@dataclasses.dataclass(frozen=True)
class Instance:
    """The tenant VM a domain belongs to.

    :param uuid: the instance uuid, which is also the libvirt domain uuid.
    :param tenant: the tenant (project) id owning the instance.
    """

    uuid: str
    tenant: str

    def __post_init__(self):
        try:
            canonical = str(uuid_mod.UUID(str(self.uuid)))
        except ValueError:
            raise exception.Refused(
                'instance uuid %r' % self.uuid, 'it is not a UUID',
                'pass the instance uuid in its canonical form') from None
        object.__setattr__(self, 'uuid', canonical)
        if not isinstance(self.tenant, str) or not self.tenant.strip():
            raise exception.Refused(
                'tenant of instance %s' % canonical, 'it is empty',
                'pass the id of the project that owns the instance')
        if not self.tenant.isprintable():
            # It is written into the domain XML, which cannot hold
            # control characters or lone surrogates.
            raise exception.Refused(
                'tenant %r of instance %s' % (self.tenant, canonical),
                'it holds characters that are not printable',
                'pass the id of the project that owns the instance')


class DomainHook(abc.ABC):
    """Base class of a domain hook.

    Subclasses list their options in ``CONFIG_OPTS``; the loader registers
    them in the group ``CONFIG_GROUP`` before the hook is built.

    :param conf: the orchestrator's configuration.
    """

    CONFIG_GROUP: typing.Optional[str] = None
    CONFIG_OPTS: typing.Sequence[cfg.Opt] = ()

    def __init__(self, conf: cfg.ConfigOpts):
        self.conf = conf

    @abc.abstractmethod
    def prepare(self, xml: str, instance: Instance) -> str:
        """Return the domain XML to define for ``instance``.

        Called before every define; must be idempotent (preparing its own
        output again returns it unchanged).

        :param xml: the domain XML the orchestrator built.
        :param instance: the instance it belongs to.
        :raises DmRestrictError: the domain must not be defined.
        """

    def prepare_with_undo(self, xml: str, instance: Instance
                          ) -> typing.Tuple[str, Undo]:
        """Like :meth:`prepare`; also return how to give back exactly
        what this call took (its own claim, never another call's), for
        when the domain it prepared is not defined after all.
        """
        return self.prepare(xml, instance), nothing_to_undo

    def lifecycle_lock(self, instance: Instance
                       ) -> typing.ContextManager[typing.Any]:
        """A lock held while the instance's domain is defined, started,
        undefined or cleaned up, shared with every process that decides
        whether to give back what :meth:`prepare` took.
        """
        return contextlib.nullcontext()

    def validate(self, xml: str, instance: Instance) -> None:
        """Refuse, before anything is locked or written, a domain that
        :meth:`prepare` would refuse anyway (a refusal changes nothing).

        :raises DmRestrictError: the domain must not be defined.
        """

    def release(self, instance: Instance, still_gone: Evidence) -> None:
        """Forget ``instance``: its domain has been undefined for good.

        :param still_gone: asked again right before anything is given
            back; when it says False, keep everything.
        :raises OperationRefused: the instance handle does not own what
            it would release (e.g. another tenant's).
        """

    def check_operation(self, xml: str, instance: Instance,
                        operation: str,
                        device_xml: typing.Optional[str] = None,
                        live: bool = False) -> None:
        """Refuse a lifecycle operation on the instance's domain.

        :param xml: the domain's current XML.
        :param operation: one of
            :mod:`xen_dm_restrict_plugin.orchestrator.operations`.
        :param device_xml: for device operations, the device element.
        :param live: for device operations, whether the change reaches
            the running guest.
        :raises OperationRefused: the operation must not happen.
        """

    def before_start(self, xml: str, instance: Instance) -> None:
        """Called right before the domain starts."""

    def after_stop(self, xml: str, instance: Instance) -> None:
        """Called after the domain stopped (shut down, destroyed, crashed).
        """


class NoopHook(DomainHook):
    """A hook that changes nothing; the example to start a new hook from.
    """

    def prepare(self, xml: str, instance: Instance) -> str:
        return xml
