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

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import typing

from bench import common
from xen_dm_restrict_plugin import capabilities
from xen_dm_restrict_plugin import restrict

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
            'unrestricted': common.summary(plain)}
