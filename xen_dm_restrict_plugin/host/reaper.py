"""Kill every process of a device-model uid, as Xen's design doc says.

Device-model uids are reused: when a domain stops, and before another
domain starts with its uid, any process left running as that uid must
die, or a compromised QEMU that forked away from its domain would take
control of the next one.  Killing by pid is racy and process groups are
escapable, so the kill is by uid: a forked child sets
``setresuid(reaper_uid, target_uid, 0)`` and calls ``kill(-1, SIGKILL)``.
Its effective uid lets it signal every process whose real or saved uid
is the target; its real uid (the dedicated reaper user) and saved uid
(root) are ones no target process can signal, so a target doing
``fork(); kill(-1, SIGKILL)`` in a loop cannot kill the reaper, as it
would after a plain ``setuid(target_uid)``.  ``kill(-1)`` also hits
anything running as the reaper uid, including another reaper, so reapers
are serialised by an flock on ``[dm_restrict] reaper_lock_file``.

The parent supervises the child: the kill counts only if the child, at
exactly those ids, exits 0.  Then the parent confirms the result in
``/proc``.  A scan of ``/proc`` cannot find a process that forks fast,
but after the kill it can be trusted: the kernel sends the signal to
every process of the uid under the task-list lock, and a process with a
pending SIGKILL cannot complete a fork, so no new process of the uid can
appear.  Processes the scan still finds alive are killed again until the
deadline; zombies (dead, waiting for their parent) are reported, not
counted as left.
"""

import dataclasses
import errno
import fcntl
import logging
import os
import signal
import time
import typing

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin.core import settings as settings_mod
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import network as dm_network

LOG = logging.getLogger(__name__)

#: Seconds to wait for the processes of a uid to die before giving up.
DEFAULT_TIMEOUT = 5.0
#: Seconds between two kills of a uid whose processes are still alive.
REKILL_INTERVAL = 0.05

# Exit codes of the killing child.
_CHILD_SETRESUID_FAILED = 3
_CHILD_WRONG_IDS = 4
_CHILD_KILL_FAILED = 5


class ReapRefused(exception.ReapError, exception.Refused):
    """The uid may not be reaped: reserved, the reaper's, or unranged."""


class ReapUnavailable(exception.ReapError, exception.CapabilityMissing):
    """Reaping is impossible on this host: not root, or no reaper user.

    Callers that must not start a domain without a reap catch this and
    fail closed.
    """


@dataclasses.dataclass(frozen=True)
class ReapResult:
    """The outcome of a reap that left no live process behind.

    :param uid: the uid reaped.
    :param rounds: how many times ``kill(-1, SIGKILL)`` was sent.
    :param found: pids of the uid found alive just before the kill; a
        lower bound (a fork loop hides from the scan), and on a stopped
        domain's uid anything here outlived its device model.
    :param zombies: pids of dead processes of the uid not yet waited for
        by their parent.
    :param seconds: the time the reap took, lock wait included.
    """

    uid: int
    rounds: int
    found: typing.Tuple[int, ...]
    zombies: typing.Tuple[int, ...]
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        text = ('uid %d reaped: %d process(es) found running, %d kill '
                'round(s), nothing left alive (%.1f ms)'
                % (self.uid, len(self.found), self.rounds,
                   self.seconds * 1000))
        if self.zombies:
            text += '; zombies awaiting their parent: %s' % ' '.join(
                str(pid) for pid in self.zombies)
        return text


_UID_LINE = b'\nUid:\t'
_STATE_LINE = b'\nState:\t'


