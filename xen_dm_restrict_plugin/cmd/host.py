"""Shared by the host-side commands: configuration, logging, exit codes.

The launcher and the libvirt hook are started by libxl and libvirtd with
a fixed argv, so they cannot take ``--config-file``: they read
:data:`DEFAULT_CONFIG`, or the file named by the environment variable
:data:`CONFIG_ENV` (tests; note that libvirtd clears the environment of
its hooks).  The ``preflight`` and ``reap`` subcommands of
``xen-dm-restrict`` are implemented here too.
"""

import contextlib
import json
import logging
import os
import re
import sys
import typing

from oslo_config import cfg

from xen_dm_restrict_plugin.cmd import common
from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin.core import importpath
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import settings as launch_settings
from xen_dm_restrict_plugin.orchestrator import loader

LOG = logging.getLogger(__name__)

DEFAULT_CONFIG = launch_settings.DEFAULT_CONFIG
#: Environment variable naming the configuration file to use instead.
CONFIG_ENV = launch_settings.CONFIG_ENV

EXIT_OK = common.EXIT_OK
EXIT_ERROR = common.EXIT_ERROR
EXIT_REFUSED = common.EXIT_REFUSED
EXIT_UNRESOLVED = common.EXIT_UNRESOLVED


def config_files() -> typing.List[str]:
    """The configuration file to read.

    ``$XEN_DM_RESTRICT_CONFIG``, else :data:`DEFAULT_CONFIG` if it
    exists, else none (the defaults).

    :raises ConfigError: the environment names a file that is missing.
    """
    path = os.environ.get(CONFIG_ENV)
    if path:
        if not os.path.isfile(path):
            raise exception.ConfigError(
                CONFIG_ENV, '%s is not a file' % path,
                'point it at the configuration file, or unset it to use '
                '%s' % DEFAULT_CONFIG)
        return [path]
    return [DEFAULT_CONFIG] if os.path.exists(DEFAULT_CONFIG) else []


def load_conf(files: typing.Optional[typing.Sequence[str]] = None,
              unknown: typing.Optional[typing.List[str]] = None
              ) -> cfg.ConfigOpts:
    """Parse ``files`` with the ``[dm_restrict]`` and ``[libvirt]`` options.

    :param files: configuration files; default :func:`config_files`.
    :param unknown: a list to add misspelled options and groups to
        (:func:`~xen_dm_restrict_plugin.conf.unknown_names`) instead of
        refusing them.
    :raises ConfigError: a file is missing or cannot be parsed, or names
        an option or group of this product that does not exist.
    """
    if files is None:
        files = config_files()
    for path in files:
        if not os.path.isfile(path):
            raise exception.ConfigError(
                'configuration file %s' % path, 'there is no such file',
                'give the path of an existing file')
    conf = cfg.ConfigOpts()
    conf_mod.register_opts(conf)
    loader.register_opts(conf)
    opened: typing.List[int] = []
    try:
        if os.geteuid() == 0:
            for path in files:
                opened.append(_open_trusted(path))
        # Root parses each file as it checked it: through its descriptor.
        names = ['/proc/self/fd/%d' % fd for fd in opened] or list(files)
        with _config_errors(files, names):
            conf([], project='xen-dm-restrict', default_config_files=names,
                 default_config_dirs=[])
            if unknown is None:
                conf_mod.check_names(files, names)
            else:
                unknown.extend(conf_mod.unknown_names(files, names))
            conf_mod.names_checked(conf)
    finally:
        for fd in opened:
            os.close(fd)
    conf.default_config_files = list(files)
    if not files:
        LOG.warning('no configuration file read (none given, $%s unset, '
                    'no %s): every option has its default, so no tenant '
                    'has a uid range and no domain hook is enabled',
                    CONFIG_ENV, DEFAULT_CONFIG)
    return conf


def settings_of(conf: cfg.ConfigOpts) -> conf_mod.Settings:
    """Validate the ``[dm_restrict]`` options of a parsed ``conf``.

    :raises ConfigError: an option is invalid.
    """
    with _config_errors(conf.default_config_files or []):
        return conf_mod.load(conf)


