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

import os
import sys
import typing

from xen_dm_restrict_plugin.core import importpath

PROG = 'xen-dm-restrict-hook-service'


def build_parser():
    import argparse

    from xen_dm_restrict_plugin.core import constants
    from xen_dm_restrict_plugin.daemon_hook import service

    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split('\n\n')[1],
        epilog='configuration: $%s, else %s\n\nexample (as root):\n'
               '  %s --socket %s' % (
                   constants.CONFIG_ENV, constants.DEFAULT_CONFIG, PROG,
                   service.DEFAULT_SOCKET),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--socket', default=None,
        help='where to listen (default: $%s, else %s); the compiled hook '
             'asks the same path' % (service.SOCKET_ENV,
                                     service.DEFAULT_SOCKET))
    parser.add_argument(
        '--workers', type=int, default=service.WORKERS,
        help='hook processes kept ready, each for one call (default: '
             '%(default)s)')
    return parser


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    if os.geteuid() == 0:
        reason = importpath.untrusted_reason()
        if reason:
            print('%s: error: %s' % (PROG, reason), file=sys.stderr)
            return 1
    args = build_parser().parse_args(argv)
    import logging

    from xen_dm_restrict_plugin.cmd import common
    from xen_dm_restrict_plugin.cmd import libvirt_hook
    from xen_dm_restrict_plugin.daemon_hook import service
    from xen_dm_restrict_plugin import exception
    from xen_dm_restrict_plugin.launcher import service as launch_service

    log = logging.getLogger(__name__)
    common.setup_logging(PROG, verbose=True)

    def call() -> int:
        if os.geteuid() != 0:
            raise exception.CapabilityMissing(
                PROG, 'it runs as uid %d: libvirtd runs its hook as root, '
                'and the hook reaps, mounts and chowns' % os.geteuid(),
                'run it as root')
        libvirt_hook.load_settings()  # a broken configuration fails here
        path = args.socket or service.socket_path()
        try:
            listener = launch_service.listen(path)
        except OSError as err:
            raise exception.CapabilityMissing(
                PROG, 'cannot listen on %s: %s' % (path, err),
                'check that its directory is root\'s') from None
        log.info('answering libvirtd\'s compiled hook on %s with %d '
                 'workers ready', path, args.workers)
        return service.Service(args.workers).serve(listener)

    return common.run(PROG, call)


if __name__ == '__main__':
    sys.exit(main())
