"""The settings snapshot: the configuration, validated once, read cheaply.

libvirt runs the domain's ``<emulator>`` at every define and start, libxl
runs it at every device-model start, and libvirtd runs its hook at every
operation of every domain, so the start-up of the launcher and of the
hook is paid on every one of them.  Loading oslo.config (its imports, the
validation of every option, the second reading of the file that finds
misspelled names) costs far more than their own work, so both read a
snapshot instead: every validated setting, written by a process that did
load and check the configuration in full (``install-launcher``,
``install-hook``, or the launcher or hook itself when the snapshot was
missing or stale), together with the configuration file it was made from.

The snapshot is written with :mod:`marshal`, which is built into the
interpreter: even :mod:`json` would cost the launcher the import of
:mod:`re`, more than a query of QEMU's version costs.

The snapshot is used only while it is provably current and trusted:

- it records the path and the bytes of the configuration file it was
  made from, and the file must hold the same bytes now (a comparison of
  a few kilobytes; a file's size and times can stay the same across an
  edit made within one tick of the kernel's clock);
- root reads the configuration file only when root alone can change it
  and its directory (:func:`untrusted`), as the full load does;
- the snapshot must be a regular file owned by root and writable by no
  one else, in a directory that is root's alone.  A snapshot that is not
  (:class:`Untrusted`) is never read: the launcher then loads the
  configuration in full, libvirtd's hook refuses with the remedy.

What the settings name of the host's accounts (the reaper user, the
device models' group) is checked again at every read
(:func:`~xen_dm_restrict_plugin.core.settings.host_ids`): accounts change
without the file changing.  This module imports nothing but the literals
of :mod:`~xen_dm_restrict_plugin.core.constants`, the exceptions and the
standard library's cheapest modules; the full settings
(:func:`full_settings`) import the policy core when asked for.
"""

from __future__ import annotations

import marshal
import os
import stat

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin import exception

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
FORMAT = 4
#: The most a snapshot may hold.
MAX_BYTES = 1 << 20

#: The settings the launcher reads, as stored (tuples become lists).
FIELDS = ('qemu_binary', 'sandbox', 'launcher_test_mode', 'chroot_base_dir',
          'gid', 'allowed_qemu_options', 'allowed_host_paths',
          'allowed_chardev_types', 'launcher_seccomp', 'network_namespace',
          'cgroup_limits', 'cgroup_parent', 'device_model_max_processes',
          'device_model_memory_mib', 'device_model_cpu_weight',
          'storage_dir')

#: What a process that finds the snapshot untrusted tells root to do.
UNTRUSTED_REMEDY = ('remove it (and its directory, if root did not make '
                    'it) and run "xen-dm-restrict install-hook" as root, '
                    'which writes a new one: only a snapshot root alone '
                    'can change is read')


