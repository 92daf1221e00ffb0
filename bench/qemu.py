"""A real restricted QEMU start, to size the hook's cost against.

What the hook adds to a boot matters relative to what the boot costs
anyway, and the device model's own start is the cheapest part of that.
Here a TCG QEMU (no Xen needed) starts with the arguments the hook
injects less ``-xen-domid-restrict`` (Xen builds only): a uid with no
account, an empty root-owned chroot and the seccomp sandbox.  It counts
as started when it answers ``query-status`` over QMP, which it does only
after dropping its privileges (its greeting comes before).  The first
start of each kind is checked in ``/proc``: uid, chroot and seccomp.
Changing uid and chroot needs root; without it the step is skipped.
"""

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import typing

from bench import common
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin.host import capabilities

BINARY = 'qemu-system-x86_64'
BASE_ARGS = ['-machine', 'none', '-nodefaults', '-nographic',
             '-no-user-config']
START_TIMEOUT = 10.0


def skip_reason(binary: typing.Optional[str]) -> typing.Optional[str]:
    """Why the QEMU step cannot run here, or None."""
    if os.geteuid() != 0:
        return 'not root: QEMU cannot change uid or chroot'
    if binary is None:
        return '%s is not installed' % BINARY
    return None


def free_uid(start: int) -> int:
    """The first uid from ``start`` that has no account."""
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def restriction_args(binary: str, uid: int, chroot: str) -> typing.List[str]:
    """What the hook injects for this QEMU, less -xen-domid-restrict."""
    caps = capabilities.probe(binary)
    syntax = restrict.DeviceModelSyntax(
        restrict.FORM_RUN_WITH if caps.has('run-with-user')
        else restrict.FORM_LEGACY,
        restrict.FORM_RUN_WITH if caps.has('run-with-chroot')
        else restrict.FORM_LEGACY,
        caps.has('sandbox'))
    args = restrict.Restriction('bench', uid, uid, chroot, syntax).args()
    return [arg for arg in args if arg != '-xen-domid-restrict']


def _command(qmp: socket.socket, reader, name: str) -> dict:
    """Run a QMP command; events and (repeated) greetings are skipped."""
    qmp.sendall(json.dumps({'execute': name}).encode() + b'\r\n')
    while True:
        line = reader.readline()
        if not line:
            raise RuntimeError('QEMU closed QMP before answering %s' % name)
        reply = json.loads(line)
        if 'return' in reply:
            return reply['return']
        if 'error' in reply:
            raise RuntimeError('QMP %s failed: %s' % (name, reply))


def _connect(path: str, proc: subprocess.Popen) -> socket.socket:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        qmp = socket.socket(socket.AF_UNIX)
        try:
            qmp.connect(path)
            return qmp
        except (FileNotFoundError, ConnectionRefusedError):
            qmp.close()
        if proc.poll() is not None:
            raise RuntimeError('QEMU exited %d: %s' % (
                proc.returncode, proc.stderr.read().decode(errors='replace')))
        if time.monotonic() > deadline:
            raise RuntimeError('QEMU did not open its QMP socket')
        time.sleep(0.0002)


def start_once(binary: str, extra: typing.List[str], workdir: str,
               check: typing.Optional[typing.Tuple[int, str, bool]] = None
               ) -> float:
    """Start QEMU, wait for its query-status reply, kill it.

    :param check: (uid, chroot, sandbox) to verify in /proc once it
        replied.
    :returns: the seconds from exec to the reply.
    """
    path = os.path.join(workdir, 'qmp.sock')
    _unlink(path)
    argv = [binary] + BASE_ARGS + [
        '-qmp', 'unix:%s,server=on,wait=off' % path] + extra
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        qmp = _connect(path, proc)
        with qmp, qmp.makefile('rb') as reader:
            _command(qmp, reader, 'qmp_capabilities')
            _command(qmp, reader, 'query-status')
            spent = time.perf_counter() - start
            if check is not None:
                verify(proc.pid, *check)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
        _unlink(path)
    return spent


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def verify(pid: int, uid: int, chroot: str, sandbox: bool) -> None:
    """Check in /proc that the started QEMU is really restricted."""
    uids = common.proc_status('Uid', pid).split()
    if set(uids) != {str(uid)}:
        raise RuntimeError('QEMU runs as uids %s, not %d' % (uids, uid))
    if os.readlink('/proc/%d/root' % pid) != chroot:
        raise RuntimeError('QEMU is not chrooted in %s' % chroot)
    if sandbox and common.proc_status('Seccomp', pid) != '2':
        raise RuntimeError('QEMU runs without a seccomp filter')