def load_settings(files: typing.Optional[typing.Sequence[str]] = None
                  ) -> conf_mod.Settings:
    """Parse and validate the ``[dm_restrict]`` options of ``files``.

    :param files: configuration files; default :func:`config_files`.
    :raises ConfigError: the files or the options are invalid.
    """
    return settings_of(load_conf(files))


def refresh_snapshot(config: typing.Optional[str]) -> conf_mod.Settings:
    """Load the configuration the launcher and libvirtd's hook read, in
    full (the names checked for misspellings, every option validated),
    and write its settings snapshot when root.

    :param config: :func:`launch_settings.config_file
        <xen_dm_restrict_plugin.launcher.settings.config_file>`.
    :raises ConfigError: the configuration is invalid: no snapshot is
        written.
    """
    try:
        made_from = launch_settings.source(config)
    except OSError:
        made_from = False  # the full load below says why it is unreadable
    settings = load_settings()
    if os.geteuid() != 0 or made_from is False:
        return settings
    try:
        if launch_settings.source(config) == made_from:
            launch_settings.write(settings, config, made_from)
        else:
            LOG.warning('%s changed while it was read: its settings '
                        'snapshot is made again next time', config)
    except OSError as err:
        LOG.warning('cannot write the settings snapshot %s: %s',
                    launch_settings.path(), err)
    return settings


