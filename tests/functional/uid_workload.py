"""A supervisor that runs hostile processes as a uid, for the reaper tests.

Run as root: ``python -m tests.functional.uid_workload UID GID MODE...``
with MODE ``sleep`` (a process that waits), ``forkloop`` (forks in a
loop, the parent exiting each time, so its pid keeps changing) or
``killback`` (forks in a loop and each child calls ``kill(-1, SIGKILL)``,
which kills a reaper that did a plain ``setuid``).  The supervisor makes
itself the child subreaper, so every descendant, however often it
double-forks, stays its descendant: once ``waitpid(-1)`` reports ECHILD,
no process of the workload is left, which a ``/proc`` scan could not
prove for a fork loop.  It prints ``ready`` when every worker runs as the
uid, then answers each ``check SECONDS`` line on stdin with ``gone N``
(N processes collected in all) or ``left``.
"""

import ctypes
import errno
import os
import resource
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def _become(uid: int, gid: int) -> None:
    # A cap on the uid's processes, so a failed reap cannot swamp the host.
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _work(mode: str) -> None:
    if mode == 'sleep':
        while True:
            signal.pause()
    while True:
        try:
            pid = os.fork()
        except OSError:
            continue
        if pid:
            os._exit(0)
        if mode == 'killback':
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass


def _start(uid: int, gid: int, mode: str) -> None:
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        try:
            os.close(ready_r)
            _become(uid, gid)
            os.write(ready_w, b'x')
            os.close(ready_w)
            _work(mode)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)


def _collect():
    """Wait for every exited descendant.

    :returns: (how many were collected, whether none is left at all).
    """
    count = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return count, True
        if pid == 0:
            return count, False
        count += 1


def main() -> None:
    uid, gid, modes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl')
    for mode in modes:
        _start(uid, gid, mode)
    print('ready', flush=True)
    collected = 0
    pending = b''
    deadline = None
    while True:
        # Keep collecting, so the fork loops never stall on zombies.
        count, none_left = _collect()
        collected += count
        if deadline is not None and (none_left
                                     or time.monotonic() > deadline):
            print('gone %d' % collected if none_left else 'left',
                  flush=True)
            deadline = None
        if not select.select([0], [], [], 0.001)[0]:
            continue
        data = os.read(0, 4096)
        if not data:
            return
        pending += data
        while b'\n' in pending:
            line, pending = pending.split(b'\n', 1)
            words = line.split()
            if words[:1] == [b'check']:
                deadline = time.monotonic() + float(words[1])


if __name__ == '__main__':
    try:
        main()
    except OSError as err:
        if err.errno != errno.EPIPE:
            raise