def _start_fd_monitor(argv: typing.List[str], workdir: str,
                      env: typing.Optional[dict] = None,
                      check: typing.Optional[typing.Callable] = None
                      ) -> float:
    """Start ``argv`` with its QMP monitor on a listening socket handed
    over as a file descriptor, as libxl 4.17 does; time it to the
    query-status reply, check it, kill it.
    """
    path = os.path.join(workdir, 'monitor.sock')
    _unlink(path)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    fd = listener.fileno()
    argv = argv + ['-chardev', 'socket,id=libxl-cmd,fd=%d,server=on,'
                   'wait=off' % fd, '-mon', 'chardev=libxl-cmd,mode=control']
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, pass_fds=(fd,), env=env)
    try:
        qmp = socket.socket(socket.AF_UNIX)
        qmp.settimeout(START_TIMEOUT)
        qmp.connect(path)
        with qmp, qmp.makefile('rb') as reader:
            _command(qmp, reader, 'qmp_capabilities')
            _command(qmp, reader, 'query-status')
            spent = time.perf_counter() - start
            if check is not None:
                check(proc.pid)
    except (OSError, RuntimeError) as err:
        stop(proc)
        raise RuntimeError('%s: %s (%s)' % (argv[0], err, proc.communicate(
            timeout=10)[1].decode(errors='replace'))) from None
    finally:
        listener.close()
        stop(proc)
        proc.stderr.close()
        _unlink(path)
    return spent


