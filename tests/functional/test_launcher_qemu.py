"""A real QEMU started restricted through the launcher, checked as Xen's
design doc says (root only); see :mod:`tests.functional.qemuenv`.
"""

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.functional import hostenv
from tests.functional import qemuenv
from xen_dm_restrict_plugin.launcher import settings as launch_settings

BASE_ARGS = qemuenv.BASE_ARGS
restriction_args = qemuenv.restriction_args


@pytest.fixture(params=qemuenv.KINDS)
def env(tmp_path, request):
    """A host configuration; the test runs through the Python launcher
    and through the compiled front with its service.
    """
    hostenv.require_root()
    hostenv.require_tool(hostenv.QEMU)
    hostenv.require_cgroups()
    made = hostenv.make_env(tmp_path, with_reaper=False)
    service = qemuenv.use_front(made) if request.param == 'front' else None
    yield made
    if service is not None:
        service.kill()
        service.wait()
    for uid in range(made.first, made.first + 3):
        hostenv.kill_uid(uid, rounds=1)


def test_qemu_runs_restricted_through_the_launcher(env):
    settings = env.settings()
    uid = env.first + 1
    chroot = settings.chroot_dir(uid)
    # libxl may hand QEMU its QMP socket as an fd; the launcher keeps
    # that one and closes every other.
    monitor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    monitor.bind(os.path.join(env.tmp, 'qmp.sock'))
    monitor.listen(1)
    keep = monitor.fileno()
    stray_r, stray_w = os.pipe()
    stray_inode = os.fstat(stray_r).st_ino
    started = time.monotonic()
    qemu = qemuenv.Qmp(env, BASE_ARGS + [
        '-chardev', 'socket,id=libxl-cmd,fd=%d,server=on,wait=off' % keep,
        '-mon', 'chardev=libxl-cmd,mode=control']
        + restriction_args(settings, uid), pass_fds=(keep, stray_r))
    try:
        assert 'QMP' in qemu.read()
        assert qemu.command('qmp_capabilities') == {'return': {}}
        status = qemu.command('query-status')
        ready_after = time.monotonic() - started
        assert status['return']['running'] is True
        pid = qemu.pid

        proc_status = qemuenv.status(pid)
        assert proc_status['Name'].strip().startswith('qemu-system')
        assert proc_status['Uid'].split() == [str(uid)] * 4
        assert proc_status['Gid'].split() == [str(uid)] * 4
        assert proc_status['Seccomp'].strip() == '2'
        # Past the file size limit a write fails instead of killing QEMU
        # (its log is a file of libxl's).
        assert int(proc_status['SigIgn'], 16) & (1 << (25 - 1))

        # Same inode, not same path: readlink shows the path from the
        # real root, which differs when the tests themselves run chrooted.
        root = os.stat('/proc/%d/root' % pid)
        st = os.stat(chroot)
        assert (root.st_dev, root.st_ino) == (st.st_dev, st.st_ino)
        assert os.readlink('/proc/%d/root' % pid).endswith(chroot)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0)
        assert os.listdir(chroot) == []

        for ns in ('mnt', 'ipc', 'net'):
            assert (os.readlink('/proc/%d/ns/%s' % (pid, ns))
                    != os.readlink('/proc/self/ns/%s' % ns))

        limits = qemuenv.limits(pid)
        assert limits['Max file size'] == ('262144', '262144')
        assert limits['Max processes'] == (
            str(settings.device_model_max_processes),) * 2
        for group in qemuenv.cgroups(pid):
            assert group.endswith('/%s/dm-%d' % (env.cgroup_parent, uid))
        for name in ('Max core file size', 'Max msgqueue size',
                     'Max file locks', 'Max locked memory'):
            assert limits[name] == ('0', '0'), name

        links = [os.readlink('/proc/%d/fd/%s' % (pid, fd))
                 for fd in os.listdir('/proc/%d/fd' % pid)]
        assert 'socket:[%d]' % os.fstat(keep).st_ino in links
        assert 'pipe:[%d]' % stray_inode not in links

        assert qemu.command('quit') == {'return': {}}
        assert qemu.proc.wait(timeout=10) == 0
        assert 'starting %s as uid %d' % (hostenv.QEMU, uid) in (
            qemu.log_text())
        assert ready_after < 5
    finally:
        qemu.close()
        monitor.close()
        for fd in (stray_r, stray_w):
            os.close(fd)


