"""``xen-dm-restrict-launch``: the device-model wrapper libxl starts.

Set ``[dm_restrict] launcher`` to this script's path; every restricted
domain then gets it as ``<emulator>``, and it execs ``[dm_restrict]
qemu_binary`` in new namespaces with rlimits and the chroot directory in
place (see :mod:`xen_dm_restrict_plugin.launcher`).  It takes QEMU's
arguments and no options of its own; its configuration is
``$XEN_DM_RESTRICT_CONFIG``, else /etc/xen-dm-restrict/xen-dm-restrict.conf.
"""

import sys
import typing

from xen_dm_restrict_plugin.cmd import host
from xen_dm_restrict_plugin import launcher

PROG = 'xen-dm-restrict-launch'


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    host.setup_logging(PROG, verbose=True)

    def call() -> int:
        launcher.launch(host.load_settings(), args)

    return host.run(PROG, call)


if __name__ == '__main__':
    sys.exit(main())
