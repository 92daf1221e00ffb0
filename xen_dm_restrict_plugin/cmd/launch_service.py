"""``xen-dm-restrict-launch-service``: the launcher's checks, kept running.

The compiled front ``install-launcher`` writes asks this service for its
decision at every device-model start (see
:mod:`xen_dm_restrict_plugin.launcher.service`), so that no Python starts
on that path.  Run it as root, before libvirtd, as a service of the init
system (``etc/systemd/xen-dm-restrict-launch.service``).  While it is not
running the front falls back to the Python launcher: every start is
still checked, only slower.

It reads the configuration as the launcher does (its snapshot while that
is current, else ``$XEN_DM_RESTRICT_CONFIG`` or
/etc/xen-dm-restrict/xen-dm-restrict.conf in full), at every request, so
a changed configuration applies to the next start without a restart.
"""

import logging
import sys
import typing

# Nothing else of the package before the import path is checked (main).
from xen_dm_restrict_plugin.cmd import serving

LOG = logging.getLogger(__name__)
PROG = 'xen-dm-restrict-launch-service'


def load_settings():
    """The launcher's settings: the snapshot while it is current, else
    the configuration in full (and a fresh snapshot of it).

    :raises ConfigError: the configuration is invalid.
    """
    from xen_dm_restrict_plugin.cmd import host
    from xen_dm_restrict_plugin.launcher import settings as launch_settings

    config = launch_settings.config_file()
    settings = launch_settings.load(config)
    if settings is not None:
        return settings
    settings = host.load_settings()
    try:
        launch_settings.write(settings, config)
    except OSError as err:
        LOG.warning('cannot write the launcher settings snapshot %s: %s',
                    launch_settings.path(), err)
    return settings


def build_parser():
    from xen_dm_restrict_plugin.launcher import settings as launch_settings

    return serving.build_parser(PROG, __doc__, launch_settings.DEFAULT_SOCKET,
                                launch_settings.SOCKET_ENV, 'the front')


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    # It decides, as root, from code on this import path.
    if serving.untrusted_import_path(PROG):
        return 1
    args = build_parser().parse_args(argv)
    from xen_dm_restrict_plugin.cmd import host
    from xen_dm_restrict_plugin.launcher import service
    from xen_dm_restrict_plugin.launcher import settings as launch_settings

    host.setup_logging(PROG, verbose=True)

    def call() -> int:
        serving.require_root(PROG, 'it creates chroots, cgroups and tap '
                             'devices for root\'s launcher')
        load_settings()  # a broken configuration fails here, not later
        path = args.socket or launch_settings.socket_path()
        listener = serving.listen(PROG, path)
        LOG.info('answering the launcher front on %s', path)
        service.Service(load_settings).serve(listener)
        return host.EXIT_OK  # pragma: no cover - serve() never returns

    return host.run(PROG, call)


if __name__ == '__main__':
    sys.exit(main())
