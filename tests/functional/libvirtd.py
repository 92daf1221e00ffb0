"""A private libvirtd serving libvirt's test driver to several processes.

``test:///default`` lives inside the process that opened it, so races
between processes need a daemon that holds one test driver for all of
them.  Debian 12's ``libvirt-daemon`` package (bindep.txt, test profile)
has ``libvirtd``, which serves it as ``test+unix:///default?socket=...``
(libvirt registers the test driver in every process, the daemon
included).  It runs here unprivileged, as a uid of the test's own block
without an account, in session mode, with every directory (socket,
runtime, configuration, cache, log) in the test's temporary directory,
and with ``LIBVIRT_DRIVER_DIR`` pointing at an empty directory so that
no hypervisor driver module loads: nothing on the host changes, and the
test driver is the only one it has.  One connection stays open for the
daemon's life, since the test driver drops its state when the last
connection closes.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import typing

import libvirt
import pytest

from tests.functional import hostenv

LIBVIRTD = '/usr/sbin/libvirtd'


class Libvirtd:
    """A running private libvirtd; :attr:`uri` reaches its test driver.

    :param top: an empty directory of the test's own.
    :param uid: an unused uid (and gid) to run it as.
    """

    def __init__(self, top: str, uid: int):
        self.top = top
        self.uid = uid
        self.proc: typing.Optional[subprocess.Popen] = None
        self.keep: typing.Optional[libvirt.virConnect] = None
        self.sock_dir = os.path.join(top, 'sock')
        self.uri = ('test+unix:///default?socket=%s'
                    % os.path.join(self.sock_dir, 'libvirt-sock'))
        self.log = os.path.join(top, 'libvirtd.log')

    def start(self, wait: float = 15.0) -> None:
        dirs = {name: os.path.join(self.top, name) for name in (
            'sock', 'run', 'config', 'cache', 'home', 'drivers')}
        for path in dirs.values():
            os.makedirs(path, exist_ok=True)
        config = os.path.join(self.top, 'libvirtd.conf')
        with open(config, 'w', encoding='utf-8') as handle:
            handle.write('unix_sock_dir = "%s"\n' % dirs['sock'])
            handle.write('unix_sock_rw_perms = "0700"\n')
            handle.write('auth_unix_rw = "none"\nauth_unix_ro = "none"\n')
            handle.write('log_outputs = "3:file:%s"\n' % self.log)
        for path, _, files in os.walk(self.top):
            os.chown(path, self.uid, self.uid)
            for name in files:
                os.chown(os.path.join(path, name), self.uid, self.uid)
        env = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin',
               'HOME': dirs['home'], 'XDG_RUNTIME_DIR': dirs['run'],
               'XDG_CONFIG_HOME': dirs['config'],
               'XDG_CACHE_HOME': dirs['cache'],
               'LIBVIRT_DRIVER_DIR': dirs['drivers']}
        uid = self.uid

        def demote():
            os.setsid()
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)

        self.proc = subprocess.Popen(
            [LIBVIRTD, '--config', config], env=env, cwd=self.top,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=demote)
        deadline = time.monotonic() + wait
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        while True:
            try:
                self.keep = libvirt.open(self.uri)
                return
            except libvirt.libvirtError as err:
                if self.proc.poll() is not None or \
                        time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError('libvirtd did not start: %s; %s'
                                       % (err, self.log_tail())) from None
                time.sleep(0.05)

    def log_tail(self) -> str:
        try:
            with open(self.log, encoding='utf-8', errors='replace') as f:
                return f.read()[-2000:]
        except OSError:
            return '(no log)'

    def kill(self) -> None:
        """SIGKILL the daemon (its test driver state is lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.keep is not None:
            try:
                self.keep.close()
            except libvirt.libvirtError:
                pass
            self.keep = None
        self.kill()
        self.proc = None


def available() -> typing.Optional[str]:
    """Why no private libvirtd can run here, or None."""
    if not os.path.exists(LIBVIRTD):
        return ('%s is not installed (Debian package libvirt-daemon, in '
                'bindep.txt under the test profile)' % LIBVIRTD)
    if os.geteuid() != 0:
        return ('needs root, to run the private libvirtd as a uid of its '
                'own (CI runs as root)')
    return None


def start(top: str, uid: int) -> Libvirtd:
    """Start a private libvirtd in ``top``, or skip the test with why."""
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    daemon = Libvirtd(top, uid)
    try:
        daemon.start()
    except (OSError, RuntimeError) as err:
        pytest.skip('the private libvirtd could not start: %s' % err)
    return daemon


@contextlib.contextmanager
def running() -> typing.Iterator[Libvirtd]:
    """A private libvirtd for the block of a ``with``; skips the test
    with the reason when it cannot run here.
    """
    top = tempfile.mkdtemp(prefix='xdr-libvirtd-')
    os.chmod(top, 0o755)
    try:
        daemon = start(top, hostenv.free_block() + 998)
        try:
            yield daemon
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def hooked_test_driver(conf) -> typing.Iterator[typing.Any]:
    """A HookedConnection to ``test:///default`` through the hooks
    ``conf`` enables.

    The test driver's state is shared by every connection of the process,
    so every domain defined through it is removed again afterwards.
    """
    from xen_dm_restrict_plugin.orchestrator import loader
    from xen_dm_restrict_plugin.orchestrator import virt

    connection = virt.HookedConnection.open('test:///default',
                                            loader.HookManager(conf))
    try:
        yield connection
    finally:
        for dom in connection.conn.listAllDomains(0):
            if dom.name() != 'test':
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        connection.close()