def _open_trusted(path: str) -> int:
    """Open ``path`` for root, who reads only a file root alone can
    change.

    :raises ConfigError: others could change it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        reason = launch_settings.untrusted(fd)
    except OSError as err:
        reason = str(err)
    if reason:
        os.close(fd)
        raise exception.ConfigError(
            'configuration file %s' % path, reason,
            'root starts the programs it names: chown root and chmod '
            'go-w the file and its directory')
    return fd


@contextlib.contextmanager
def _config_errors(files: typing.Sequence[str],
                   read_as: typing.Sequence[str] = ()
                   ) -> typing.Iterator[None]:
    try:
        yield
    except (cfg.Error, ValueError) as err:
        # oslo.config names where a value came from in its own terms.
        message = re.sub(r' from LocationInfo\(.*?\)(?= is not valid)', '',
                         str(err))
        for name, path in zip(read_as, files):
            message = message.replace(name, path)
        raise exception.ConfigError(
            'configuration %s' % (', '.join(files) or '(defaults)'),
            message, 'fix the configuration file') from None


#: Shared with the commands that must not import this module.
setup_logging = common.setup_logging
run = common.run


def preflight(args, settings: conf_mod.Settings,
              unknown: typing.Sequence[str] = ()) -> int:
    """``xen-dm-restrict preflight``: check the host, print the result.

    :returns: 0 when every check the configuration asks for passes, else 1.
    """
    from xen_dm_restrict_plugin.daemon_hook import operations
    from xen_dm_restrict_plugin.daemon_hook import service as hook_service
    from xen_dm_restrict_plugin.host import preflight as preflight_mod

    report = preflight_mod.run(
        settings, hooks_dir=args.libvirt_hooks_dir, unknown_names=unknown,
        hook_build=hook_service.build_id(operations.ACTED_ON))
    if args.format == 'json':
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
    return EXIT_OK if report.ok else EXIT_ERROR


def reap(args, settings: conf_mod.Settings) -> int:
    """``xen-dm-restrict reap --uid N``: kill every process of a uid.

    :raises ReapError: the reap was refused, is impossible on this host,
        or left processes behind.
    """
    from xen_dm_restrict_plugin.host import reaper

    result = reaper.Reaper(settings).reap(args.uid)
    if args.format == 'json':
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return EXIT_OK


#: The fast launcher script ``install-launcher`` writes.
LAUNCHER_SCRIPT = """\
#!%(python)s -IS
# Written by "xen-dm-restrict install-launcher": xen-dm-restrict-launch,
# isolated (-I) and without site start-up code (-S), which would cost
# more than QEMU's own start.
import sys
sys.path += %(path)r
from xen_dm_restrict_plugin.cmd.launch import main
sys.exit(main())
"""


#: The Python launcher beside the compiled front: PATH + this.
PYTHON_SUFFIX = '.py'
#: The compiled front's source, in the package.
FRONT_SOURCE = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'launcher', 'front.c')
#: libvirtd's compiled hook client's source, in the package.
HOOK_SOURCE = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'daemon_hook', 'client.c')


def compile_front(fallback: str) -> bytes:
    """Build the launcher's compiled front with the system compiler
    (``$CC``, else ``cc``).

    :param fallback: the Python launcher the front execs while the
        launcher service is not running.
    :returns: the executable's bytes.
    :raises CapabilityMissing: there is no compiler, or it failed.
    """
    from xen_dm_restrict_plugin.launcher import usage

    return _compile('install-launcher', FRONT_SOURCE, [
        '-DXDR_FALLBACK=%s' % _c_string(fallback),
        '-DXDR_SOCKET=%s' % _c_string(launch_settings.DEFAULT_SOCKET)],
        '--python-only for the slower Python launcher',
        '#define XDR_HELP %s\n#define XDR_HELP_ARGS %s\n' % (
            _c_literal(usage.HELP),
            ', '.join(_c_literal(arg) for arg in usage.HELP_ARGS)))


def compile_hook(python: str, program: str,
                 acted: typing.Sequence[typing.Tuple[str, str]],
                 timeout_ms: typing.Optional[int] = None) -> bytes:
    """Build libvirtd's compiled hook client (``daemon_hook/client.c``).

    :param python: the interpreter the client execs while the hook
        service is not running, with ``-IS -c program``.
    :param acted: the (operation, sub-operation) pairs it hands on; it
        exits 0 at once for every other.
    :param timeout_ms: how long it waits for the service to take a call
        before it runs the Python hook itself (default: 10 s).
    :returns: the executable's bytes.
    :raises CapabilityMissing: there is no compiler, or it failed.
    """
    from xen_dm_restrict_plugin.daemon_hook import operations
    from xen_dm_restrict_plugin.daemon_hook import service as hook_service

    defines = [
        ('XDR_PYTHON', _c_literal(python)),
        ('XDR_PROGRAM', _c_literal(program)),
        ('XDR_SOCKET', _c_literal(hook_service.DEFAULT_SOCKET)),
        ('XDR_ACTED', ', '.join(_c_literal(' '.join(op)) for op in acted)),
        ('XDR_ONLY_WITH', ', '.join(
            '%s, %s' % (_c_literal(' '.join(op)), _c_literal(text))
            for op, text in operations.only_with(acted)) or 'NULL'),
        ('XDR_BUILD', _c_literal(hook_service.build_id(acted).decode()))]
    if timeout_ms:
        defines.append(('HOOK_TIMEOUT_MS', str(int(timeout_ms))))
    header = ''.join('#define %s %s\n' % item for item in defines)
    return _compile('install-hook', HOOK_SOURCE, [], '--script-only for '
                    'the shell hook that starts Python', header)


def _compile(what: str, source: str, defines: typing.List[str],
             instead: str, header: str = '') -> bytes:
    import shlex
    import subprocess
    import tempfile

    compiler = shlex.split(os.environ.get('CC') or 'cc')
    with tempfile.TemporaryDirectory(prefix='xdr-build-') as work:
        output = os.path.join(work, 'program')
        if header:
            generated = os.path.join(work, 'generated.h')
            with open(generated, 'w') as handle:
                handle.write(header)
            defines = defines + ['-include', generated]
        command = compiler + [
            '-O2', '-Wall', '-Werror', '-D_FORTIFY_SOURCE=2'] + defines + [
            '-o', output, source]
        try:
            built = subprocess.run(command, capture_output=True, text=True,
                                   timeout=120)
        except OSError as err:
            raise exception.CapabilityMissing(
                what, 'cannot run the C compiler %s: %s' % (
                    compiler[0], err.strerror or err),
                'install gcc (bindep.txt; tools/install-deps.sh), or pass '
                + instead) from None
        if built.returncode != 0:
            raise exception.CapabilityMissing(
                what, 'the C compiler failed on %s: %s' % (
                    source, built.stderr.strip()[-2000:]),
                'install gcc and the C library headers (bindep.txt), or '
                'pass ' + instead)
        with open(output, 'rb') as handle:
            return handle.read()


def _c_literal(value: str) -> str:
    """Any text as a C string literal (every byte but letters, digits
    and a few marks as an octal escape).
    """
    safe = frozenset(b'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'
                     b'0123456789 /._-=+,:')
    data = value.encode('utf-8', 'surrogateescape')
    if b'\0' in data:
        raise exception.ConfigError(
            'install-hook', 'a NUL byte in %r' % value,
            'choose a path without one')
    return '"%s"' % ''.join(chr(byte) if byte in safe else '\\%03o' % byte
                            for byte in data)


def _c_string(value: str) -> str:
    """``value`` as a C string literal for a -D option."""
    if any(char in value for char in '"\\\n\0'):
        raise exception.ConfigError(
            'install-launcher', 'the path %r cannot be compiled into the '
            'front' % value, 'choose a path without quotes, backslashes '
            'or newlines')
    return '"%s"' % value


def _replace(target: str, data: bytes) -> None:
    """Write an executable ``target`` atomically, mode 0755."""
    temp = '%s.%d.tmp' % (target, os.getpid())
    try:
        with open(temp, 'xb') as handle:
            handle.write(data)
        os.chmod(temp, 0o755)
        os.rename(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


#: The hook ``install-hook`` writes: a shell script that starts Python
#: only for the operations the hook acts on.  Every other call exits 0
#: at once, leaving the domain XML unread: libvirtd ignores the EPIPE of
#: a hook that closed its stdin early (``virCommandProcessIO`` in
#: libvirt's ``src/util/vircommand.c``; the daemon ignores SIGPIPE,
#: ``virNetDaemonNew``), and a shell loop reading it would cost more
#: than the whole call.
#: The Python hook an isolated interpreter runs (``-IS -c``), the
#: import path put in at ``%(path)s``.
HOOK_PROGRAM = """import sys
sys.path += %(path)s
from xen_dm_restrict_plugin.cmd.libvirt_hook import main
sys.argv[0] = "xen-dm-restrict-libvirt-hook"
sys.exit(main())"""

HOOK_SCRIPT = """\
#!/bin/sh
# Written by "xen-dm-restrict install-hook --script-only": libvirtd's
# libxl hook. libvirtd runs it for every operation of every domain; only
# those the hook acts on start Python, isolated (-I) and without site
# start-up code (-S): %(acted)s.
# Every other call exits 0 without reading the domain XML (libvirtd
# ignores a hook that does not read its stdin).
case "$2 $3" in
    %(cases)s)
        exec %(python)s -IS -c %(program)s "$@" ;;
