"""Orchestrator side: load the enabled domain hooks and call them in order.

The orchestrator's configuration names the hooks to run
(``[libvirt] domain_hooks = dm_restrict``).  They are loaded by name with
stevedore, in the configured order, and a hook that is missing or fails
to load stops the orchestrator from starting: booting tenant VMs without
the restriction the operator asked for would be the silent failure this
product exists to prevent.  Every error a hook raises that is not one of
ours is re-raised as :class:`~xen_dm_restrict_plugin.exception.HookFailed`
naming the hook.
"""

import contextlib
import logging
import typing

from oslo_config import cfg
from stevedore import named

from xen_dm_restrict_plugin import conf
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import hooks

LOG = logging.getLogger(__name__)

GROUP = conf.HOOKS_GROUP
hook_opts = conf.hook_opts


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register ``[libvirt] domain_hooks`` on ``conf``."""
    conf.register_opts(hook_opts, group=GROUP)


def _missing(names):
    raise exception.HookLoadError(
        'domain hook(s) %s named in [libvirt] domain_hooks are not '
        'installed (no entry point in %s)'
        % (', '.join(sorted(names)), hooks.NAMESPACE))


def _load_failed(manager, entrypoint, error):
    raise exception.HookLoadError(
        'domain hook %r failed to load: %s: %s'
        % (entrypoint.name, type(error).__name__, error)) from error


class HookManager:
    """The enabled domain hooks, in their configured order.

    :param conf: the orchestrator's configuration, already parsed.
    :param names: hook names; defaults to ``[libvirt] domain_hooks``.
    :raises HookLoadError: a named hook is missing or fails to load.
    """

    def __init__(self, conf: cfg.ConfigOpts,
                 names: typing.Optional[typing.Sequence[str]] = None):
        register_opts(conf)
        if names is None:
            names = conf[GROUP].domain_hooks
        self.conf = conf
        self.names = list(names)
        if not self.names:
            self.hooks: typing.List[typing.Tuple[str, hooks.DomainHook]] = []
            LOG.warning('no domain hooks enabled in [libvirt] domain_hooks')
            return
        manager = named.NamedExtensionManager(
            hooks.NAMESPACE, self.names, name_order=True,
            invoke_on_load=False,
            on_missing_entrypoints_callback=_missing,
            on_load_failure_callback=_load_failed)
        self.hooks = [(ext.name, self._build(ext.name, ext.plugin))
                      for ext in manager]
        LOG.info('domain hooks enabled: %s', ', '.join(self.names))

    @classmethod
    def from_hooks(cls, conf: cfg.ConfigOpts,
                   built: typing.Sequence[typing.Tuple[str,
                                                       hooks.DomainHook]]):
        """A manager over hooks built by the caller (tests, embedding)."""
        self = cls.__new__(cls)
        self.conf = conf
        self.names = [name for name, _ in built]
        self.hooks = list(built)
        return self

    def _build(self, name: str, plugin: type) -> hooks.DomainHook:
        if plugin.CONFIG_OPTS:
            self.conf.register_opts(plugin.CONFIG_OPTS,
                                    group=plugin.CONFIG_GROUP or name)
        try:
            return plugin(self.conf)
        except exception.DmRestrictError:
            raise
        except Exception as err:
            raise exception.HookLoadError(
                'domain hook %r could not be initialised: %s: %s'
                % (name, type(err).__name__, err)) from err

    def _call(self, name: str, func, *args):
        try:
            return func(*args)
        except exception.DmRestrictError:
            raise
        except Exception as err:
            LOG.exception('domain hook %s failed', name)
            raise exception.HookFailed(name, err) from err

    def prepare(self, xml: str, instance: hooks.Instance) -> str:
        """Run every hook's ``prepare`` in order, each on the last's output.
        """
        for name, hook in self.hooks:
            xml = self._call(name, hook.prepare, xml, instance)
        return xml

    def prepare_with_undo(self, xml: str, instance: hooks.Instance,
                          still_gone: hooks.Evidence = hooks.no_domain_yet
                          ) -> typing.Tuple[str, hooks.Undo]:
        """Like :meth:`prepare`; also return how to give back what these
        calls took.  A hook that fails gives back what the earlier ones
        took before the error is raised, asking ``still_gone`` first.
        """
        undos: typing.List[typing.Tuple[str, hooks.Undo]] = []

        def undo_all(still_gone: hooks.Evidence = hooks.no_domain_yet
                     ) -> None:
            while undos:
                name, undo = undos.pop()
                try:
                    self._call(name, undo, still_gone)
                except exception.DmRestrictError as err:
                    LOG.error('instance %s of tenant %s: domain hook %s '
                              'could not give back what it took: %s',
                              instance.uuid, instance.tenant, name, err)

        try:
            for name, hook in self.hooks:
                xml, undo = self._call(name, hook.prepare_with_undo, xml,
                                       instance)
                undos.append((name, undo))
        except BaseException:
            undo_all(still_gone)
            raise
        return xml, undo_all

    @contextlib.contextmanager
    def locked(self, instance: hooks.Instance) -> typing.Iterator[None]:
        """Hold every hook's :meth:`~hooks.DomainHook.lifecycle_lock`."""
        with contextlib.ExitStack() as stack:
            for name, hook in self.hooks:
                stack.enter_context(self._call(name, hook.lifecycle_lock,
                                               instance))
            yield

    def validate(self, xml: str, instance: hooks.Instance) -> None:
        """Ask every hook whether it would refuse ``xml`` outright; called
        before any lock is taken, so a refusal creates nothing.
        """
        for name, hook in self.hooks:
            self._call(name, hook.validate, xml, instance)

    def release(self, instance: hooks.Instance,
                still_gone: hooks.Evidence) -> None:
        """Tell every hook, in reverse order, that the instance is gone;
        each asks ``still_gone`` again before it gives anything back.
        """
        for name, hook in reversed(self.hooks):
            self._call(name, hook.release, instance, still_gone)

    def check_operation(self, xml: str, instance: hooks.Instance,
                        operation: str,
                        device_xml: typing.Optional[str] = None,
                        live: bool = False) -> None:
        """Ask every hook whether ``operation`` may proceed."""
        for name, hook in self.hooks:
            self._call(name, hook.check_operation, xml, instance, operation,
                       device_xml, live)

    def before_start(self, xml: str, instance: hooks.Instance) -> None:
        for name, hook in self.hooks:
            self._call(name, hook.before_start, xml, instance)

    def after_stop(self, xml: str, instance: hooks.Instance) -> None:
        for name, hook in reversed(self.hooks):
            self._call(name, hook.after_stop, xml, instance)
