"""``xen-dm-restrict-launch``: the device-model wrapper libxl starts.

Set ``[dm_restrict] launcher`` to this script's path; every restricted
domain then gets it as ``<emulator>``, and it execs ``[dm_restrict]
qemu_binary`` in new namespaces, with rlimits, a cgroup and the chroot
directory in place (see :mod:`xen_dm_restrict_plugin.launcher.launch`).
It takes QEMU's arguments and no options of its own; its configuration is
``$XEN_DM_RESTRICT_CONFIG``, else /etc/xen-dm-restrict/xen-dm-restrict.conf.

It runs at every define and start of every domain, so its start-up path
reads the launcher's snapshot of the configuration
(:mod:`~xen_dm_restrict_plugin.launcher.settings`) and imports nothing it
does not use; only when the snapshot is missing or stale does it load
oslo.config, then it writes a fresh snapshot.

``xen-dm-restrict-launch --help`` or ``-help`` (exactly that one
argument) prints :data:`~xen_dm_restrict_plugin.launcher.usage.HELP`
without starting QEMU; ``-help`` is libvirt's probe of the emulator
(see :mod:`~xen_dm_restrict_plugin.launcher.usage`).  Every other query
(``-version``, ``-h``) still reaches QEMU.
"""

import os
import sys

from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import settings as launch_settings
from xen_dm_restrict_plugin.launcher import usage

PROG = 'xen-dm-restrict-launch'
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REFUSED = 2


def load_settings():
    """The launcher's settings: the snapshot if current, else the full
    configuration (and a new snapshot of it, when root).

    :raises ConfigError: the configuration is invalid.
    """
    config = launch_settings.config_file()
    settings = launch_settings.load(config)
    if settings is not None:
        return settings
    from xen_dm_restrict_plugin.cmd import host

    host.setup_logging(PROG, verbose=True)
    settings = host.load_settings()
    if os.geteuid() == 0:
        try:
            launch_settings.write(settings, config)
        except OSError as err:
            from xen_dm_restrict_plugin.launcher import launch as launcher

            launcher.say('WARNING', 'cannot write the launcher settings '
                         'snapshot %s: %s' % (launch_settings.path(), err))
    return settings


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 1 and args[0] in usage.HELP_ARGS:
        sys.stdout.write(usage.HELP)
        return EXIT_OK
    try:
        settings = load_settings()
        if args and set(args) <= launch_settings.QUERY_ARGS:
            try:
                os.execv(settings.qemu_binary,
                         [settings.qemu_binary] + args)
            except OSError:
                pass  # launch() explains why QEMU cannot be executed
        from xen_dm_restrict_plugin.launcher import launch as launcher

        launcher.launch(settings, args)
    except exception.Refused as err:
        print('%s: refused: %s' % (PROG, err), file=sys.stderr)
        return EXIT_REFUSED
    except exception.DmRestrictError as err:
        print('%s: error: %s' % (PROG, err), file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # noqa: BLE001 - the last line of defence
        print('%s: error: %s: %s' % (PROG, type(err).__name__, err),
              file=sys.stderr)
        return EXIT_ERROR
    return EXIT_ERROR  # pragma: no cover - launch() never returns


if __name__ == '__main__':
    sys.exit(main())