esac
"""


def _module_path() -> typing.List[str]:
    """The import path of an isolated Python that finds this package.

    :raises CapabilityMissing: a directory on it is not root's alone.
    """
    path = [entry for entry in sys.path[1:] if os.path.isabs(entry)]
    return check_import_path('install-launcher', path, 'the launcher')


def check_import_path(subject: str, path: typing.Sequence[str],
                      who: str) -> typing.List[str]:
    """``path`` and the package's own directory, once each is found to
    be root's alone (as every directory above it).

    :raises CapabilityMissing: one is not.
    """
    path = list(path) + [importpath.package_parent()]
    unsafe = importpath.first_unsafe(path)
    if unsafe:
        raise exception.CapabilityMissing(
            subject, '%s would import code from %s, and %s is not root\'s '
            'alone' % ((who,) + unsafe),
            'install the plugin where only root can write')
    return path


def install_hook(args, files: typing.Optional[typing.Sequence[str]] = None
                 ) -> int:
    """``xen-dm-restrict install-hook PATH``: write libvirtd's libxl hook
    as a shell script that runs Python only when the hook acts, and the
    settings snapshot it reads.

    :param files: the configuration files given on the command line; the
        hook reads :data:`DEFAULT_CONFIG` (or ``$XEN_DM_RESTRICT_CONFIG``)
        and nothing else.
    :raises ConfigError: the configuration is invalid (nothing is
        written), or other files were given.
    :raises CapabilityMissing: not root, or a file cannot be written.
    """
    from xen_dm_restrict_plugin.daemon_hook import operations

    if os.geteuid() != 0:
        raise exception.CapabilityMissing(
            'install-hook', 'it runs as uid %d: libvirtd runs its hooks as '
            'root, from root\'s files' % os.geteuid(), 'run it as root')
    for operation in operations.ACTED_ON:
        if any(not word.isalpha() for word in operation):
            raise exception.ConfigError(
                'install-hook', 'operation %r is not a plain word' % (
                    operation,), 'fix daemon_hook/operations.py')
    config = launch_settings.config_file()
    if files and list(files) != [config]:
        raise exception.ConfigError(
            'install-hook', 'the hook reads %s (or the file named by $%s), '
            'not %s' % (config or DEFAULT_CONFIG, CONFIG_ENV,
                        ', '.join(files)),
            'write the configuration there and run install-hook without '
            '--config-file')
    import json
    import shlex

    path = _module_path()
    # The whole configuration is checked first: a bad one writes nothing.
    refresh_snapshot(config)
    program = HOOK_PROGRAM % {'path': json.dumps(path)}
    script_only = getattr(args, 'script_only', False)
    if script_only:
        data = (HOOK_SCRIPT % {
            'acted': ', '.join(' '.join(op) for op in operations.ACTED_ON),
            'cases': '|'.join('"%s %s"' % op for op in operations.ACTED_ON),
            'python': shlex.quote(sys.executable),
            'program': shlex.quote(program)}).encode()
    else:
        data = compile_hook(sys.executable, program, operations.ACTED_ON)
    target = os.path.abspath(args.path)
    try:
        _replace(target, data)
    except OSError as err:
        raise exception.CapabilityMissing(
            'install-hook', 'cannot write %s: %s' % (
                target, err.strerror or err),
            'check the directory exists and is root\'s') from None
    print('wrote %s%s and the settings snapshot %s of %s (libvirtd reads '
          'its hooks when it starts: restart libvirtd)' % (
              target, '' if script_only else
              ', the compiled hook (it asks xen-dm-restrict-hook-service, '
              'else runs the Python hook itself),',
              launch_settings.path(), config or 'the defaults'))
    return EXIT_OK


def install_launcher(args, settings: conf_mod.Settings,
                     files: typing.Sequence[str] = ()) -> int:
    """``xen-dm-restrict install-launcher PATH``: write the fast launcher
    and the launcher's settings snapshot.

    :param files: the configuration files ``settings`` were read from.
    :raises ConfigError: no configuration file, or not the one the
        launcher reads.
    :raises CapabilityMissing: not root, or a file cannot be written.
    """
    config = launch_settings.config_file()
    if config is None or list(files) != [config]:
        raise exception.ConfigError(
            'install-launcher', 'the launcher reads %s (or the file named '
            'by $%s), and %s' % (
                DEFAULT_CONFIG, CONFIG_ENV,
                'it does not exist' if config is None else
                'the settings given were read from %s' % (
                    ', '.join(files) or 'no file')),
            'write %s (installation guide, step 5) and run '
            'install-launcher without --config-file' % DEFAULT_CONFIG)

    if os.geteuid() != 0:
        raise exception.CapabilityMissing(
            'install-launcher', 'it runs as uid %d: the launcher trusts '
            'only a root-owned snapshot' % os.geteuid(), 'run it as root')
    path = _module_path()
    text = LAUNCHER_SCRIPT % {'python': sys.executable, 'path': path}
    target = os.path.abspath(args.path)
    python_only = getattr(args, 'python_only', False)
    script = target if python_only else target + PYTHON_SUFFIX
    written = []
    try:
        _replace(script, text.encode())
        written.append(script)
        if not python_only:
            _replace(target, compile_front(script))
            written.append(target)
        snapshot = launch_settings.write(settings, config)
    except OSError as err:
        raise exception.CapabilityMissing(
            'install-launcher', 'cannot write %s: %s' % (
                err.filename or target, err.strerror or err),
            'check the directory exists and is root\'s') from None
    if python_only:
        print('wrote %s (set [dm_restrict] launcher = %s) and the settings '
              'snapshot %s of %s' % (target, target, snapshot,
                                     config or 'the defaults'))
    else:
        print('wrote %s, the compiled front (set [dm_restrict] launcher = '
              '%s), the Python launcher %s it falls back to while '
              'xen-dm-restrict-launch-service is not running, and the '
              'settings snapshot %s of %s' % (
                  target, target, script, snapshot,
                  config or 'the defaults'))
    return EXIT_OK
