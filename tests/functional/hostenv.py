"""Helpers for the host-side functional tests: root, users, config files.

These tests create real users (useradd/userdel), start real processes as
other uids and run a real QEMU, so they need root; elsewhere they skip
with the reason.  Every uid they use comes from a block that no account
or group holds, picked at random so parallel runs do not collide.
"""

import dataclasses
import grp
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import time
import typing
import uuid as uuid_mod

import pytest

from tests import base
from xen_dm_restrict_plugin.cmd import host
from xen_dm_restrict_plugin.daemon_hook import service as hook_service
from xen_dm_restrict_plugin.launcher import settings as launch_settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
QEMU = '/usr/bin/qemu-system-x86_64'
BLOCK = 1000


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip('needs root: creates users, switches uids and '
                    'namespaces (CI runs as root)')


def require_tool(path: str) -> None:
    if not (os.path.exists(path) or shutil.which(path)):
        pytest.skip('%s is not installed (see bindep.txt)' % path)


def require_cgroups() -> None:
    """Skip where the launcher cannot make device-model cgroups (it
    refuses to start QEMU without them, cgroup_limits = required).
    """
    from xen_dm_restrict_plugin.launcher import cgroup

    reason = cgroup.available()
    if reason:
        pytest.skip('no device-model cgroups here: %s' % reason)


def require_tun() -> None:
    """Skip where no tap device can be created (/dev/net/tun)."""
    try:
        os.close(os.open('/dev/net/tun', os.O_RDWR))
    except OSError as err:
        pytest.skip('no tap devices here: /dev/net/tun: %s'
                    % (err.strerror or err))


def free_block() -> int:
    """The first uid of BLOCK consecutive uids and gids nobody holds."""
    taken = {p.pw_uid for p in pwd.getpwall()}
    taken |= {g.gr_gid for g in grp.getgrall()}
    for _ in range(100):
        first = random.randrange(3000, 3900) * BLOCK
        if not any(first <= t < first + BLOCK for t in taken):
            return first
    raise RuntimeError('no free uid block found')


@dataclasses.dataclass
class HostEnv:
    """A configuration on disk for one test, with its uid layout.

    acme owns ``first``..``first+99``, globex ``first+100``..``+199``;
    the reaper user (when created) has ``first+500``.
    """

    tmp: str
    first: int
    config: str = ''
    reaper_name: str = ''
    users: typing.List[str] = dataclasses.field(default_factory=list)
    cgroup_parent: str = dataclasses.field(
        default_factory=lambda: _register_cgroup_parent(
            unique_name('xdr-test-')))
    #: argv of the launcher the test runs (None: the Python launcher).
    launch: typing.Optional[typing.List[str]] = None

    @property
    def acme(self) -> typing.Tuple[int, int]:
        return self.first, self.first + 99

    @property
    def globex(self) -> typing.Tuple[int, int]:
        return self.first + 100, self.first + 199

    def add_user(self, name: str, uid: int) -> None:
        subprocess.run(['useradd', '--no-create-home', '--no-user-group',
                        '--no-log-init', '--shell', '/usr/sbin/nologin',
                        '--uid', str(uid), name], check=True,
                       capture_output=True)
        self.users.append(name)

    def remove_users(self) -> None:
        for name in self.users:
            subprocess.run(['userdel', name], capture_output=True)
        self.users.clear()

    def write_config(self, **options: str) -> str:
        values = {
            'tenant_uid_ranges': 'acme:%d-%d,globex:%d-%d'
                                 % (self.acme + self.globex),
            'chroot_base_dir': os.path.join(self.tmp, 'chroots'),
            'lease_db': os.path.join(self.tmp, 'leases.sqlite'),
            'reaper_lock_file': os.path.join(self.tmp, 'run',
                                             'reaper.lock'),
            'reaper_user': self.reaper_name or 'xdr-no-such-reaper',
            'qemu_binary': QEMU,
            'device_model_syntax': 'runas',
            'allowed_host_paths': base.images_dir(),
            'allowed_bridges': 'xenbr0,br-ten1',
            'allowed_networks': 'default',
            # The fixtures' images are shared, and their disks writable.
            'writable_shared_host_paths': base.images_dir(),
            # Debian's TCG QEMU has no Xen: no -xen-domid-restrict, and the
            # test command lines use "-machine none" and "-qmp stdio".
            'launcher_test_mode': 'true',
            'cgroup_parent': self.cgroup_parent,
        }
        values.update(options)
        if 'allowed_host_paths' in options and \
                'writable_shared_host_paths' not in options:
            del values['writable_shared_host_paths']
        self.config = os.path.join(self.tmp, 'xen-dm-restrict.conf')
        with open(self.config, 'w') as handle:
            handle.write('[dm_restrict]\n')
            for key, value in values.items():
                handle.write('%s = %s\n' % (key, value))
        return self.config

    def settings(self):
        return host.load_settings([self.config])

    def environ(self) -> typing.Dict[str, str]:
        env = dict(os.environ)
        env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
        env[host.CONFIG_ENV] = self.config
        env[launch_settings.PATH_ENV] = os.path.join(
            self.tmp, 'run', 'launcher-settings.marshal')
        env[launch_settings.SOCKET_ENV] = os.path.join(
            self.tmp, 'run', 'launcher.sock')
        # No call may reach a hook service of the host.
        env[hook_service.SOCKET_ENV] = os.path.join(
            self.tmp, 'run', 'hook.sock')
        return env


