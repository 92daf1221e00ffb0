"""What the device-model launcher needs of the configuration, read cheaply.

libvirt runs the domain's ``<emulator>`` at every define and start, and
libxl runs it at every device-model start, so the launcher's own start-up
is paid on every one of them.  Loading oslo.config (and validating every
option) costs far more than QEMU's own start, so the launcher reads a
small JSON snapshot instead: the few settings it uses, written by a
process that did load and validate the configuration (``preflight``, or
the launcher itself the first time), together with the identity of the
configuration file it was made from.

The snapshot is written with :mod:`marshal`, which is built into the
interpreter: even :mod:`json` would cost the launcher the import of
:mod:`re`, more than a query of QEMU's version costs.

The snapshot is used only while it is provably current and trusted: the
configuration file still has the recorded device, inode, size, mtime and
ctime (a change to the file changes its ctime, which no one can set
back), and the snapshot and its directory are owned by root and writable
by no one else.  Otherwise the launcher loads the configuration in full,
as before, and rewrites the snapshot.  This module imports nothing but
the literals of :mod:`~xen_dm_restrict_plugin.core.constants` and the
standard library's cheapest modules.
"""

from __future__ import annotations

import marshal
import os
import stat

from xen_dm_restrict_plugin.core import constants

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

    from xen_dm_restrict_plugin.core import settings as settings_mod

DEFAULT_CONFIG = constants.DEFAULT_CONFIG
CONFIG_ENV = constants.CONFIG_ENV
QUERY_ARGS = constants.QUERY_ARGS

#: Where the snapshot of the default configuration lives.
DEFAULT_PATH = '/run/xen-dm-restrict/launcher-settings.marshal'
#: Environment variable naming another snapshot file (tests).
PATH_ENV = 'XEN_DM_RESTRICT_LAUNCHER_SETTINGS'
#: Where the launcher service listens and the compiled front asks.
DEFAULT_SOCKET = '/run/xen-dm-restrict/launcher.sock'
#: Environment variable naming another socket (tests, the benchmark).
SOCKET_ENV = 'XEN_DM_RESTRICT_LAUNCHER_SOCKET'
#: Bumped whenever the snapshot's fields change.
FORMAT = 3

#: The settings the launcher reads, as stored (tuples become lists).
FIELDS = ('qemu_binary', 'sandbox', 'launcher_test_mode', 'chroot_base_dir',
          'gid', 'allowed_qemu_options', 'allowed_host_paths',
          'allowed_chardev_types', 'launcher_seccomp', 'network_namespace',
          'cgroup_limits', 'cgroup_parent', 'device_model_max_processes',
          'device_model_memory_mib', 'device_model_cpu_weight',
          'storage_dir')


class LaunchSettings:
    """The launcher's settings, with the methods it shares with
    :class:`~xen_dm_restrict_plugin.core.settings.Settings`.

    :param values: the :data:`FIELDS`, plus ``ranges``: a list of
        inclusive ``[first, last]`` uid ranges.
    """

    def __init__(self, values: typing.Mapping[str, typing.Any]):
        for name in FIELDS:
            setattr(self, name, values[name])
        self.allowed_qemu_options = frozenset(self.allowed_qemu_options)
        self.allowed_host_paths = tuple(self.allowed_host_paths)
        self.allowed_chardev_types = tuple(self.allowed_chardev_types)
        self._ranges = [range(first, last + 1)
                        for first, last in values['ranges']]

    def all_ranges(self) -> typing.List[range]:
        return list(self._ranges)

    def chroot_dir(self, uid: int) -> str:
        return constants.chroot_dir(self.chroot_base_dir, uid)

    def gid_for(self, uid: int) -> int:
        return self.gid if self.gid is not None else uid


def config_file() -> typing.Optional[str]:
    """The configuration file the launcher reads (as
    :func:`xen_dm_restrict_plugin.cmd.host.config_files`), or None.
    """
    name = os.environ.get(CONFIG_ENV)
    if name:
        return name
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def path() -> str:
    """The snapshot file this process uses."""
    return os.environ.get(PATH_ENV) or DEFAULT_PATH


def socket_path() -> str:
    """The launcher service's socket this process uses."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _identity(config: typing.Optional[str]) -> typing.Optional[list]:
    if config is None:
        return None
    st = os.stat(config)
    return [config, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns]


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid == 0 and not st.st_mode & 0o022


def untrusted(fd: int) -> str:
    """Why root must not read the open configuration file ``fd``, or
    empty when it may.

    The configuration names the programs root runs (the QEMU binary, the
    launcher libxl starts): the file and its directory must be root's
    alone, as the snapshot's are.  A sticky directory (``/tmp``) is fine.
    The file is checked as opened, and then read through ``fd``: a path
    (a symlink, a directory) changed in between changes nothing.
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return 'it is not a regular file'
    directory = os.path.dirname(os.readlink('/proc/self/fd/%d' % fd))
    for name, st in (('it', st),
                     ('its directory %s' % directory, os.stat(directory))):
        if st.st_uid != 0:
            return '%s is owned by uid %d, not root' % (name, st.st_uid)
        if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode)
                                       and st.st_mode & stat.S_ISVTX):
            return '%s is writable by others than root (mode %04o)' % (
                name, stat.S_IMODE(st.st_mode))
    return ''


def load(config: typing.Optional[str]) -> typing.Optional[LaunchSettings]:
    """The snapshot's settings if it was made from ``config`` as it is now.

    :param config: the configuration file the launcher would read, or
        None when it would read none.
    :returns: None when there is no snapshot, or it is stale, foreign
        (another file, format or owner) or unreadable: the caller then
        loads the configuration in full.
    """
    name = path()
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not (_trusted(os.fstat(fd)) and _trusted(
                os.stat(os.path.dirname(name) or '.'))):
            return None
        with os.fdopen(os.dup(fd), 'rb') as handle:
            data = marshal.loads(handle.read(65536))
        if data.get('format') != FORMAT or \
                data.get('config') != _identity(config):
            return None
        return LaunchSettings(data['settings'])
    except (OSError, ValueError, KeyError, TypeError, EOFError,
            AttributeError):
        return None
    finally:
        os.close(fd)


def dump(settings: settings_mod.Settings) -> dict:
    """The snapshot fields of full settings."""
    values = {name: getattr(settings, name) for name in FIELDS}
    values['allowed_qemu_options'] = sorted(values['allowed_qemu_options'])
    values['allowed_host_paths'] = list(values['allowed_host_paths'])
    values['allowed_chardev_types'] = list(values['allowed_chardev_types'])
    values['ranges'] = [[rng.first, rng.last]
                        for rng in settings.all_ranges()]
    return values


def write(settings: settings_mod.Settings,
          config: typing.Optional[str]) -> str:
    """Write the snapshot of ``settings``, made from ``config``.

    Only root writes it (the launcher trusts a root-owned file only); the
    file is replaced atomically.

    :returns: the snapshot's path.
    :raises OSError: it cannot be written.
    """
    name = path()
    directory = os.path.dirname(name) or '.'
    os.makedirs(directory, mode=0o755, exist_ok=True)
    body = marshal.dumps({'format': FORMAT, 'config': _identity(config),
                          'settings': dump(settings)})
    temp = '%s.%d.tmp' % (name, os.getpid())
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP
                 | stat.S_IROTH)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(body)
        os.rename(temp, name)
    except BaseException:
        os.unlink(temp)
        raise
    return name
