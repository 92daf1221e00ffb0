"""``xen-dm-restrict-libvirt-hook``: libvirtd's libxl hook script.

Link it as ``/etc/libvirt/hooks/libxl`` (or into
``/etc/libvirt/hooks/libxl.d/``) and restart libvirtd.  What it does is
described in :mod:`xen_dm_restrict_plugin.daemon_hook.hook`.
"""

import sys
import typing

from xen_dm_restrict_plugin.daemon_hook import operations as hook_operations

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

    from xen_dm_restrict_plugin.cmd import host
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
               % (host.CONFIG_ENV, host.DEFAULT_CONFIG, PROG, PROG))
    parser.add_argument('domain', help='domain name')
    parser.add_argument('operation', help='e.g. prepare, stopped, migrate')
    parser.add_argument('sub_operation', help='e.g. begin, end')
    parser.add_argument('extra', nargs='*',
                        help='libvirtd passes "-"; ignored')
    return parser


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv not in (['--help'], ['-h']) and _not_acted_on(argv):
        # started, reconnect, ...: nothing to do, and nothing imported.
        if sys.stdin is not None:
            _drain(sys.stdin.buffer)
        return 0
    from xen_dm_restrict_plugin.cmd import host
    from xen_dm_restrict_plugin.daemon_hook import hook as libvirt_hook
    if argv in (['--help'], ['-h']):
        build_parser().parse_args(argv)
    # A domain may be called "-h" or "--x": libvirtd's argv is positional.
    args = build_parser().parse_args(['--'] + argv)
    host.setup_logging(PROG, verbose=True)

    def call() -> int:
        settings = host.load_settings()
        xml = libvirt_hook.read_stdin(sys.stdin.buffer,
                                      settings.max_xml_bytes)
        libvirt_hook.LibxlHook(settings).handle(
            args.domain, args.operation, args.sub_operation, xml)
        return host.EXIT_OK

    return host.run(PROG, call)


if __name__ == '__main__':
    sys.exit(main())
