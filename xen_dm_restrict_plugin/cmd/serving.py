"""What the root services' console scripts share.

``xen-dm-restrict-launch-service`` and ``xen-dm-restrict-hook-service``
run as root, answer a compiled client on a root-only socket and decide
from the code on their import path.  This module imports nothing of the
package but :mod:`~xen_dm_restrict_plugin.core.importpath` at load, so a
service checks that path before it imports anything else.
"""

import os
import sys

from xen_dm_restrict_plugin.core import importpath


def untrusted_import_path(prog: str) -> bool:
    """Whether root must not run code from this import path; if so, says
    why on stderr.
    """
    if os.geteuid() != 0:
        return False
    reason = importpath.untrusted_reason()
    if reason:
        print('%s: error: %s' % (prog, reason), file=sys.stderr)
    return bool(reason)


def build_parser(prog: str, doc: str, default_socket: str,
                 socket_env: str, client: str):
    """A service's argument parser: its ``--socket``, the configuration
    it reads, an example.

    :param client: who asks on the same socket.
    """
    import argparse

    from xen_dm_restrict_plugin.core import constants

    parser = argparse.ArgumentParser(
        prog=prog, description=doc.split('\n\n')[1],
        epilog='configuration: $%s, else %s\n\nexample (as root):\n'
               '  %s --socket %s' % (
                   constants.CONFIG_ENV, constants.DEFAULT_CONFIG, prog,
                   default_socket),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--socket', default=None,
        help='where to listen (default: $%s, else %s); %s asks the same '
             'path' % (socket_env, default_socket, client))
    return parser


def require_root(prog: str, why: str) -> None:
    """:raises CapabilityMissing: not root (``why``: what needs it)."""
    from xen_dm_restrict_plugin import exception

    if os.geteuid() != 0:
        raise exception.CapabilityMissing(
            prog, 'it runs as uid %d: %s' % (os.geteuid(), why),
            'run it as root')


def listen(prog: str, path: str):
    """The service's root-only listening socket at ``path``.

    :raises CapabilityMissing: it cannot be made there.
    """
    from xen_dm_restrict_plugin import exception
    from xen_dm_restrict_plugin.launcher import service

    try:
        return service.listen(path)
    except OSError as err:
        raise exception.CapabilityMissing(
            prog, 'cannot listen on %s: %s' % (path, err),
            'check that its directory is root\'s') from None
