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
    hostenv.kill_uid(made.first + 300, rounds=2)
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


def _dir_client_reaps(env, outside, args):
    """Run privsep_dir_client.py with ``args`` against a process of uid
    ``outside``; (whether that process was killed, the client's result).
    """
    victim = subprocess.Popen(['sleep', '300'], user=outside, group=outside)
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(os.path.dirname(__file__),
                                          'privsep_dir_client.py')] + args,
            capture_output=True, text=True, env=env.environ(), timeout=60)
        killed = victim.wait(timeout=5) == -9 if proc.returncode == 0 \
            else victim.poll() is not None
    except subprocess.TimeoutExpired:
        killed = False
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    return killed, proc


def test_a_config_dir_the_orchestrator_owns_is_not_obeyed(env, tmp_path):
    orch = env.first + 600
    outside = env.first + 300   # in no range of the root-owned file
    conf_d = tmp_path / 'orch.conf.d'
    conf_d.mkdir()
    (conf_d / 'evil.conf').write_text(
        '[dm_restrict]\ntenant_uid_ranges = acme:%d-%d,globex:%d-%d,'
        'evil:%d-%d\n' % (env.first, env.first + 99, env.first + 100,
                          env.first + 199, outside, outside))
    os.chown(conf_d, orch, orch)
    os.chown(conf_d / 'evil.conf', orch, orch)
    # tmp_path's parents must let the orchestrator's user in.
    killed, proc = _dir_client_reaps(
        env, outside, [env.config, str(conf_d), str(orch), str(outside)])
    # Root must not kill a process of a uid outside every range of its
    # own configuration on the orchestrator's say-so.
    assert not killed, proc.stdout
    assert 'not root' in proc.stdout, proc.stdout


def test_a_link_the_orchestrator_swaps_after_start_is_not_obeyed(env,
                                                                 tmp_path):
    """The daemon parses its files when it starts, but checks them again
    by path only when asked to reap: a link the orchestrator owns can
    point at its own file first and at root's file afterwards.
    """
    orch = env.first + 600
    outside = env.first + 300
    home = tmp_path / 'orch'
    home.mkdir()
    evil = home / 'evil.conf'
    evil.write_text(open(env.config).read().replace(
        'globex:%d-%d' % (env.first + 100, env.first + 199),
        'globex:%d-%d,evil:%d-%d' % (env.first + 100, env.first + 199,
                                     outside, outside)))
    assert 'evil:' in evil.read_text()
    link = home / 'dm.conf'
    os.symlink(evil, link)
    for path in (home, evil):
        os.chown(path, orch, orch)
    os.lchown(link, orch, orch)
    killed, proc = _dir_client_reaps(
        env, outside, [str(link), '-', str(orch), str(outside), env.config])
    assert not killed, proc.stdout
    assert 'not root' in proc.stdout, proc.stdout


def test_the_documented_helper_command_starts_the_daemon(env, tmp_path):
    """The orchestrator guide's helper_command, as written but for sudo
    (the test is root already) and the files' paths, starts the daemon
    an unprivileged orchestrator reaps through.
    """
    guide = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), 'doc', 'source', 'configuration',
        'orchestrator.rst')
    with open(guide) as handle:
        line = [x.strip() for x in handle
                if x.strip().startswith('helper_command = ')][0]
    command = line.split('=', 1)[1].strip()
    assert command.startswith('sudo privsep-helper ')
    orchestrator_conf = tmp_path / 'nova.conf'
    orchestrator_conf.write_text('[DEFAULT]\n')
    command = command[len('sudo '):].replace(
        'privsep-helper', os.path.join(os.path.dirname(sys.executable),
                                       'privsep-helper'), 1).replace(
        '/etc/nova/nova.conf', str(orchestrator_conf)).replace(
        '/etc/xen-dm-restrict/xen-dm-restrict.conf', env.config)
    victim_uid = env.first + 1
    victim = subprocess.Popen(['sleep', '300'], user=victim_uid,
                              group=victim_uid)
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(os.path.dirname(__file__),
                                          'privsep_helper_client.py'),
             command, str(orchestrator_conf), env.config,
             str(env.first + 600), str(victim_uid)],
            capture_output=True, text=True, env=env.environ(), timeout=60)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.splitlines()[-1])
        assert victim.wait(timeout=10) == -9, out
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert out['euid'] == env.first + 600
    assert str(victim.pid) in str(out['reap'])