#: cgroup parents the launcher may have created for this process's tests.
CGROUP_PARENTS: typing.List[str] = []


def _register_cgroup_parent(name: str) -> str:
    CGROUP_PARENTS.append(name)
    return name


def cgroup_mounts() -> typing.List[str]:
    """Mount points of every cgroup hierarchy (v1 and v2)."""
    found = []
    with open('/proc/self/mounts') as handle:
        for line in handle:
            fields = line.split()
            if fields[2] in ('cgroup', 'cgroup2'):
                found.append(fields[1].replace('\\040', ' '))
    return found


def remove_cgroup_parents() -> None:
    """Remove the cgroups the tests' launchers created, once their
    processes are gone (innermost first).
    """
    while CGROUP_PARENTS:
        remove_cgroup_parent(CGROUP_PARENTS[-1])


def remove_cgroup_parent(name: str) -> None:
    """Remove one parent the launcher or storage daemons created (as
    :func:`remove_cgroup_parents`), and forget it.
    """
    if name in CGROUP_PARENTS:
        CGROUP_PARENTS.remove(name)
    for mount in cgroup_mounts():
        top = os.path.join(mount, name)
        if not os.path.isdir(top):
            continue
        for path, dirs, _ in sorted(os.walk(top), reverse=True):
            for attempt in range(50):
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    time.sleep(0.05)


def unique_name(prefix: str) -> str:
    return '%s%s' % (prefix, uuid_mod.uuid4().hex[:10])


def make_env(tmp_path, with_reaper: bool) -> HostEnv:
    env = HostEnv(str(tmp_path), free_block())
    if with_reaper:
        env.reaper_name = unique_name('xdr-reap-')
        env.add_user(env.reaper_name, env.first + 500)
    env.write_config()
    return env


def module(name: str) -> typing.List[str]:
    """argv running one of the package's console scripts from the tree."""
    return [sys.executable, '-m', name]


def kill_uid(uid: int, rounds: int = 20) -> None:
    """Last-resort cleanup: kill what a failed test left running as uid.

    Only used on uids of the test's own unique block.
    """
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:
            try:
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.01)


def compile_hook_client(target: str, python: str = sys.executable,
                        acted=None, timeout_ms=None,
                        import_path=None) -> str:
    """libvirtd's compiled hook as ``install-hook`` builds it, at
    ``target``: its fallback runs ``python`` on ``import_path`` (default:
    this process's and the tree's).
    """
    import json

    from xen_dm_restrict_plugin.daemon_hook import operations

    program = host.HOOK_PROGRAM % {
        'path': json.dumps(import_path or [
            entry for entry in sys.path[1:] if os.path.isabs(entry)]
            + [ROOT])}
    with open(target, 'wb') as handle:
        handle.write(host.compile_hook(
            python, program, operations.ACTED_ON if acted is None
            else acted, timeout_ms=timeout_ms))
    os.chmod(target, 0o755)
    return target


#: The interpreter compiled into the service tests' hook: none, so a call
#: that does not reach the service fails instead of running Python.
NO_FALLBACK = '/nonexistent/xdr-hook-fallback-must-not-run'


class HookService:
    """libvirtd's compiled hook (as ``install-hook`` builds it) and a
    running ``xen-dm-restrict-hook-service`` it asks, on a socket in
    ``tmp``.  The service takes each call's environment from the client,
    so one serves every test's configuration.
    """

    def __init__(self, tmp: str):
        require_root()
        self.tmp = tmp
        os.makedirs(os.path.join(tmp, 'run'), mode=0o700)
        self.socket = os.path.join(tmp, 'run', 'hook.sock')
        # No fallback: every call must reach the service.
        self.client = compile_hook_client(os.path.join(tmp, 'libxl'),
                                          NO_FALLBACK)
        config = os.path.join(tmp, 'service.conf')
        with open(config, 'w') as handle:
            handle.write('[dm_restrict]\n')
        env = dict(os.environ)
        env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
        env[host.CONFIG_ENV] = config
        env[launch_settings.PATH_ENV] = os.path.join(tmp, 'run',
                                                     'snapshot.marshal')
        self.log = open(os.path.join(tmp, 'service.log'), 'w+b')
        self.proc = subprocess.Popen(
            module('xen_dm_restrict_plugin.cmd.hook_service')
            + ['--socket', self.socket], env=env,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError('the hook service did not start: %s'
                                   % self.log_text())
            time.sleep(0.01)

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors='replace')

    def argv(self) -> typing.List[str]:
        return [self.client]

    def environ(self, env: typing.Dict[str, str]) -> typing.Dict[str, str]:
        return dict(env, **{hook_service.SOCKET_ENV: self.socket})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()
