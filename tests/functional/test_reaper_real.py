"""The reaper against real users and hostile processes (root only).

Each test creates its reaper user with useradd and removes it after;
the workloads run under a subreaper supervisor (uid_workload), which is
what proves that nothing of the uid is left: a /proc scan cannot see a
process that forks in a loop.
"""

import fcntl
import json
import os
import signal
import subprocess
import threading

import pytest

from tests.functional import hostenv
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import reaper


@pytest.fixture
def env(tmp_path):
    hostenv.require_root()
    made = hostenv.make_env(tmp_path, with_reaper=True)
    yield made
    for uid in range(made.first, made.first + 10):
        hostenv.kill_uid(uid, rounds=2)
    hostenv.kill_uid(made.first + 500, rounds=1)
    made.remove_users()


class Workload:
    """A uid_workload supervisor; stopped (and its uid killed) on close."""

    def __init__(self, env, uid, *modes):
        self.uid = uid
        self.proc = subprocess.Popen(
            hostenv.module('tests.functional.uid_workload')
            + [str(uid), str(uid)] + list(modes),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env.environ(), cwd=hostenv.ROOT, text=True)
        assert self.proc.stdout.readline().strip() == 'ready'

    def check(self, seconds=2.0) -> str:
        self.proc.stdin.write('check %s\n' % seconds)
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        hostenv.kill_uid(self.uid, rounds=5)
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def workloads(env):
    started = []

    def start(uid, *modes):
        started.append(Workload(env, uid, *modes))
        return started[-1]
    yield start
    for work in started:
        work.close()


def _alive(proc) -> bool:
    return proc.poll() is None


def test_fork_loops_and_sleepers_are_all_gone(env, workloads):
    target = env.first + 1
    victims = workloads(target, 'forkloop', 'forkloop', 'sleep', 'sleep')
    bystander = workloads(env.first + 2, 'sleep', 'forkloop')
    other_tenant = workloads(env.globex[0], 'sleep')

    result = reaper.Reaper(env.settings()).reap(target, 'test')

    assert victims.check().startswith('gone')
    assert result.uid == target and result.rounds >= 1
    # The two sleepers at least were seen; the fork loops may hide.
    assert len(result.found) >= 2
    assert reaper.scan(target)[0] == []
    # Processes of other uids were not touched.
    assert bystander.check(0.2) == 'left'
    assert other_tenant.check(0.2) == 'left'
    assert reaper.scan(env.first + 2)[0]
    assert reaper.scan(env.globex[0])[0]


def test_a_process_killing_back_cannot_kill_the_reaper(env, workloads):
    target = env.first + 3
    victims = workloads(target, 'killback', 'killback', 'killback')
    bystander = workloads(env.first + 4, 'sleep')

    # The reaper's child would die by SIGKILL if the workload could signal
    # it; reap() then raises ReapError instead of returning.
    for _ in range(5):
        result = reaper.Reaper(env.settings()).reap(target)
        assert result.uid == target
    assert victims.check().startswith('gone')
    assert bystander.check(0.2) == 'left'


def test_nothing_to_reap_is_fine_and_fast(env):
    result = reaper.Reaper(env.settings()).reap(env.first + 5)
    assert result.rounds == 1 and result.found == ()
    assert result.seconds < 0.5


def test_reapers_are_serialised_by_the_lock(env, workloads):
    settings = env.settings()
    os.makedirs(os.path.dirname(settings.reaper_lock_file), exist_ok=True)
    holder = os.open(settings.reaper_lock_file, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(exception.ReapError, match='another reaper'):
            reaper.Reaper(settings, timeout=0.2).reap(env.first + 6)
    finally:
        os.close(holder)

    victims = [workloads(env.first + 7, 'forkloop', 'sleep'),
               workloads(env.first + 8, 'killback', 'sleep')]
    errors = []

    def reap(uid):
        try:
            reaper.Reaper(settings).reap(uid)
        except exception.DmRestrictError as err:
            errors.append(err)
    threads = [threading.Thread(target=reap, args=(uid,))
               for uid in (env.first + 7, env.first + 8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [v.check().split()[0] for v in victims] == ['gone', 'gone']


def test_the_reaper_user_itself_is_killed_too(env):
    # Documented behaviour: the reaper uid must be dedicated.
    sleeper = subprocess.Popen(['sleep', '60'], user=env.first + 500)
    try:
        reaper.Reaper(env.settings()).reap(env.first + 9)
        assert sleeper.wait(timeout=2) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize('uid, why', [
    (0, 'reserved'), (65534, 'reserved'), (1000, 'not inside any'),
])
def test_refused_uids(env, uid, why):
    with pytest.raises(reaper.ReapRefused, match=why):
        reaper.Reaper(env.settings()).reap(uid)


def test_refused_reaper_uid(env):
    with pytest.raises(reaper.ReapRefused):
        reaper.Reaper(env.settings()).check_uid(env.first + 500)


def test_cli_reap(env, workloads):
    victims = workloads(env.first + 9, 'forkloop', 'sleep')
    proc = subprocess.run(
        hostenv.module('xen_dm_restrict_plugin.cmd.cli')
        + ['reap', '--config-file', env.config, '--uid',
           str(env.first + 9), '--format', 'json'],
        env=env.environ(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report['uid'] == env.first + 9 and report['rounds'] >= 1
    assert victims.check().startswith('gone')

    refused = subprocess.run(
        hostenv.module('xen_dm_restrict_plugin.cmd.cli')
        + ['reap', '--config-file', env.config, '--uid', '0'],
        env=env.environ(), capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert 'reserved uid' in refused.stderr


def test_not_root_is_unavailable(env):
    settings = env.settings()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setresuid(65534, 65534, 65534)
            try:
                reaper.Reaper(settings).reap(env.first + 1)
                message = 'reaped'
            except reaper.ReapUnavailable as err:
                message = str(err)
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as handle:
        message = handle.read()
    os.waitpid(pid, 0)
    assert 'runs as uid 65534, not root' in message


def test_reaper_user_missing_is_unavailable(env):
    env.reaper_name = ''
    env.write_config()
    settings = env.settings()
    assert 'does not exist' in reaper.Reaper(settings).unavailable_reason()
    with pytest.raises(reaper.ReapUnavailable):
        reaper.Reaper(settings).reap(env.first + 1)
