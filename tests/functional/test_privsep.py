"""An unprivileged orchestrator reaps through the oslo.privsep daemon.

The client side runs as a user created for the test; the daemon, forked
while root, keeps only CAP_SETUID.  A real process of a device-model uid
is killed through it, and the daemon refuses, with its own configuration,
uids outside the ranges whatever the client asks.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.functional import hostenv


@pytest.fixture
def env(tmp_path):
    hostenv.require_root()
    made = hostenv.make_env(tmp_path, with_reaper=True)
    made.orchestrator = hostenv.unique_name('xdr-orch-')
    made.add_user(made.orchestrator, made.first + 600)
    made.write_config(reap_device_models='true')
    yield made
    hostenv.kill_uid(made.first + 1, rounds=2)
    made.remove_users()


def test_unprivileged_orchestrator_reaps_through_privsep(env):
    victim_uid = env.first + 1
    victim = subprocess.Popen(['sleep', '300'], user=victim_uid,
                              group=victim_uid)
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(os.path.dirname(__file__),
                                          'privsep_client.py'),
             env.config, str(env.first + 600), str(victim_uid),
             str(env.first + 300)],
            capture_output=True, text=True, env=env.environ(), timeout=60)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.splitlines()[-1])
        assert victim.wait(timeout=10) == -9
    finally:
        if victim.poll() is None:
            victim.kill()
    assert out['euid'] == env.first + 600
    assert out['reaper'] == 'PrivsepReaper'
    assert 'not root' in out['in_process']
    assert out['reap'].startswith('uid %d reaped: 1 process(es) found'
                                  % victim_uid)
    assert out['outside'].startswith('ReapRefused: it is not inside any')
    assert out['root'].startswith('ReapRefused: it is a reserved uid')


def test_the_daemon_refuses_a_configuration_the_orchestrator_can_change(
        env):
    """The orchestrator's user must not widen what root reaps."""
    victim_uid = env.first + 1
    victim = subprocess.Popen(['sleep', '300'], user=victim_uid,
                              group=victim_uid)
    os.chown(env.config, env.first + 600, 0)
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(os.path.dirname(__file__),
                                          'privsep_client.py'),
             env.config, str(env.first + 600), str(victim_uid),
             str(env.first + 300)],
            capture_output=True, text=True, env=env.environ(), timeout=60)
        assert proc.returncode != 0
        assert 'is owned by uid %d, not root' % (env.first + 600) in \
            proc.stderr
        assert victim.poll() is None
    finally:
        os.chown(env.config, 0, 0)
        victim.kill()
        victim.wait()
