"""What every host command shares and imports at no cost: exit codes,
logging to stderr, and turning errors into a message and an exit code.

libvirtd's hook imports this, not :mod:`~xen_dm_restrict_plugin.cmd.host`
(oslo.config, stevedore), on the path it takes at every domain start.
"""

import logging
import sys

from xen_dm_restrict_plugin import exception

LOG = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REFUSED = 2
#: ``leases reconcile`` left discrepancies for an operator.
EXIT_UNRESOLVED = 3


def setup_logging(prog, verbose=False, quiet_level=logging.WARNING):
    """Log to stderr, prefixed with the program name.

    :param verbose: log INFO and above, else ``quiet_level`` and above.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else quiet_level,
        format=prog + ': %(levelname)s %(name)s: %(message)s')
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_not_a_refusal)


def _not_a_refusal(record):
    """Drop the log line of a refusal: :func:`run` prints it once."""
    return not str(record.msg).startswith('refused')


def run(prog, func):
    """Call ``func`` and turn our errors into a message and exit code.

    :returns: ``func``'s exit code, 2 for a refusal, 1 for an error.
    """
    try:
        return func()
    except exception.Refused as err:
        print('%s: refused: %s' % (prog, err), file=sys.stderr)
        return EXIT_REFUSED
    except exception.DmRestrictError as err:
        print('%s: error: %s' % (prog, err), file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # noqa: BLE001 - the last line of defence
        LOG.debug('unexpected failure', exc_info=True)
        print('%s: error: %s: %s' % (prog, type(err).__name__, err),
              file=sys.stderr)
        return EXIT_ERROR
