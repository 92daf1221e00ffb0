"""The root steps of the orchestrator-side hook, through oslo.privsep.

An orchestrator such as nova-compute runs as an unprivileged user, but
the ``dm_restrict`` hook must reap a device-model uid before a domain
starts, after it stops and before its lease is released.  OpenStack's way
for the few root steps of a service is a privsep daemon: the service
starts it once (through ``sudo privsep-helper`` or rootwrap, configured
in ``[dm_restrict_privileged]``), and it keeps only the capabilities
listed here.  The reap needs ``CAP_SETUID``: it forks a child that sets
its ids to (reaper, target, root) and sends ``kill(-1, SIGKILL)``, which
the kernel allows because the effective uid is the target's.

The daemon decides with its *own* configuration (the ``[dm_restrict]``
options of the configuration files it was started with), never with
ranges or users sent by the unprivileged side: a compromised orchestrator
can at most ask it to reap a uid inside a configured range.
"""

import glob
import os
import stat
import typing

from oslo_config import cfg
from oslo_privsep import capabilities
from oslo_privsep import priv_context

from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import reaper as reaper_mod
from xen_dm_restrict_plugin.launcher import settings as launch_settings

GROUP = conf_mod.PRIVILEGED_GROUP

dm_restrict_pctxt = priv_context.PrivContext(
    'xen_dm_restrict_plugin', cfg_section=GROUP,
    # The historical name: operators' rootwrap filters and sudoers rules
    # match it in privsep-helper's command line.
    pypath='xen_dm_restrict_plugin.privileged.dm_restrict_pctxt',
    capabilities=[capabilities.CAP_SETUID])


def _settings() -> conf_mod.Settings:
    """The daemon's own ``[dm_restrict]`` settings.

    The daemon decides as root with them (which uids may be reaped, by
    which reaper user), so it reads them again itself, each file through
    the descriptor it checked (as the launcher does): the files it was
    started with and every ``*.conf`` of its configuration directories,
    each of them, every directory on its path and the directory it
    resolves into root's alone.  What oslo.config parsed at the daemon's
    start is not used: the orchestrator chose those paths.

    :raises ConfigError: a file or directory others could change.
    """
    paths = list(cfg.CONF.config_file or ())
    for directory in (cfg.CONF.config_dir or ()) if 'config_dir' in \
            cfg.CONF else ():
        _check_path(directory)
        paths += sorted(glob.glob(os.path.join(glob.escape(directory),
                                               '*.conf')))
    fds = []
    try:
        for path in paths:
            _check_path(os.path.dirname(os.path.abspath(path)))
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as err:
                raise exception.ConfigError(
                    'configuration file %s' % path, err.strerror,
                    'start the privsep daemon with readable files') from None
            fds.append(fd)
            reason = launch_settings.untrusted(fd)
            if reason:
                raise exception.ConfigError(
                    'configuration file %s' % path, '%s, and the privsep '
                    'daemon decides as root with it' % reason,
                    'chown root and chmod go-w the file and its directory')
        conf = cfg.ConfigOpts()
        conf_mod.register_opts(conf)
        conf([], project='xen-dm-restrict', default_config_files=[
            '/proc/self/fd/%d' % fd for fd in fds], default_config_dirs=[])
        return conf_mod.load(conf, check_files=False)
    finally:
        for fd in fds:
            os.close(fd)


def _check_path(directory: str) -> None:
    """Every directory ``directory``'s name passes through is root's alone
    (a sticky one, like /tmp, may be shared).

    :raises ConfigError: one is not.
    """
    current = '/'
    for part in os.path.abspath(directory).split('/')[1:]:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except OSError as err:
            raise exception.ConfigError(
                'configuration directory %s' % current, err.strerror,
                'start the privsep daemon with existing files') from None
        if st.st_uid != 0 or (st.st_mode & 0o022 and
                              not st.st_mode & stat.S_ISVTX):
            raise exception.ConfigError(
                'configuration directory %s' % current, 'it is not root\'s '
                'alone (owner uid %d, mode %04o), and the privsep daemon '
                'decides as root with what it holds' % (
                    st.st_uid, stat.S_IMODE(st.st_mode)),
                'keep the configuration in directories only root can '
                'write')


@dm_restrict_pctxt.entrypoint
def reap(uid: int, context: str) -> typing.Dict[str, typing.Any]:
    """Reap ``uid`` as root; runs in the privsep daemon.

    :returns: the :class:`~xen_dm_restrict_plugin.host.reaper.ReapResult` as a
        dict.
    :raises ReapError: as :meth:`Reaper.reap`, re-raised on the caller's
        side.
    """
    return reaper_mod.Reaper(_settings()).reap(int(uid), context).to_dict()


@dm_restrict_pctxt.entrypoint
def unavailable_reason() -> typing.Optional[str]:
    """Why the daemon cannot reap, or None; runs in the privsep daemon."""
    return reaper_mod.Reaper(_settings()).unavailable_reason()


class PrivsepReaper(reaper_mod.Reaper):
    """A reaper that does its root steps in the privsep daemon.

    The uid is checked here too, so a refused reap fails before anything
    is sent to the daemon.
    """

    def unavailable_reason(self) -> typing.Optional[str]:
        missing = self.reaper_user_missing()
        if missing is not None:
            return missing
        try:
            return unavailable_reason()
        except Exception as err:  # noqa: BLE001 - the daemon did not start
            return ('the privsep daemon (%s) could not be used: %s'
                    % (GROUP, err))

    def reap(self, uid: int, context: str = '') -> reaper_mod.ReapResult:
        self.check_uid(uid)
        self.check_available()
        return reaper_mod.ReapResult(**{
            key: tuple(value) if isinstance(value, list) else value
            for key, value in reap(uid, context).items()})


def list_opts():
    """The ``[dm_restrict_privileged]`` options, for the sample config."""
    return [(GROUP, priv_context.OPTS)]
