"""``xen-dm-restrict-launch``: the device-model wrapper libxl starts.

Set ``[dm_restrict] launcher`` to this script's path; every restricted
domain then gets it as ``<emulator>``, and it execs ``[dm_restrict]
qemu_binary`` in new namespaces with rlimits and the chroot directory in
place (see :mod:`xen_dm_restrict_plugin.launcher`).  It takes QEMU's
arguments and no options of its own; its configuration is
``$XEN_DM_RESTRICT_CONFIG``, else /etc/xen-dm-restrict/xen-dm-restrict.conf.

``xen-dm-restrict-launch --help`` (exactly that one argument) prints
:data:`HELP`; ``-help``, which libvirt uses to tell qemu-xen from
qemu-xen-traditional, and every other query still reach QEMU.
"""

import sys
import typing

from xen_dm_restrict_plugin.cmd import host
from xen_dm_restrict_plugin import launcher

PROG = 'xen-dm-restrict-launch'

#: What ``xen-dm-restrict-launch --help`` prints.
HELP = """\
usage: xen-dm-restrict-launch QEMU-ARGUMENT...

The device-model wrapper of xen-dm-restrict. libxl starts it, as root,
in place of QEMU for every restricted domain: set [dm_restrict] launcher
to its path and the dm_restrict hook writes it as the domain's
<emulator>. It checks that the arguments restrict QEMU to a uid of a
configured range (-runas UID:GID or -run-with user=UID:GID) and to that
uid's chroot directory, creates the directory (empty, root-owned, mode
0000), unshares the mount and IPC namespaces, sets RLIMIT_FSIZE to
256 KiB and RLIMIT_CORE, RLIMIT_MSGQUEUE, RLIMIT_LOCKS and
RLIMIT_MEMLOCK to 0, and execs [dm_restrict] qemu_binary with the
arguments unchanged. A command line without the restriction is refused
(exit 2); one that only asks QEMU for its help or version (-help,
-version) is passed straight to QEMU.

It has no options of its own: this text is shown only for the single
argument --help. Configuration: $%(env)s, else
%(conf)s. Exit codes: QEMU's own once exec'd;
before that, 2 refused and 1 error, with the message on stderr.

examples:
  # what libvirt runs to tell qemu-xen from qemu-xen-traditional:
  xen-dm-restrict-launch -help
  # a restricted start, as libxl would run it (as root):
  xen-dm-restrict-launch -xen-domid 7 -xen-domid-restrict \\
      -runas 200000:200000 \\
      -chroot /var/run/xen/dm-restrict/qemu-root-200000 ...
""" % {'env': host.CONFIG_ENV, 'conf': host.DEFAULT_CONFIG}


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ['--help']:
        sys.stdout.write(HELP)
        return host.EXIT_OK
    host.setup_logging(PROG, verbose=True)

    def call() -> int:
        launcher.launch(host.load_settings(), args)

    return host.run(PROG, call)


if __name__ == '__main__':
    sys.exit(main())