def stop(proc: subprocess.Popen) -> None:
    """Stop a device model as libxl's kill_device_model does: SIGHUP
    to the pid it knows.

    Through the compiled front that pid is the front, which passes the
    signal on to QEMU and exits as QEMU did.  SIGKILL would kill the front
    alone and leave QEMU (whose parent-death signal the kernel cleared
    when it changed uid) in its cgroup: then only the reaper's kill by
    uid ends it, and the next start of the uid is rightly refused.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGHUP)
        try:
            proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _launcher_setup(binary: str, scratch: str, uid: int
                    ) -> typing.Tuple[str, dict, typing.List[str]]:
    """A configuration, settings snapshot and fast launcher script in
    ``scratch``; the launcher's environment and the restriction args.
    """
    from xen_dm_restrict_plugin.cmd import host
    from xen_dm_restrict_plugin.launcher import settings as launch_settings

    config = os.path.join(scratch, 'launcher.conf')
    with open(config, 'w') as handle:
        handle.write('[dm_restrict]\n'
                     'tenant_uid_ranges = bench:%d-%d\n'
                     'qemu_binary = %s\n'
                     'chroot_base_dir = %s\n'
                     'device_model_syntax = runas\n'
                     'sandbox = off\n'
                     'cgroup_parent = xdr-bench-%d\n'
                     'launcher_test_mode = true\n'
                     % (uid, uid, binary, os.path.join(scratch, 'chroots'),
                        os.getpid()))
    env = dict(os.environ)
    env[host.CONFIG_ENV] = config
    env[launch_settings.PATH_ENV] = os.path.join(scratch, 'snapshot')
    env[launch_settings.SOCKET_ENV] = os.path.join(scratch, 'launcher.sock')
    os.environ.update(env)
    try:
        settings = host.load_settings([config])
        script = os.path.join(scratch, 'launch')
        with contextlib.redirect_stdout(None):
            host.install_launcher(argparse.Namespace(path=script), settings,
                                  [config])
    finally:
        for name in (host.CONFIG_ENV, launch_settings.PATH_ENV):
            os.environ.pop(name)
    args = restrict.Restriction(
        'bench', uid, uid, settings.chroot_dir(uid), restrict.
        DeviceModelSyntax(restrict.FORM_LEGACY, restrict.FORM_LEGACY,
                          False)).args()
    return script, env, [arg for arg in args
                         if arg != '-xen-domid-restrict']


def qemu_pid(pid: int) -> int:
    """The QEMU the launcher ``pid`` started: itself when it exec'd QEMU,
    else its only child (the compiled front stays the parent of a QEMU
    it started straight into its cgroup v2 group).
    """
    if common.proc_status('Uid', pid).split()[0] != '0':
        return pid
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with open('/proc/%d/task/%d/children' % (pid, pid)) as handle:
            children = handle.read().split()
        if children:
            return int(children[0])
        time.sleep(0.001)
    return pid


def _verify_launched(uid: int) -> typing.Callable[[int], None]:
    def check(pid: int) -> None:
        pid = qemu_pid(pid)
        if common.proc_status('Seccomp', pid) != '2':
            raise RuntimeError('the launcher installed no seccomp filter')
        for ns in ('mnt', 'ipc', 'net'):
            if os.readlink('/proc/%d/ns/%s' % (pid, ns)) == os.readlink(
                    '/proc/self/ns/%s' % ns):
                raise RuntimeError('QEMU shares the %s namespace' % ns)
        with open('/proc/%d/cgroup' % pid) as handle:
            if '/dm-%d' % uid not in handle.read():
                raise RuntimeError('QEMU is not in its cgroup')
        if set(common.proc_status('Uid', pid).split()) != {str(uid)}:
            raise RuntimeError('QEMU does not run as %d' % uid)
    return check


def run_launcher(binary: str, workdir: str, starts: int
                 ) -> typing.Dict[str, typing.Any]:
    """Time device-model starts through the fast launcher (every
    restriction applied) against QEMU started directly with the same
    command line, alternated, medians over ``starts`` each.
    """
    scratch = tempfile.mkdtemp(prefix='launcher-', dir=workdir)
    os.chmod(scratch, 0o755)
    uid = free_uid(common.FIRST_UID + common.TENANTS * common.RANGE_SIZE
                   + 7)
    service = None
    try:
        script, env, restriction = _launcher_setup(binary, scratch, uid)
        args = BASE_ARGS + restriction
        python = script + '.py'
        # The Python launcher alone (the front's fallback), for the record.
        _start_fd_monitor([python] + args, scratch, env,
                          check=_verify_launched(uid))
        fallback = [_start_fd_monitor([python] + args, scratch, env)
                    for _ in range(max(3, starts // 4))]
        from xen_dm_restrict_plugin.launcher import settings as \
            launch_settings

        service = common.start_service(
            'xen_dm_restrict_plugin.cmd.launch_service', env,
            env[launch_settings.SOCKET_ENV])
        _start_fd_monitor([script] + args, scratch, env,
                          check=_verify_launched(uid))
        through, bare = [], []
        for _ in range(starts):
            through.append(_start_fd_monitor([script] + args, scratch, env))
            bare.append(_start_fd_monitor([binary] + args, scratch))
        version = []
        for _ in range(starts):
            version.append(_timed([script, '-version'], env))
            version.append(-_timed([binary, '-version'], None))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        return {'skipped': 'the launcher failed: %s' % err}
    finally:
        if service is not None:
            service.kill()
            service.wait()
        _remove_cgroups('xdr-bench-%d' % os.getpid())
        shutil.rmtree(scratch)
    launched = common.summary(through)
    plain = common.summary(bare)
    queries = common.summary([x for x in version if x > 0])
    query_bare = common.summary([-x for x in version if x < 0])
    from xen_dm_restrict_plugin.launcher import cgroup as dm_cgroup

    python = common.summary(fallback)
    return {'restrictions': 'uid, chroot, mount/IPC/network namespaces, '
                            'cgroup, rlimits incl. NPROC, seccomp filter',
            'cgroup': dm_cgroup.describe(),
            'median_ms': launched['median_ms'],
            'bare_median_ms': plain['median_ms'],
            'ratio_to_bare': launched['median_ms'] / plain['median_ms'],
            'through_launcher': launched, 'bare': plain,
            'python_launcher': dict(python, ratio_to_bare=python[
                'median_ms'] / plain['median_ms']),
            'version_query': {'launcher': queries, 'bare': query_bare,
                              'ratio': queries['median_ms']
                              / query_bare['median_ms']}}


def _timed(argv: typing.List[str], env: typing.Optional[dict]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - start


def _remove_cgroups(parent: str) -> None:
    with open('/proc/self/mounts') as handle:
        mounts = [line.split()[1] for line in handle
                  if line.split()[2] in ('cgroup', 'cgroup2')]
    for mount in mounts:
        top = os.path.join(mount, parent)
        for path, _, _ in sorted(os.walk(top), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(path)


def run(workdir: str, starts: int) -> typing.Dict[str, typing.Any]:
    """Time restricted and unrestricted QEMU starts, alternated."""
    binary = shutil.which(BINARY)
    reason = skip_reason(binary)
    if reason:
        return {'skipped': reason}
    scratch = tempfile.mkdtemp(prefix='qemu-', dir=workdir)
    chroot = os.path.join(scratch, 'qemu-root')
    os.mkdir(chroot, 0o000)
    uid = free_uid(common.FIRST_UID + common.TENANTS * common.RANGE_SIZE)
    from xen_dm_restrict_plugin.launcher import settings as launch_settings

    # The probe keeps its results beside the settings snapshot.
    with common.environ({launch_settings.PATH_ENV: os.path.join(
            scratch, 'settings.marshal')}):
        extra = restriction_args(binary, uid, chroot)
    sandbox = '-sandbox' in extra
    try:
        version = subprocess.run([binary, '-version'], capture_output=True,
                                 text=True, check=True).stdout.split('\n')[0]
        start_once(binary, extra, scratch, check=(uid, chroot, sandbox))
        start_once(binary, [], scratch)
        restricted, plain = [], []
        for _ in range(starts):
            restricted.append(start_once(binary, extra, scratch))
            plain.append(start_once(binary, [], scratch))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        return {'skipped': 'QEMU failed: %s' % err}
    finally:
        shutil.rmtree(scratch)
    return {'binary': binary, 'version': version, 'restriction_args': extra,
            'verified': 'uid, chroot' + ', seccomp' * sandbox,
            'restricted': common.summary(restricted),
            'unrestricted': common.summary(plain),
            'launcher': run_launcher(binary, workdir, starts)}
