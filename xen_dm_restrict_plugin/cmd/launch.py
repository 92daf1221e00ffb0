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

``xen-dm-restrict-launch --help`` (exactly that one argument) prints
:data:`HELP`; ``-help``, which libvirt uses to tell qemu-xen from
qemu-xen-traditional, and every other query still reach QEMU.
"""

import os
import sys

from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import settings as launch_settings

PROG = 'xen-dm-restrict-launch'
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REFUSED = 2

#: What ``xen-dm-restrict-launch --help`` prints.
HELP = """\
usage: xen-dm-restrict-launch QEMU-ARGUMENT...

The device-model wrapper of xen-dm-restrict. libxl starts it, as root,
in place of QEMU for every restricted domain: set [dm_restrict] launcher
to its path and the dm_restrict hook writes it as the domain's
<emulator>. It checks that the arguments are ones libxl writes for an
allowed domain and restrict QEMU to a uid of a configured range
(-runas UID:GID or -run-with user=UID:GID) and to that uid's chroot
directory. It then creates the directory (empty, root-owned, mode
0000), puts itself in the uid's cgroup (pids, memory and CPU limits),
opens the emulated NICs' tap devices and hands them to QEMU as file
descriptors, unshares the mount, IPC and network namespaces, sets
RLIMIT_NPROC, RLIMIT_FSIZE to 256 KiB and RLIMIT_CORE, RLIMIT_MSGQUEUE,
RLIMIT_LOCKS and RLIMIT_MEMLOCK to 0, installs a seccomp filter (under
QEMU's own -sandbox too), and execs [dm_restrict] qemu_binary. A command
line without the restriction is refused (exit 2); one that only asks
QEMU for its help or version (-help, -version) is passed straight to
QEMU.

It has no options of its own: this text is shown only for the single
argument --help. Configuration: $%(env)s, else
%(conf)s; it reads a snapshot of it from
%(snapshot)s while that is current. Exit codes:
QEMU's own once exec'd; before that, 2 refused and 1 error, with the
message on stderr.

examples:
  # what libvirt runs to tell qemu-xen from qemu-xen-traditional:
  xen-dm-restrict-launch -help
  # a restricted start, as libxl would run it (as root):
  xen-dm-restrict-launch -xen-domid 7 -xen-domid-restrict \\
      -runas 200000:200000 \\
      -chroot /var/run/xen/dm-restrict/qemu-root-200000 ...
""" % {'env': launch_settings.CONFIG_ENV,
       'conf': launch_settings.DEFAULT_CONFIG,
       'snapshot': launch_settings.DEFAULT_PATH}


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
    if args == ['--help']:
        sys.stdout.write(HELP)
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
