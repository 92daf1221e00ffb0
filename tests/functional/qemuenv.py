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
import time

from tests.functional import hostenv
from xen_dm_restrict_plugin.core import restrict

LAUNCH = hostenv.module('xen_dm_restrict_plugin.cmd.launch')
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
                LAUNCH + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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
