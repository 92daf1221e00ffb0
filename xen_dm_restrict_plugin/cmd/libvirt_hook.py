"""``xen-dm-restrict-libvirt-hook``: libvirtd's libxl hook script.

Link it as ``/etc/libvirt/hooks/libxl`` (or into
``/etc/libvirt/hooks/libxl.d/``), or write the faster shell script of
``xen-dm-restrict install-hook`` there, and restart libvirtd.  What it
does is described in :mod:`xen_dm_restrict_plugin.daemon_hook.hook`.

libvirtd waits for it at every operation of every domain, so the path
of the operations it acts on imports neither oslo.config nor stevedore:
the settings come from the snapshot of the configuration
(:mod:`xen_dm_restrict_plugin.launcher.settings`), and only a missing or
stale snapshot makes it load the configuration in full (and write a new
snapshot).
"""

import sys
import typing

from xen_dm_restrict_plugin.daemon_hook import operations as hook_operations
from xen_dm_restrict_plugin.launcher import settings as launch_settings

PROG = 'xen-dm-restrict-libvirt-hook'


def _not_acted_on(argv: typing.Sequence[str]) -> bool:
    """Whether libvirtd called for an operation the hook ignores."""
    return (len(argv) >= 3 and tuple(argv[1:3])
            not in hook_operations.ACTED_ON)


def _drain(stream: typing.BinaryIO) -> None:
    """Read what libvirtd writes, so it never meets a closed pipe."""
    try:
        while stream.read(65536):
            pass
    except OSError:
        pass


def build_parser():
    import argparse

    from xen_dm_restrict_plugin.daemon_hook import hook as libvirt_hook

    parser = argparse.ArgumentParser(
        prog=PROG, description=libvirt_hook.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='configuration: $%s, else\n%s\n\n'
               'examples:\n'
               '  # install it (libvirtd reads its hooks when it starts):\n'
               '  ln -s "$(command -v %s)" /etc/libvirt/hooks/libxl\n'
               '  systemctl restart libvirtd\n'
               '  # what libvirtd runs before it starts domain acme-web-1, '
               'by hand:\n'
               '  %s acme-web-1 prepare begin - < restricted.xml\n'
               '  echo $?   # 0 allowed, 2 refused, 1 error'
               % (launch_settings.CONFIG_ENV, launch_settings.DEFAULT_CONFIG,
                  PROG, PROG))
    parser.add_argument('domain', help='domain name')
    parser.add_argument('operation', help='e.g. prepare, stopped, migrate')
    parser.add_argument('sub_operation', help='e.g. begin, end')
    parser.add_argument('extra', nargs='*',
                        help='libvirtd passes "-"; ignored')
    return parser


def load_settings():
    """The hook's settings: the snapshot while it is current, else the
    configuration in full (and a fresh snapshot of it, when root).

    :raises ConfigError: the configuration is invalid, or the snapshot
        is not root's alone (:class:`launch_settings.Untrusted
        <xen_dm_restrict_plugin.launcher.settings.Untrusted>`): nothing
        is done then, not even a new snapshot.
    """
    config = launch_settings.config_file()
    values = launch_settings.read(config)
    if values is not None:
        try:
            return launch_settings.full_settings(values)
        except (KeyError, TypeError, ValueError):
            pass  # another version's snapshot: made again below
    from xen_dm_restrict_plugin.cmd import host

    return host.refresh_snapshot(config)


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv not in (['--help'], ['-h']) and _not_acted_on(argv):
        # started, reconnect, ...: nothing to do, and nothing imported.
        if sys.stdin is not None:
            _drain(sys.stdin.buffer)
        return 0
    if argv in (['--help'], ['-h']):
        build_parser().parse_args(argv)
    if len(argv) < 3:
        # An argv libvirtd never passes: argparse says what is missing.
        # (A domain may be called "-h" or "--x": libvirtd's argv is
        # positional.)
        build_parser().parse_args(['--'] + argv)
    domain, operation, sub_operation = argv[:3]
    from xen_dm_restrict_plugin.cmd import common
    from xen_dm_restrict_plugin.daemon_hook import hook as libvirt_hook

    common.setup_logging(PROG, verbose=True)

    def call() -> int:
        settings = load_settings()
        xml = libvirt_hook.read_stdin(sys.stdin.buffer,
                                      settings.max_xml_bytes)
        libvirt_hook.LibxlHook(settings).handle(
            domain, operation, sub_operation, xml)
        return common.EXIT_OK

    return common.run(PROG, call)


if __name__ == '__main__':
    sys.exit(main())