def _status(name: str) -> bytes:
    """The head of ``/proc/NAME/status``, where Uid and State are (empty
    when the process is gone).

    Read as bytes through a descriptor: a scan reads one for every
    process of the host, twice per reap.
    """
    try:
        fd = os.open('/proc/%s/status' % name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b''
    try:
        return os.read(fd, 4096)
    except OSError:
        return b''
    finally:
        os.close(fd)


def _field(status: bytes, line: bytes) -> bytes:
    start = status.find(line)
    if start < 0:
        return b''
    start += len(line)
    end = status.find(b'\n', start)
    return status[start:end if end >= 0 else len(status)]


def scan(uid: int) -> typing.Tuple[typing.List[int], typing.List[int]]:
    """Processes whose real, effective or saved uid is ``uid``.

    Reliable only after a kill (see the module docstring).

    :returns: (pids alive, pids of zombies).
    """
    alive, zombies = [], []
    wanted = b'%d' % uid
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        status = _status(name)
        # Uid: real, effective, saved, filesystem.
        if wanted not in _field(status, _UID_LINE).split()[:3]:
            continue
        state = _field(status, _STATE_LINE)[:1]
        (zombies if state in (b'Z', b'X') else alive).append(int(name))
    return alive, zombies


class Reaper:
    """Kills processes by uid for one host's configuration.

    :param settings: gives the reaper uid, the uid ranges and the lock
        file.
    :param timeout: seconds to wait for the lock and for the processes to
        die.
    """

    def __init__(self, settings: settings_mod.Settings,
                 timeout: float = DEFAULT_TIMEOUT):
        self.settings = settings
        self.timeout = timeout

    def unavailable_reason(self) -> typing.Optional[str]:
        """Why reaping is impossible here, or ``None`` when it is possible.
        """
        missing = self.reaper_user_missing()
        if missing is not None:
            return missing
        if os.geteuid() != 0:
            return 'this process runs as uid %d, not root' % os.geteuid()
        return None

    def reaper_user_missing(self) -> typing.Optional[str]:
        """Why the configured reaper user cannot be used, or ``None``."""
        if self.settings.reaper_uid is None:
            return ('reaper_user %r does not exist'
                    % self.settings.reaper_user)
        return None

    def check_available(self) -> None:
        """Raise unless reaping is possible here.

        :raises ReapUnavailable: reaping is impossible on this host.
        """
        reason = self.unavailable_reason()
        if reason is not None:
            raise ReapUnavailable(
                'reaping device-model processes', reason,
                'run as root, with a dedicated reaper user: useradd '
                '--system --no-create-home --shell /usr/sbin/nologin %s'
                % self.settings.reaper_user)

    def check_uid(self, uid: int) -> None:
        """Raise unless ``uid`` is a device-model uid.

        :raises ReapRefused: ``uid`` must never be reaped.
        """
        if uid in ranges.FORBIDDEN_UIDS:
            raise ReapRefused('reap of uid %d' % uid, 'it is a reserved uid '
                              '(root, nobody or invalid)',
                              'reap only device-model uids')
        if uid == self.settings.reaper_uid:
            raise ReapRefused('reap of uid %d' % uid, 'it is the reaper uid',
                              'reap only device-model uids')
        if not any(uid in rng for rng in self.settings.all_ranges()):
            raise ReapRefused(
                'reap of uid %d' % uid,
                'it is not inside any configured tenant or shared uid '
                'range, so it may belong to a user or a service',
                'reap only uids of [dm_restrict] tenant_uid_ranges or '
                'shared_uid_range')

    def reap(self, uid: int, context: str = '') -> ReapResult:
        """Kill every process of ``uid`` and confirm none is left alive.

        :param uid: a device-model uid inside a configured range.
        :param context: who the uid belongs to, for the log (e.g.
            ``instance UUID of tenant T``).
        :raises ReapRefused: ``uid`` must never be reaped.
        :raises ReapUnavailable: reaping is impossible on this host.
        :raises ReapError: the lock was not obtained, the killing child
            failed, or processes of the uid were still alive at the
            deadline.
        """
        where = ' (%s)' % context if context else ''
        try:
            self.check_uid(uid)
            self.check_available()
        except exception.ReapError as err:
            LOG.warning('reap of uid %d%s refused: %s', uid, where, err)
            raise
        start = time.monotonic()
        deadline = start + self.timeout
        try:
            with self._locked(deadline):
                found = scan(uid)[0]
                rounds, zombies = self._kill_until_gone(uid, deadline)
                self._remove_cgroup(uid, where)
                self._remove_taps(uid, where)
        except exception.ReapError as err:
            LOG.error('reap of uid %d%s failed: %s', uid, where, err)
            raise
        result = ReapResult(uid, rounds, tuple(found), tuple(zombies),
                            time.monotonic() - start)
        if found:
            LOG.warning('uid %d%s still ran processes %s before the reap',
                        uid, where, ' '.join(map(str, found)))
        LOG.info('%s%s', result.summary(), where)
        return result

    def _remove_taps(self, uid: int, where: str) -> None:
        """Remove the taps the launcher opened for ``uid`` that outlived
        its device model (made persistent).
        """
        try:
            removed = dm_network.remove_leftover_taps(
                self.settings.chroot_base_dir, uid)
        except OSError as err:
            LOG.warning('leftover taps of uid %d%s not removed: %s', uid,
                        where, err)
            return
        if removed:
            LOG.warning('removed taps %s of uid %d%s, which outlived its '
                        'device model', ', '.join(removed), uid, where)

    def _remove_cgroup(self, uid: int, where: str) -> None:
        """Remove the cgroup the launcher made for ``uid``, now empty."""
        if getattr(self.settings, 'cgroup_limits', None) != \
                constants.CGROUPS_REQUIRED:
            return
        from xen_dm_restrict_plugin.launcher import cgroup as dm_cgroup

        try:
            removed = dm_cgroup.remove(self.settings.cgroup_parent, uid)
        except OSError as err:
            LOG.warning('the cgroup of uid %d%s stays: %s', uid, where, err)
            return
        if removed:
            LOG.info('removed the cgroup of uid %d%s: %s', uid, where,
                     ', '.join(removed))

    def _kill_until_gone(self, uid: int, deadline: float
                         ) -> typing.Tuple[int, typing.List[int]]:
        rounds = 0
        while True:
            self._kill_as(uid)
            rounds += 1
            next_kill = time.monotonic() + REKILL_INTERVAL
            pause = 0.0002
            while True:
                alive, zombies = scan(uid)
                if not alive:
                    return rounds, zombies
                now = time.monotonic()
                if now >= deadline:
                    raise exception.ReapError(
                        'processes of uid %d still alive %.1f s after '
                        'SIGKILL: %s' % (uid, self.timeout, ' '.join(
                            str(pid) for pid in alive)))
                if now >= next_kill:
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.01)

    def _kill_as(self, uid: int) -> None:
        reaper_uid = self.settings.reaper_uid
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _kill_child(reaper_uid, uid)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            raise exception.ReapError(
                'the reaper child for uid %d was killed by signal %d'
                % (uid, os.WTERMSIG(status)))
        code = os.WEXITSTATUS(status)
        if code:
            raise exception.ReapError(
                'the reaper child for uid %d failed (%s)' % (uid, {
                    _CHILD_SETRESUID_FAILED: 'setresuid failed',
                    _CHILD_WRONG_IDS: 'ids not as set',
                    _CHILD_KILL_FAILED: 'kill(-1) failed',
                }.get(code, 'exit code %d' % code)))

    def _locked(self, deadline: float) -> '_FileLock':
        return _FileLock(self.settings.reaper_lock_file, deadline)


