"""``xen-dm-restrict-hook-service``: libvirtd's hook, kept loaded.

The compiled hook ``install-hook`` writes hands every call it acts on to
this service (see :mod:`xen_dm_restrict_plugin.daemon_hook.service`),
which keeps hook processes ready, so that no Python starts on libvirtd's
path.  Run it as root, before libvirtd, as a service of the init system
(``etc/systemd/xen-dm-restrict-hook-service.service``).  While it is not
running the hook runs its Python form itself: every call is still
checked, only slower.

Each call reads the configuration as the Python hook does (its snapshot
while that is current, else ``$XEN_DM_RESTRICT_CONFIG`` or
/etc/xen-dm-restrict/xen-dm-restrict.conf in full), so a changed
configuration applies to the next call without a restart.  When the
plugin changes on disk (an upgrade) the service exits (status 75), for
the init system to start it again with the new code; calls in between
run the Python hook.

Its workers run the hook as root from its import path: it checks that
path (stdlib only, before it imports anything else of the package) and
refuses to start when a directory on it is not root's alone.
"""

import sys
import typing

from xen_dm_restrict_plugin.cmd import serving

PROG = 'xen-dm-restrict-hook-service'


def build_parser():
    from xen_dm_restrict_plugin.daemon_hook import service

    parser = serving.build_parser(PROG, __doc__, service.DEFAULT_SOCKET,
                                  service.SOCKET_ENV, 'the compiled hook')
    parser.add_argument(
        '--workers', type=int, default=service.WORKERS,
        help='hook processes kept ready, each for one call (default: '
             '%(default)s)')
    return parser


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    if serving.untrusted_import_path(PROG):
        return 1
    args = build_parser().parse_args(argv)
    import logging

    from xen_dm_restrict_plugin.cmd import common
    from xen_dm_restrict_plugin.cmd import libvirt_hook
    from xen_dm_restrict_plugin.daemon_hook import service

    log = logging.getLogger(__name__)
    common.setup_logging(PROG, verbose=True)

    def call() -> int:
        serving.require_root(PROG, 'libvirtd runs its hook as root, and '
                             'the hook reaps, mounts and chowns')
        libvirt_hook.load_settings()  # a broken configuration fails here
        path = args.socket or service.socket_path()
        listener = serving.listen(PROG, path)
        log.info('answering libvirtd\'s compiled hook on %s with %d '
                 'workers ready', path, args.workers)
        return service.Service(args.workers).serve(listener)

    return common.run(PROG, call)


if __name__ == '__main__':
    sys.exit(main())