def _run_launcher(env, args, **kwargs):
    return subprocess.run(qemuenv.launch_argv(env) + args,
                          env=env.environ(),
                          capture_output=True, text=True, timeout=30,
                          **kwargs)


def test_version_and_options_pass_straight_through(env):
    version = _run_launcher(env, ['-version'])
    assert version.returncode == 0
    assert version.stdout.startswith('QEMU emulator version')
    options = _run_launcher(env, ['-h'])
    assert options.returncode == 0
    assert '-machine' in options.stdout
    assert not os.path.exists(env.settings().chroot_base_dir)


def test_libvirts_probe_is_answered_without_starting_qemu(env, tmp_path):
    """libvirt's libxl driver runs ``<emulator> -help`` twice per start
    and builds qemu-xen's command line unless the output holds
    qemu-xen-traditional's mark; the launcher (Python or compiled front)
    answers with its own text and starts no QEMU for it.
    """
    from xen_dm_restrict_plugin.launcher import usage

    ran = tmp_path / 'qemu-ran'
    fake = tmp_path / 'qemu'
    fake.write_text('#!/bin/sh\ntouch %s\necho "%s"\n' % (
        ran, usage.LIBVIRT_TRADITIONAL_MARK))
    fake.chmod(0o755)
    env.write_config(qemu_binary=str(fake))
    for args in (['-help'], ['--help']):
        helped = _run_launcher(env, args)
        assert helped.returncode == 0, helped.stderr
        assert helped.stdout == usage.HELP
        assert usage.LIBVIRT_TRADITIONAL_MARK not in helped.stdout
        assert 'qemu-xen' in helped.stdout
    assert not ran.exists()
    # Any other query does reach the configured binary.
    other = _run_launcher(env, ['-version'])
    assert other.returncode == 0 and ran.exists()
    assert not os.path.exists(env.settings().chroot_base_dir)