def _kill_child(reaper_uid: int, uid: int) -> int:
    """Runs in the forked child: never returns to the caller's code."""
    try:
        os.setresuid(reaper_uid, uid, 0)
    except OSError:
        return _CHILD_SETRESUID_FAILED
    if os.getresuid() != (reaper_uid, uid, 0):
        return _CHILD_WRONG_IDS
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError as err:
        # ESRCH: nothing else on the host we may signal.
        if err.errno != errno.ESRCH:
            return _CHILD_KILL_FAILED
    return 0


class _FileLock:
    """An exclusive flock on a file, waited for until a deadline."""

    def __init__(self, path: str, deadline: float):
        self.path = path
        self.deadline = deadline
        self.fd = -1

    def __enter__(self) -> '_FileLock':
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700,
                        exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT |
                              os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise exception.ReapError(
                'cannot open the reaper lock %s: %s'
                % (self.path, err.strerror or err)) from None
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= self.deadline:
                    os.close(self.fd)
                    raise exception.ReapError(
                        'another reaper held %s until the deadline'
                        % self.path) from None
                time.sleep(0.001)

    def __exit__(self, *exc_info) -> None:
        os.close(self.fd)


def reap_for_release(reaper: Reaper, uid: int, context: str
                     ) -> typing.Optional[ReapResult]:
    """Reap a uid whose lease is about to be released.

    A lease taken before its tenant's range shrank or moved holds a uid
    outside every configured range, which the reaper refuses (it may
    belong to someone else by now).  Such a lease must still be
    releasable: it is released without a reap, since a uid outside every
    range is never leased again, and a range that takes it back reaps it
    before any domain starts with it (the start reaps its uid first).

    :returns: what the reap did; ``None`` when reaping is off or the uid
        is outside every range.
    :raises ReapError: the reap failed; keep the lease.
    """
    settings = reaper.settings
    if not settings.reap_device_models:
        return None
    if not any(uid in rng for rng in settings.all_ranges()):
        LOG.warning('uid %d (%s) is outside every configured uid range '
                    '(the range was edited since it was leased): not '
                    'reaped now; it is reaped before any domain starts '
                    'with it again', uid, context)
        return None
    return reaper.reap(uid, context)