class Untrusted(exception.ConfigError):
    """The snapshot, or its directory, is not root's alone."""


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
    """The configuration file the launcher and the hook read (as
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


def source(config: typing.Optional[str]) -> typing.Optional[list]:
    """What a snapshot records of the configuration file ``config``: its
    path and its bytes (None when the defaults are read).

    :raises OSError: it cannot be read, or root must not read it
        (:func:`untrusted`; the full load says why).
    """
    if config is None:
        return None
    fd = os.open(config, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.geteuid() == 0 and untrusted(fd):
            raise PermissionError('%s is not root\'s alone' % config)
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return [config, b''.join(chunks)]


def _not_roots(what: str, st: os.stat_result) -> str:
    if st.st_uid != 0:
        return '%s is owned by uid %d, not root' % (what, st.st_uid)
    if st.st_mode & 0o022:
        return '%s is writable by others than root (mode %04o)' % (
            what, stat.S_IMODE(st.st_mode))
    return ''


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


def _untrusted(name: str, reason: str) -> Untrusted:
    return Untrusted('settings snapshot %s' % name, reason, UNTRUSTED_REMEDY)


def read(config: typing.Optional[str]
         ) -> typing.Optional[typing.Dict[str, typing.Any]]:
    """The stored settings if the snapshot was made from ``config`` as it
    is now.

    :param config: the configuration file this process would read, or
        None when it would read none.
    :returns: the settings as :func:`dump` wrote them; None when there
        is no snapshot, or it is stale, foreign (another file or format)
        or unreadable: the caller then loads the configuration in full.
    :raises Untrusted: the snapshot or its directory is there but not
        root's alone.
    """
    name = path()
    directory = os.path.dirname(name) or '.'
    try:
        reason = _not_roots('its directory %s' % directory,
                            os.stat(directory))
    except FileNotFoundError:
        return None
    if reason:
        raise _untrusted(name, reason)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _untrusted(name, 'it cannot be opened as a file (%s): a '
                         'symbolic link, or not root\'s' % (
                             err.strerror or err)) from None
    try:
        st = os.fstat(fd)
        reason = ('it is not a regular file' if not stat.S_ISREG(st.st_mode)
                  else _not_roots('it', st))
        if reason:
            raise _untrusted(name, reason)
        data = marshal.loads(os.read(fd, MAX_BYTES))
        if data.get('format') != FORMAT or \
                data.get('config') != source(config):
            return None
        return data['settings']
    except (OSError, ValueError, KeyError, TypeError, EOFError,
            AttributeError):
        return None
    finally:
        os.close(fd)


def load(config: typing.Optional[str]) -> typing.Optional[LaunchSettings]:
    """The launcher's settings from the snapshot if it was made from
    ``config`` as it is now.

    :returns: None when :func:`read` finds none, or an untrusted one: the
        launcher then loads the configuration in full.
    """
    try:
        values = read(config)
        return LaunchSettings(values) if values is not None else None
    except (Untrusted, KeyError, TypeError, ValueError):
        return None


def full_settings(values: typing.Mapping[str, typing.Any]
                  ) -> settings_mod.Settings:
    """The full settings stored by :func:`dump`, with the host's accounts
    checked as they are now.

    :raises ConfigError: the accounts no longer pass
        (:func:`~xen_dm_restrict_plugin.core.settings.host_ids`).
    :raises KeyError, TypeError: the values are not those of a snapshot
        of this version.
    """
    import dataclasses

    from xen_dm_restrict_plugin.core import ranges
    from xen_dm_restrict_plugin.core import settings as settings_mod

    given = {field.name: values[field.name]
             for field in dataclasses.fields(settings_mod.Settings)}
    given['tenant_ranges'] = {
        tenant: ranges.UidRange(tenant, first, last)
        for tenant, (first, last) in values['tenant_ranges'].items()}
    if values['shared_range'] is not None:
        first, last = values['shared_range']
        given['shared_range'] = ranges.UidRange(None, first, last)
    uid_ranges = list(given['tenant_ranges'].values()) + (
        [given['shared_range']] if given['shared_range'] else [])
    given['reaper_uid'] = settings_mod.host_ids(
        given['reaper_user'], given['gid'], uid_ranges)
    return settings_mod.Settings(**given)


def dump(settings: settings_mod.Settings) -> dict:
    """Every field of full settings, as the snapshot stores them (the
    launcher's :data:`FIELDS` and ``ranges`` among them).
    """
    import dataclasses

    values = {field.name: getattr(settings, field.name)
              for field in dataclasses.fields(settings)}
    values['tenant_ranges'] = {
        tenant: [rng.first, rng.last]
        for tenant, rng in settings.tenant_ranges.items()}
    shared = settings.shared_range
    values['shared_range'] = None if shared is None else [shared.first,
                                                          shared.last]
    values['max_devices'] = dict(settings.max_devices)
    values['ranges'] = [[rng.first, rng.last]
                        for rng in settings.all_ranges()]
    return values


def write(settings: settings_mod.Settings, config: typing.Optional[str],
          made_from: typing.Any = False) -> str:
    """Write the snapshot of ``settings``, made from ``config``.

    Only root writes it (a snapshot is trusted only when root's), mode
    0600; the file is replaced atomically.

    :param made_from: :func:`source` of ``config`` taken before the
        settings were loaded (default: read now).  A file changed while
        it was being loaded then leaves the snapshot stale, never wrong.
    :returns: the snapshot's path.
    :raises OSError: it cannot be written, or its directory is not
        root's alone.
    """
    if made_from is False:
        made_from = source(config)
    name = path()
    directory = os.path.dirname(name) or '.'
    os.makedirs(directory, mode=0o755, exist_ok=True)
    reason = _not_roots('its directory %s' % directory, os.stat(directory))
    if reason:
        raise PermissionError('the snapshot is not written: %s' % reason)
    body = marshal.dumps({'format': FORMAT, 'config': made_from,
                          'settings': dump(settings)})
    temp = '%s.%d.tmp' % (name, os.getpid())
    # Root's alone to read as well: it holds the configuration file's
    # bytes, whatever that file's own mode.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, stat.S_IRUSR | stat.S_IWUSR)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(body)
        os.rename(temp, name)
    except BaseException:
        os.unlink(temp)
        raise
    return name
