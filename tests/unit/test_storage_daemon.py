"""The storage daemon's record of a process: alive, stopped, reaped.

Real child processes of the test stand in for the daemon: whether a
process is the daemon is read from ``/proc`` by pid and uid, whatever
program it runs.  (The real ``qemu-storage-daemon`` runs in
tests/functional/test_storage_daemon.py, as root.)
"""

import os
import subprocess
import sys
import time
import types
import uuid as uuid_mod

from xen_dm_restrict_plugin.storage import daemon


def _served(pid: int, directory: str) -> daemon.Served:
    image = os.path.join(directory, 'disk')
    with open(image, 'w'):
        pass
    return daemon.Served(
        instance=str(uuid_mod.uuid4()), target='xvda', uid=os.getuid(),
        gid=os.getgid(), pid=pid, socket=os.path.join(directory, 'sock'),
        image=image, owner=(os.getuid(), os.getgid(), 0o644))


def _wait_for_zombie(pid: int) -> None:
    for _ in range(500):
        with open('/proc/%d/stat' % pid) as handle:
            if handle.read().rsplit(')', 1)[1].split()[0] == 'Z':
                return
        time.sleep(0.01)
    raise AssertionError('child %d did not exit' % pid)


def test_a_daemon_that_exited_unreaped_is_not_alive(tmp_path):
    """A zombie (the daemon exited; its parent, the process that
    started it, has not reaped it yet) is reported gone, as reconcile
    must see it.
    """
    proc = subprocess.Popen(['sleep', '60'])
    try:
        assert daemon.alive(_served(proc.pid, str(tmp_path)))
        proc.kill()
        _wait_for_zombie(proc.pid)
        assert not daemon.alive(_served(proc.pid, str(tmp_path)))
    finally:
        proc.kill()
        proc.wait()


def test_a_daemon_whose_main_thread_exited_is_alive(tmp_path):
    """The main thread a zombie, another thread still running: the
    daemon has not stopped (a compromised daemon could look gone so).
    """
    proc = subprocess.Popen([
        sys.executable, '-c',
        'import ctypes, threading, time\n'
        'threading.Thread(target=time.sleep, args=(60,)).start()\n'
        'ctypes.CDLL(None).pthread_exit(None)\n'])
    try:
        _wait_for_zombie(proc.pid)
        assert daemon.alive(_served(proc.pid, str(tmp_path)))
    finally:
        proc.kill()
        proc.wait()


def test_stopping_a_daemon_this_process_started_reaps_it(tmp_path):
    """The process that started a daemon (the bench, a test) and stops
    it gets it stopped and reaped, its directory removed.
    """
    proc = subprocess.Popen(['sleep', '60'])
    directory = daemon.disk_dir(str(tmp_path), 'instance', 'xvda')
    os.makedirs(directory)
    daemon._write_state(directory, _served(proc.pid, str(tmp_path)))
    settings = types.SimpleNamespace(
        cgroup_parent='xdr-unit-%s' % uuid_mod.uuid4().hex[:10])
    try:
        daemon.stop_disk(settings, directory)
        assert not os.path.exists('/proc/%d' % proc.pid)
        assert not os.path.exists(directory)
    finally:
        proc.kill()
        proc.wait()
