"""``xen-dm-restrict preflight``: can this host deliver the restriction?

Every piece of the restriction depends on the host: a kernel with the
Xen restrict ioctls, a QEMU that accepts the options, a reaper user, uids
no account owns, a safe chroot base, a writable lease database and the
libvirt hook.  When one is missing, libxl would run the device model
silently unrestricted, and the product refuses boots instead; preflight
lets an operator find all of them at once, before the first refused
boot.  Checks that fail only because the host runs no Xen (a development
machine, CI) are marked so.
"""

import dataclasses
import grp
import os
import platform
import pwd
import re
import shutil
import sys
import time
import typing

from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import capabilities
from xen_dm_restrict_plugin.host import reaper
from xen_dm_restrict_plugin.launcher import chroot
from xen_dm_restrict_plugin.leases import store as leases

OK = 'ok'
FAIL = 'fail'
WARN = 'warn'
SKIP = 'skip'

MIN_KERNEL = (4, 11)
DEFAULT_HOOKS_DIR = '/etc/libvirt/hooks'


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the report.

    :param name: what was checked.
    :param status: ``ok``, ``fail``, ``warn`` (not required by the
        configuration, but weaker without it) or ``skip`` (not asked for).
    :param detail: what was found, and the remedy when it failed.
    :param needs_xen: the check can only pass on a Xen host.
    """

    name: str
    status: str
    detail: str
    needs_xen: bool = False


@dataclasses.dataclass(frozen=True)
class Report:
    """All checks, and whether this host runs Xen."""

    checks: typing.Tuple[Check, ...]
    xen_host: bool

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return all(check.status != FAIL for check in self.checks)

    def no_xen_failures(self) -> typing.List[Check]:
        """Failed checks that would need a Xen host to pass."""
        if self.xen_host:
            return []
        return [c for c in self.checks if c.status == FAIL and c.needs_xen]

    def to_dict(self) -> dict:
        return {'ok': self.ok, 'xen_host': self.xen_host,
                'checks': [dict(dataclasses.asdict(c),
                                fails_for_lack_of_xen=c in
                                self.no_xen_failures())
                           for c in self.checks]}

    def table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        no_xen = self.no_xen_failures()
        lines = ['%-*s  %-6s  %s' % (width, 'CHECK', 'RESULT', 'DETAIL')]
        for check in self.checks:
            mark = ' [no Xen here]' if check in no_xen else ''
            lines.append('%-*s  %-6s  %s%s' % (
                width, check.name, check.status.upper(), check.detail, mark))
        failed = [c for c in self.checks if c.status == FAIL]
        if not failed:
            lines.append('\nAll checks the configuration asks for pass.')
        else:
            lines.append('\n%d check(s) failed.' % len(failed))
            if no_xen:
                lines.append('This host runs no Xen; these fail only for '
                             'that reason: %s.'
                             % ', '.join(c.name for c in no_xen))
        return '\n'.join(lines)


def is_xen_host() -> bool:
    """Whether this host is a Xen domain (dom0 for a real deployment)."""
    if os.path.exists('/proc/xen/capabilities'):
        return True
    try:
        with open('/sys/hypervisor/type') as handle:
            return handle.read().strip() == 'xen'
    except OSError:
        return False


def kernel_version(release: typing.Optional[str] = None
                   ) -> typing.Tuple[int, int]:
    """(major, minor) of a kernel release string such as ``6.1.0-13``."""
    match = re.match(r'(\d+)\.(\d+)', release or platform.release())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def check_kernel() -> Check:
    version = kernel_version()
    text = 'Linux %d.%d' % version
    if version >= MIN_KERNEL:
        return Check('kernel >= 4.11', OK, text)
    return Check('kernel >= 4.11', FAIL,
                 text + ': -xen-domid-restrict needs the privcmd/evtchn '
                 'restrict ioctls of Linux 4.11')


def check_root() -> Check:
    if os.geteuid() == 0:
        return Check('running as root', OK, 'uid 0')
    return Check('running as root', FAIL, 'uid %d: the launcher, the '
                 'hook and the reaper run as root; run preflight as root '
                 'to check them' % os.geteuid())


def _form(caps: capabilities.Capabilities, syntax: str,
          legacy: str, run_with: str) -> typing.Tuple[str, str]:
    """(status, detail) for the user or chroot option the syntax uses."""
    wanted = {conf_mod.SYNTAX_RUNAS: [legacy],
              conf_mod.SYNTAX_RUN_WITH: [run_with]}.get(
                  syntax, [run_with, legacy])
    have = [name for name in wanted if caps.has(name)]
    if have:
        return OK, 'uses %s' % have[0]
    return FAIL, 'none of %s accepted (device_model_syntax = %s)' % (
        ', '.join(wanted), syntax)


def check_qemu(settings: conf_mod.Settings) -> typing.List[Check]:
    binary = settings.qemu_binary
    if not os.access(binary, os.X_OK):
        return [Check('qemu binary', FAIL, '%s is missing or not '
                      'executable: install qemu-system-xen or set '
                      'qemu_binary' % binary, needs_xen=True)]
    started = time.monotonic()
    caps = capabilities.probe(binary)
    took = (time.monotonic() - started) * 1000
    checks = [Check('qemu binary', OK, '%s (probed in %.0f ms)'
                    % (binary, took))]
    if caps.has('nonsense'):
        return checks + [Check('qemu is a QEMU', FAIL, '%s accepts an '
                               'option no QEMU has' % binary)]
    checks.append(Check(
        'qemu -xen-domid-restrict',
        OK if caps.has('xen-domid-restrict') else FAIL,
        'accepted' if caps.has('xen-domid-restrict') else
        # The probe needs no Xen: a QEMU that refuses it is the wrong
        # build on any host.
        'not accepted: not a Xen build of QEMU 3.0 or later'))
    for name, legacy, run_with in (
            ('qemu user option', 'runas', 'run-with-user'),
            ('qemu chroot option', 'chroot', 'run-with-chroot')):
        status, detail = _form(caps, settings.syntax, legacy, run_with)
        checks.append(Check(name, status, detail))
    if settings.sandbox == conf_mod.SANDBOX_OFF:
        checks.append(Check('qemu -sandbox', SKIP, 'sandbox = off'))
    elif caps.has('sandbox'):
        checks.append(Check('qemu -sandbox', OK, 'seccomp available'))
    else:
        checks.append(Check(
            'qemu -sandbox',
            FAIL if settings.sandbox == conf_mod.SANDBOX_REQUIRED else WARN,
            'no seccomp in this build (sandbox = %s)' % settings.sandbox))
    return checks


#: The command the installation guide creates the reaper user with.
REAPER_USERADD = ('useradd --system --user-group --no-create-home '
                  '--home-dir /nonexistent --shell /usr/sbin/nologin %s')


def check_reaper_user(settings: conf_mod.Settings) -> Check:
    uid = settings.reaper_uid
    if not settings.reap_device_models:
        return Check('reaper user', SKIP, 'reap_device_models = false: '
                     'nothing is reaped, so no reaper user is needed')
    if uid is None:
        return Check('reaper user', FAIL, '%r does not exist: %s' % (
            settings.reaper_user, REAPER_USERADD % settings.reaper_user))
    running, _ = reaper.scan(uid)
    if running:
        return Check('reaper user', FAIL, 'uid %d runs processes (%s), '
                     'which every reap kills: the reaper user must be '
                     'dedicated' % (uid, ' '.join(map(str, running[:5]))))
    # conf.load already refused root and a uid inside a range.
    return Check('reaper user', OK, '%s = uid %d, not root, outside every '
                 'range, runs nothing' % (settings.reaper_user, uid))


def check_console_user(settings: conf_mod.Settings) -> Check:
    from xen_dm_restrict_plugin.console import relay

    name = 'console relay user'
    if settings.network_namespace != conf_mod.NETNS_REQUIRED:
        return Check(name, SKIP, 'network_namespace = %s: VNC consoles '
                     'need no relay' % settings.network_namespace)
    try:
        entry = relay.relay_user(settings)
    except exception.CapabilityMissing as err:
        return Check(name, FAIL, '%s: %s; %s' % (
            err.subject, err.reason, err.remedy))
    if not os.access(relay.PROXYD, os.X_OK):
        return Check(name, FAIL, 'the relay %s is missing: install '
                     'systemd' % relay.PROXYD)
    return Check(name, OK, '%s = uid %d, not root, the reaper or a '
                 'device-model uid' % (entry.pw_name, entry.pw_uid))


def check_accounts(settings: conf_mod.Settings) -> Check:
    all_ranges = settings.all_ranges()
    if not all_ranges:
        return Check('uid ranges free of accounts', FAIL, 'no uid range is '
                     'configured: set [dm_restrict] tenant_uid_ranges')
    found = ['user %s (uid %d)' % (p.pw_name, p.pw_uid)
             for p in pwd.getpwall()
             if any(p.pw_uid in rng for rng in all_ranges)]
    if settings.gid is None:
        found += ['group %s (gid %d)' % (g.gr_name, g.gr_gid)
                  for g in grp.getgrall()
                  if any(g.gr_gid in rng for rng in all_ranges)]
    where = ', '.join(str(rng) for rng in all_ranges)
    if found:
        return Check('uid ranges free of accounts', FAIL, '%s inside %s: a '
                     'device model would share its identity; move the '
                     'account or the range' % ('; '.join(found[:5]), where))
    return Check('uid ranges free of accounts', OK, 'no user%s in %s' % (
        '' if settings.gid is not None else ' or group', where))


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def check_chroot_base(settings: conf_mod.Settings) -> Check:
    base = settings.chroot_base_dir
    if os.path.lexists(base):
        reason = chroot.unsafe_reason(os.lstat(base))
        if reason:
            return Check('chroot base directory', FAIL, '%s: %s; chown '
                         'root:root and chmod 0755 it' % (base, reason))
        return Check('chroot base directory', OK, '%s is root-owned and '
                     'not writable by others' % base)
    parent = _nearest_existing(base)
    reason = chroot.unsafe_reason(os.stat(parent))
    if reason:
        return Check('chroot base directory', FAIL, '%s is absent and its '
                     'nearest parent %s is unsafe: %s' % (base, parent,
                                                          reason))
    return Check('chroot base directory', OK, '%s is absent; created on '
                 'the first start under root-owned %s' % (base, parent))


def check_lease_db(settings: conf_mod.Settings) -> Check:
    path = settings.lease_db
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return Check('lease database', FAIL, 'directory %s does not exist: '
                     'create it (mode 0700)' % parent)
    if not os.access(parent, os.W_OK):
        return Check('lease database', FAIL, 'directory %s is not writable'
                     % parent)
    if not os.path.exists(path):
        return Check('lease database', OK, '%s is absent; created on the '
                     'first boot' % path)
    if not os.access(path, os.W_OK):
        return Check('lease database', FAIL, '%s is not writable' % path)
    try:
        with leases.LeaseStore(path, settings.lease_db_timeout) as store:
            count = len(store.list())
    except exception.LeaseError as err:
        return Check('lease database', FAIL, str(err))
    return Check('lease database', OK, '%s is writable, %d lease(s)'
                 % (path, count))


def check_launcher(settings: conf_mod.Settings) -> Check:
    path = settings.launcher
    if not path:
        return Check('launcher', WARN, 'not configured: device models get '
                     'no private namespaces or rlimits; set [dm_restrict] '
                     'launcher to the xen-dm-restrict-launch path')
    if not os.access(path, os.X_OK):
        return Check('launcher', FAIL, '%s is missing or not executable'
                     % path)
    return Check('launcher', OK, path)


def check_launcher_speed(settings: conf_mod.Settings) -> Check:
    """The launcher is fast only when it is the script install-launcher
    writes and its settings snapshot is current.
    """
    from xen_dm_restrict_plugin.launcher import settings as launch_settings

    if not settings.launcher:
        return Check('launcher start-up', OK, 'no launcher configured')
    config = launch_settings.config_file()
    if launch_settings.load(config) is None:
        return Check('launcher start-up', WARN, 'no current settings '
                     'snapshot at %s: the next device-model start loads '
                     'the configuration in full (and writes one); run '
                     'xen-dm-restrict install-launcher' %
                     launch_settings.path())
    try:
        with open(settings.launcher, 'rb') as handle:
            first = handle.readline()
    except OSError:
        first = b''
    if first.startswith(b'\x7fELF'):
        return _check_front(settings.launcher)
    if not first.startswith(b'#!') or b' -IS' not in first:
        return Check('launcher start-up', WARN, '%s does not run Python '
                     'with -IS: site start-up costs more than QEMU\'s own '
                     'start; point [dm_restrict] launcher at the script '
                     'xen-dm-restrict install-launcher writes'
                     % settings.launcher)
    return Check('launcher start-up', OK, 'fast launcher, snapshot %s '
                 'current' % launch_settings.path())


def _check_front(path: str) -> Check:
    """The compiled front is fast while its service answers."""
    from xen_dm_restrict_plugin.launcher import settings as launch_settings

    where = launch_settings.socket_path()
    reason = _unanswered(where)
    if reason:
        return Check('launcher start-up', WARN, '%s is the compiled front, '
                     'but no launcher service answers on %s (%s): every '
                     'start runs the slower Python launcher %s.py; start '
                     'xen-dm-restrict-launch-service' % (
                         path, where, reason, path))
    return Check('launcher start-up', OK, 'compiled front, service on %s, '
                 'snapshot %s current' % (where, launch_settings.path()))


def check_isolation(settings: conf_mod.Settings) -> typing.List[Check]:
    """What the launcher needs for cgroups, network namespaces and its
    seccomp filter.
    """
    from xen_dm_restrict_plugin.launcher import cgroup as dm_cgroup
    from xen_dm_restrict_plugin.launcher import network as dm_network
    from xen_dm_restrict_plugin.launcher import seccomp as syscall_filter

    checks = []
    if settings.cgroup_limits == conf_mod.CGROUPS_OFF:
        checks.append(Check('device-model cgroups', WARN, 'cgroup_limits '
                            '= off: only RLIMIT_NPROC bounds a device '
                            'model; memory and CPU are not limited'))
    else:
        reason = dm_cgroup.available()
        v2 = dm_cgroup.describe()
        checks.append(Check('device-model cgroups', FAIL if reason else OK,
                            '%s: mount cgroup v2 with the pids and memory '
                            'controllers enabled (Debian 12 does by '
                            'default), or set cgroup_limits = off' % reason
                            if reason else v2))
    if settings.network_namespace == conf_mod.NETNS_OFF:
        checks.append(Check('device-model network', WARN,
                            'network_namespace = off: device models can '
                            'connect wherever dom0 can'))
    elif not os.path.exists(dm_network.TUN_DEVICE):
        checks.append(Check('device-model network', FAIL, '%s is missing: '
                            'modprobe tun' % dm_network.TUN_DEVICE))
    else:
        checks.append(Check('device-model network', OK, 'own network '
                            'namespace, taps handed over (%s)'
                            % settings.network_namespace))
    if settings.launcher_seccomp:
        reason = syscall_filter.available()
        checks.append(Check('launcher seccomp filter',
                            FAIL if reason else OK,
                            reason or 'libseccomp found: every device '
                            'model gets the launcher\'s filter'))
    else:
        checks.append(Check('launcher seccomp filter', WARN, 'off: a QEMU '
                            'built without seccomp runs unfiltered, any '
                            'other with QEMU\'s own filter only'))
    return checks


def check_host_paths(settings: conf_mod.Settings) -> Check:
    """Warn when no host path is allowed: every disk is refused then."""
    if not settings.allowed_host_paths:
        return Check('allowed host paths', WARN, 'none: every domain with '
                     'a disk, CD-ROM, kernel or initrd is refused; set '
                     '[dm_restrict] allowed_host_paths to the directories '
                     'of your images (e.g. /var/lib/nova/instances)')
    # An entry with {tenant} or {instance}: its fixed leading directories.
    missing = [path for path in settings.allowed_host_paths
               if not os.path.isdir(path.split('{', 1)[0].rsplit('/', 1)[0]
                                    if '{' in path else path)]
    if missing:
        return Check('allowed host paths', WARN, 'not directories here: %s'
                     % ', '.join(missing))
    return Check('allowed host paths', OK, ', '.join(
        settings.allowed_host_paths))


def check_test_mode(settings: conf_mod.Settings) -> Check:
    if settings.launcher_test_mode:
        return Check('launcher test mode', FAIL, 'launcher_test_mode is '
                     'set: the launcher starts device models without '
                     '-xen-domid-restrict; unset it on a real host')
    return Check('launcher test mode', OK, 'off')


def check_hook(hooks_dir: str, build: typing.Optional[bytes] = None
               ) -> typing.List[Check]:
    """The installed hook, and whether it starts fast.

    :param build: the build id a compiled hook of this package carries
        (:func:`xen_dm_restrict_plugin.daemon_hook.service.build_id`).
    """
    found = installed_hooks(hooks_dir)
    if not found:
        return [Check('libvirt libxl hook', FAIL, 'not installed: %s '
                      'install-hook %s/libxl, then restart libvirtd' % (
                          hook_command('xen-dm-restrict'), hooks_dir))]
    checks = [Check('libvirt libxl hook', OK, ', '.join(found) +
                    ' (restart libvirtd after installing it)')]
    compiled, stale = [], []
    for path in found:
        with open(path, 'rb') as handle:
            data = handle.read(1 << 20)
        if data.startswith(b'\x7fELF'):
            compiled.append(path)
            if build and build not in data:
                stale.append(path)
    if stale:
        checks.append(Check('hook start-up', FAIL, '%s was compiled by '
                            'another version of the plugin (other '
                            'operations or protocol): the hook service '
                            'refuses its calls; run xen-dm-restrict '
                            'install-hook again' % ', '.join(stale)))
        return checks
    if not compiled:
        checks.append(Check('hook start-up', WARN, '%s starts Python at '
                            'every call it acts on (about 90 ms); run '
                            'xen-dm-restrict install-hook without '
                            '--script-only and start '
                            'xen-dm-restrict-hook-service' % found[0]))
        return checks
    where = constants.hook_socket()
    reason = _unanswered(where)
    checks.append(Check('hook start-up', WARN, 'no hook service answers on '
                        '%s (%s): every call %s acts on runs the slower '
                        'Python hook; start xen-dm-restrict-hook-service'
                        % (where, reason, compiled[0])) if reason else Check(
        'hook start-up', OK, 'compiled hook, service on %s' % where))
    return checks


def _unanswered(path: str) -> str:
    """Why no service of root's listens on the unix socket ``path``, or
    ''.
    """
    import socket
    import struct

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.settimeout(5)
        probe.connect(path)
        uid = struct.unpack('3i', probe.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED,
            struct.calcsize('3i')))[1]
    except OSError as err:
        return err.strerror or str(err)
    finally:
        probe.close()
    if uid != 0:
        return 'its listener runs as uid %d, not root: the compiled ' \
            'programs do not ask it' % uid
    return ''


def check_settings_snapshot() -> Check:
    """libvirtd's hook (and the launcher) start fast only from a current
    settings snapshot; an untrusted one makes the hook refuse every start.
    """
    from xen_dm_restrict_plugin.launcher import settings as launch_settings

    config = launch_settings.config_file()
    try:
        values = launch_settings.read(config)
    except launch_settings.Untrusted as err:
        return Check('settings snapshot', FAIL, '%s: libvirtd\'s hook '
                     'refuses every start: %s; remove it and run '
                     'xen-dm-restrict install-hook' % (err.subject,
                                                       err.reason))
    if values is None:
        return Check('settings snapshot', WARN, 'no current snapshot of %s '
                     'at %s: the next hook call or device-model start loads '
                     'the configuration in full (and writes one); run '
                     'xen-dm-restrict install-hook' % (
                         config or 'the defaults', launch_settings.path()))
    return Check('settings snapshot', OK, '%s, current for %s' % (
        launch_settings.path(), config or 'the defaults'))


def hook_command(name: str = 'xen-dm-restrict-libvirt-hook') -> str:
    """The path of this installation's ``xen-dm-restrict-libvirt-hook``
    (or another of its console scripts).

    It is the console script beside the running Python (a virtual
    environment's ``bin``), else the one on ``PATH``.
    """
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which(name) or beside


def check_names(unknown: typing.Sequence[str]) -> Check:
    if unknown:
        return Check('configuration names', FAIL, '%s; correct the name '
                     '(xen-dm-restrict.conf.sample lists every option) or '
                     'remove the line: a misspelled option has its default'
                     % '; '.join(unknown))
    return Check('configuration names', OK, 'every group and option of '
                 'xen-dm-restrict is known')


def check_storage(settings: conf_mod.Settings) -> typing.List[Check]:
    """What the storage daemon of qcow2 disks needs (storage_daemon =
    enabled): its binary, nbd-client, the kernel's nbd devices, and a
    storage_dir short enough for a unix socket path.
    """
    name = 'storage daemon'
    if settings.storage_daemon != constants.STORAGE_DAEMON_ON:
        return [Check(name, SKIP, 'storage_daemon = disabled (qcow2 disks '
                      'are refused)')]
    checks = []
    binary = settings.storage_daemon_binary
    checks.append(Check(name, OK, binary) if os.access(binary, os.X_OK)
                  else Check(name, FAIL, '%s is missing: apt-get install '
                             'qemu-system-common' % binary))
    client = shutil.which('nbd-client')
    checks.append(Check('nbd-client', OK, client) if client else Check(
        'nbd-client', FAIL, 'missing: apt-get install nbd-client'))
    checks.append(Check('nbd module', OK, '/sys/block/nbd0 exists')
                  if os.path.exists('/sys/block/nbd0') else Check(
                      'nbd module', FAIL, 'the kernel has no nbd devices: '
                      'modprobe nbd (and list it in /etc/modules)',
                      needs_xen=True))
    longest = os.path.join(settings.storage_dir, 'x' * 36, 'xvdzzz999.d',
                           'nbd.sock')
    checks.append(Check('storage directory', OK, settings.storage_dir)
                  if len(longest) < 108 else Check(
                      'storage directory', FAIL, '%s is too long for the '
                      'daemons\' unix socket paths' % settings.storage_dir))
    return checks


def run(settings: conf_mod.Settings,
        hooks_dir: typing.Optional[str] = None,
        unknown_names: typing.Sequence[str] = (),
        hook_build: typing.Optional[bytes] = None) -> Report:
    """Run every check; nothing on the host is changed.

    :param settings: the configuration the host must satisfy.
    :param hooks_dir: libvirt's hooks directory (default
        ``/etc/libvirt/hooks``).
    :param unknown_names: misspelled options and groups found in the
        configuration files
        (:func:`~xen_dm_restrict_plugin.conf.unknown_names`).
    :param hook_build: the build id of this package's compiled hook.
    """
    xen_host = is_xen_host()
    checks = [Check('Xen host', OK if xen_host else FAIL,
                    'Xen hypervisor found' if xen_host else
                    'no /proc/xen or /sys/hypervisor/type = xen',
                    needs_xen=True),
              check_kernel(), check_root(), check_names(unknown_names)]
    checks += check_qemu(settings)
    checks += [check_reaper_user(settings), check_console_user(settings),
               check_accounts(settings),
               check_chroot_base(settings), check_lease_db(settings),
               check_launcher(settings), check_launcher_speed(settings),
               check_test_mode(settings), check_host_paths(settings)]
    checks += check_isolation(settings)
    checks += check_storage(settings)
    checks += check_hook(hooks_dir or DEFAULT_HOOKS_DIR, hook_build)
    checks.append(check_settings_snapshot())
    return Report(tuple(checks), xen_host)


def installed_hooks(hooks_dir: str = '/etc/libvirt/hooks'
                    ) -> typing.List[str]:
    """Executable libxl hooks in ``hooks_dir`` that run this module."""
    candidates = [os.path.join(hooks_dir, 'libxl')]
    subdir = os.path.join(hooks_dir, 'libxl.d')
    if os.path.isdir(subdir):
        candidates += sorted(os.path.join(subdir, entry)
                             for entry in os.listdir(subdir))
    found = []
    for path in candidates:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        try:
            with open(path, 'rb') as handle:
                head = handle.read(1 << 20)
        except OSError:
            continue
        if (b'xen_dm_restrict_plugin' in head
                or b'xen-dm-restrict-libvirt-hook' in head):
            found.append(path)
    return found