@pytest.mark.parametrize('args, message', [
    (BASE_ARGS, 'carries no user and chroot restriction'),
    (BASE_ARGS + ['-runas', '1000:1000', '-chroot', '/tmp'],
     'not inside any configured tenant'),
    (BASE_ARGS + ['-runas', 'root', '-chroot', '/tmp'], 'numeric UID:GID'),
    (BASE_ARGS + ['-chroot', '/a', '-chroot', '/b', '-runas', '1:1'],
     'given twice'),
])
def test_unrestricted_or_foreign_command_lines_are_refused(env, args,
                                                           message):
    proc = _run_launcher(env, args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not os.path.exists(env.settings().chroot_base_dir)


@pytest.mark.parametrize('extra, words', [
    (['-incoming', 'exec:touch {tmp}/ran'], '-incoming'),
    (['-chardev', 'file,id=c,path={tmp}/created'], '-chardev'),
    (['-fsdev', 'local,id=f,path=/,security_model=none'], '-fsdev'),
    (['{tmp}/image.raw'], 'bare argument'),
    (['-drive', 'file={tmp}/image.raw,if=ide,format=raw'],
     'allowed_host_paths'),
    (['-serial', 'file:{tmp}/created'], 'allowed_chardev_types'),
    (['-kernel', '/etc/shadow'], 'allowed_host_paths'),
    (['-device', 'vfio-pci,host=0000:00:01.0'], 'a device libxl writes'),
    (['-netdev', 'tap,id=n,script={tmp}/run.sh'], 'shape libxl writes'),
    (['-name'], 'none follows'),
])
def test_arguments_libxl_would_not_write_are_refused(env, extra, words):
    # What a domain could once smuggle to a root QEMU: refused before
    # QEMU runs, so nothing it names is created, run or opened.
    settings = env.settings()
    uid = env.first + 2
    extra = [arg.format(tmp=env.tmp) for arg in extra]
    proc = _run_launcher(env, BASE_ARGS + restriction_args(settings, uid)
                         + extra)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr
    assert not os.path.exists(os.path.join(env.tmp, 'ran'))
    assert not os.path.exists(os.path.join(env.tmp, 'created'))
    assert not os.path.exists(settings.chroot_base_dir)


def test_missing_domid_restrict_is_refused_outside_test_mode(env):
    env.write_config(launcher_test_mode='false')
    settings = env.settings()
    uid = env.first + 2
    proc = _run_launcher(env, BASE_ARGS + restriction_args(settings, uid))
    assert proc.returncode == 2
    assert 'no -xen-domid-restrict' in proc.stderr


def test_chroot_outside_the_base_is_refused(env):
    settings = env.settings()
    uid = env.first + 2
    outside = os.path.join(env.tmp, 'elsewhere')
    proc = _run_launcher(env, BASE_ARGS + [
        '-runas', '%d:%d' % (uid, uid), '-chroot', outside])
    assert proc.returncode == 2
    assert 'is not %s' % settings.chroot_dir(uid) in proc.stderr
    assert not os.path.exists(outside)
    assert not os.path.exists(settings.chroot_base_dir)


def test_non_empty_chroot_is_refused_and_left_alone(env):
    settings = env.settings()
    uid = env.first + 2
    chroot = settings.chroot_dir(uid)
    os.makedirs(chroot)
    with open(os.path.join(chroot, 'planted'), 'w') as handle:
        handle.write('x')
    proc = _run_launcher(env, BASE_ARGS + restriction_args(settings, uid))
    assert proc.returncode == 2
    assert 'is not empty (planted)' in proc.stderr
    assert os.listdir(chroot) == ['planted']


def test_symlinked_chroot_is_refused(env):
    settings = env.settings()
    uid = env.first + 2
    os.makedirs(settings.chroot_base_dir)
    target = os.path.join(env.tmp, 'target')
    os.mkdir(target)
    os.symlink(target, settings.chroot_dir(uid))
    proc = _run_launcher(env, BASE_ARGS + restriction_args(settings, uid))
    assert proc.returncode == 2
    assert 'not a plain directory' in proc.stderr
    assert os.stat(target).st_mode & 0o777 != 0


def test_unsafe_chroot_base_is_refused(env):
    settings = env.settings()
    os.makedirs(settings.chroot_base_dir)
    os.chmod(settings.chroot_base_dir, 0o777)
    uid = env.first + 2
    proc = _run_launcher(env, BASE_ARGS + restriction_args(settings, uid))
    assert proc.returncode == 2
    assert 'writable by group or others' in proc.stderr
    assert os.listdir(settings.chroot_base_dir) == []


def test_install_launcher_writes_a_fast_launcher_and_its_snapshot(
        env, monkeypatch):
    script = os.path.join(env.tmp, 'xen-dm-restrict-launch')
    snapshot = env.environ()[launch_settings.PATH_ENV]
    monkeypatch.setenv(launch_settings.PATH_ENV, snapshot)
    made = subprocess.run(
        hostenv.module('xen_dm_restrict_plugin.cmd.cli')
        + ['install-launcher', script], env=env.environ(),
        capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert os.stat(script).st_mode & 0o7777 == 0o755
    with open(script, 'rb') as handle:
        assert handle.read(4) == b'\x7fELF'  # the compiled front
    assert os.stat(script + '.py').st_mode & 0o7777 == 0o755
    with open(script + '.py') as handle:
        assert handle.readline().rstrip().endswith(' -IS')
    st = os.stat(snapshot)
    assert (st.st_uid, st.st_mode & 0o022) == (0, 0)
    assert launch_settings.load(env.config) is not None

    # Whether or not its service runs (the python and front variants of
    # this test), the front answers: queries pass, unrestricted is refused.
    version = subprocess.run([script, '-version'], env=env.environ(),
                             capture_output=True, text=True, timeout=30)
    assert version.stdout.startswith('QEMU emulator version')
    refused = subprocess.run([script] + BASE_ARGS, env=env.environ(),
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0
    assert 'carries no user and chroot restriction' in refused.stderr

    # A changed configuration makes the snapshot stale: not used.
    env.write_config(device_model_max_processes='77')
    assert launch_settings.load(env.config) is None


def test_install_launcher_refuses_code_others_could_change(
        env, tmp_path, monkeypatch):
    from xen_dm_restrict_plugin.cmd import host
    from xen_dm_restrict_plugin import exception

    # A world-writable directory on the path (sticky or not: anyone can
    # add a module to it), or a missing one anyone could create.
    shared = tmp_path / 'shared'
    shared.mkdir()
    open_dir = tmp_path / 'open'
    open_dir.mkdir()
    open_dir.chmod(0o1777)
    cases = {str(shared): 0o777, str(open_dir / 'missing'): None}
    script = tmp_path / 'launch'
    path = [''] + sys.path[1:]
    for name, value in env.environ().items():
        monkeypatch.setenv(name, value)
    for entry, mode in cases.items():
        if mode is not None:
            os.chmod(entry, mode)
        monkeypatch.setattr('sys.path', path + [entry])
        with pytest.raises(exception.CapabilityMissing) as err:
            host.install_launcher(argparse.Namespace(path=str(script)),
                                  env.settings(), [env.config])
        assert 'import code from %s,' % entry in str(err.value)
        assert not script.exists()
    # Below a sticky directory, a root-only one is fine (the checkout
    # itself may live in /tmp).
    safe = open_dir / 'safe'
    safe.mkdir(mode=0o755)
    monkeypatch.setattr('sys.path', path + [str(safe)])
    with contextlib.redirect_stdout(None):
        host.install_launcher(argparse.Namespace(path=str(script)),
                              env.settings(), [env.config])
    assert script.exists()


@pytest.mark.parametrize('owner, mode', [(65534, 0o644), (0, 0o666)])
def test_a_configuration_others_could_change_is_not_read(env, owner, mode):
    # It names the programs root starts (qemu_binary, the launcher).
    settings = env.settings()
    uid = env.first + 1
    snapshot = env.environ()[launch_settings.PATH_ENV]
    # The front's service read the configuration when it started, and
    # wrote a snapshot of it; a changed file makes that stale, unused.
    before = os.path.exists(snapshot) and os.stat(snapshot).st_mtime_ns
    os.chown(env.config, owner, 0)
    os.chmod(env.config, mode)
    proc = _run_launcher(env, BASE_ARGS + restriction_args(settings, uid))
    assert proc.returncode == 2, proc.stderr
    assert 'configuration file %s: it is %s' % (env.config, (
        'owned by uid 65534, not root' if owner
        else 'writable by others than root (mode 0666)')) in proc.stderr
    assert (os.path.exists(snapshot) and os.stat(snapshot).st_mtime_ns) \
        == before
    assert not os.path.exists(settings.chroot_dir(uid))
    if env.launch is not None:
        # The front's configuration is its service's (libxl clears the
        # environment anyway): $XEN_DM_RESTRICT_CONFIG does not reach it.
        return
    # Named through a symlink, the file it reaches is what counts.
    evil = os.path.join(env.tmp, 'evil.conf')
    link = os.path.join(env.tmp, 'link.conf')
    shutil.copy(env.config, evil)
    os.chown(evil, 65534, 0)
    os.symlink(evil, link)
    environ = dict(env.environ(), XEN_DM_RESTRICT_CONFIG=link)
    proc = subprocess.run(qemuenv.launch_argv(env) + ['-version'], env=environ,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert 'configuration file %s: it is owned by uid 65534' % link in (
        proc.stderr)
    assert (os.path.exists(snapshot) and os.stat(snapshot).st_mtime_ns) \
        == before
    # Root's alone again, it is read (and a snapshot is written).
    os.chown(env.config, 0, 0)
    os.chmod(env.config, 0o644)
    proc = _run_launcher(env, ['-version'])
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(snapshot)
