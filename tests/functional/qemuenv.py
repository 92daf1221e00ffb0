"""A real QEMU started through the launcher, as the functional tests need
it: the restriction arguments, QMP on pipes, and what /proc says.

QEMU here is the TCG build (``-machine none``), so the arguments are
those restrict.Restriction generates for the legacy syntax without
``-xen-domid-restrict``, which only a Xen build on a Xen host accepts.
"Restricted and ready" is the reply to ``query-status``: the QMP greeting
comes before QEMU drops its privileges.
"""

import json
import os
import select
import subprocess
import sys
import time

from tests.functional import hostenv
from xen_dm_restrict_plugin.core import restrict

LAUNCH = hostenv.module('xen_dm_restrict_plugin.cmd.launch')
#: The launchers the launcher tests run through.
KINDS = ('python', 'front')


def launch_argv(env) -> list:
    """argv of the launcher ``env`` uses."""
    return list(env.launch or LAUNCH)


def use_front(env) -> subprocess.Popen:
    """Build the compiled front for ``env`` (as install-launcher does,
    falling back to the tree's Python launcher), start the launcher
    service it asks, and make ``env`` launch through the front.

    :returns: the service process; kill it after the test.
    """
    from xen_dm_restrict_plugin.cmd import host

    run = os.path.join(env.tmp, 'run')
    os.makedirs(run, mode=0o755, exist_ok=True)
    fallback = os.path.join(run, 'launch.py')
    with open(fallback, 'w') as handle:
        handle.write('#!%s\nimport sys\nsys.path.insert(0, %r)\n'
                     'from xen_dm_restrict_plugin.cmd.launch import main\n'
                     'sys.exit(main())\n' % (sys.executable, hostenv.ROOT))
    os.chmod(fallback, 0o755)
    front = os.path.join(run, 'launch')
    with open(front, 'wb') as handle:
        handle.write(host.compile_front(fallback))
    os.chmod(front, 0o755)
    environ = env.environ()
    path = environ[host.launch_settings.SOCKET_ENV]
    service = subprocess.Popen(
        hostenv.module('xen_dm_restrict_plugin.cmd.launch_service'),
        env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert service.poll() is None, 'the launcher service exited'
        assert time.monotonic() < deadline, 'the service did not listen'
        time.sleep(0.02)
    env.launch = [front]
    return service


def qemu_pid(pid: int) -> int:
    """The QEMU a launcher ``pid`` started: the launcher itself once it
    exec'd QEMU, else its child (the compiled front stays the parent of
    a QEMU it started straight into a cgroup v2 group).
    """
    deadline = time.monotonic() + 10
    while True:
        if status(pid)['Uid'].split()[0] != '0':
            return pid
        with open('/proc/%d/task/%d/children' % (pid, pid)) as handle:
            children = handle.read().split()
        if children:
            return int(children[0])
        assert time.monotonic() < deadline, 'no QEMU under %d' % pid
        time.sleep(0.01)


BASE_ARGS = ['-machine', 'none', '-nodefaults', '-nographic',
             '-qmp', 'stdio']


def restriction_args(settings, uid: int) -> list:
    args = restrict.Restriction(
        tenant='acme', uid=uid, gid=settings.gid_for(uid),
        chroot=settings.chroot_dir(uid),
        syntax=restrict.DeviceModelSyntax(
            restrict.FORM_LEGACY, restrict.FORM_LEGACY, True)).args()
    args.remove('-xen-domid-restrict')
    return args


class Qmp:
    """QEMU on pipes: QMP on stdin/stdout, stderr to a fresh log file."""

    def __init__(self, env, args, pass_fds=()):
        self.log = os.path.join(env.tmp, 'qemu-%d.log' % time.monotonic_ns())
        with open(self.log, 'w') as log:
            self.proc = subprocess.Popen(
                launch_argv(env) + args, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log, env=env.environ(), pass_fds=pass_fds)

    def read(self, timeout=10.0) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, 'QEMU said nothing for %s s: %s' % (
            timeout, self.log_text())
        line = self.proc.stdout.readline()
        assert line, 'QEMU exited (%s): %s' % (self.proc.wait(),
                                               self.log_text())
        return json.loads(line)

    @classmethod
    def attach(cls, proc: subprocess.Popen, log: str) -> 'Qmp':
        """A Qmp for a QEMU started elsewhere, with its stderr in log."""
        qmp = cls.__new__(cls)
        qmp.proc, qmp.log = proc, log
        return qmp

    @property
    def pid(self) -> int:
        """The QEMU process (not the launcher that stayed its parent)."""
        return qemu_pid(self.proc.pid)

    def command(self, name: str) -> dict:
        return self.command_args(name, None)

    def command_args(self, name: str, arguments) -> dict:
        request = {'execute': name}
        if arguments is not None:
            request['arguments'] = arguments
        self.proc.stdin.write(json.dumps(request).encode() + b'\n')
        self.proc.stdin.flush()
        while True:
            reply = self.read()
            if 'event' not in reply:
                return reply

    def log_text(self) -> str:
        with open(self.log) as handle:
            return handle.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def status(pid: int) -> dict:
    with open('/proc/%d/status' % pid) as handle:
        return dict(line.split(':', 1) for line in handle if ':' in line)


def limits(pid: int) -> dict:
    found = {}
    with open('/proc/%d/limits' % pid) as handle:
        for line in handle.readlines()[1:]:
            words = line[26:].split()
            found[line[:26].strip()] = (words[0], words[1])
    return found


def cgroups(pid: int) -> list:
    """The cgroup paths of pid in the pids and memory hierarchies (v1)
    or the unified one (v2).
    """
    found = []
    with open('/proc/%d/cgroup' % pid) as handle:
        for line in handle:
            _, controllers, path = line.rstrip('\n').split(':', 2)
            if set(controllers.split(',')) & {'pids', 'memory'} or (
                    controllers == '' and not _v1_has_pids()):
                found.append(path)
    assert found, 'QEMU is in no pids or memory cgroup'
    return found


def _v1_has_pids() -> bool:
    with open('/proc/self/cgroup') as handle:
        return any('pids' in line.split(':')[1].split(',')
                   for line in handle)
