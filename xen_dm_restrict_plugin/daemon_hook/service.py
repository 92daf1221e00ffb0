"""The hook service: libvirtd's hook with its modules already imported.

libvirtd waits for its hook at every operation of every domain. A Python
hook pays the interpreter's start and its imports (lxml, the policy, the
lease store) at every call: about 90 ms of a ``prepare begin`` whose
work is a few milliseconds. The compiled client (``client.c`` beside
this module, built by ``xen-dm-restrict install-hook``) instead hands
the call to this service over a root-only ``SOCK_SEQPACKET`` socket.

The service keeps a few **workers** ready: Python processes it started
(a fresh ``exec`` each, so each has its own address-space layout, stack
canary and hash seeds: one tenant's call never probes a layout another
call shares) that imported the hook's modules and wait for one call. For
each connection from root the service hands the connection to an idle
worker (``SCM_RIGHTS``), says so to the client (``XDHA``), and starts a
replacement. The worker receives the client's argv, environment, umask,
nice value, resource limits, working directory and standard descriptors,
becomes the hook process the Python hook would have been, runs the same
code (:func:`xen_dm_restrict_plugin.cmd.libvirt_hook.main`), answers
with its exit status and exits. No state of one call reaches the next,
and a crash ends only that call (the client then reports the missing
answer and fails).

Versions: the client sends its build id (the operations it hands on and
its own source, :func:`build_id`); a worker refuses a call from a client
built otherwise, with the remedy (run ``install-hook`` again). A worker
whose package changed on disk since it imported it (an upgrade) answers
``XDHS`` before it reads anything, so the client runs the Python hook
(the new code) instead, and exits with :data:`EXIT_STALE`, on which the
service exits too, to be restarted by its init system with the new code.

Request: ``XDH2``, the build id (32 hexadecimal digits), then as 32-bit
little-endian integers the umask, the nice value, the number of resource
limits and that many (soft, hard) 64-bit pairs, the argument count, then
the arguments and the environment entries, each ending with a NUL; the
descriptors 0, 1, 2 and the working directory ride along. Answer:
``XDH2`` and the exit status (32-bit), or ``XDHS``. ``client.c`` writes
and reads exactly these.
"""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import os
import socket
import struct
import subprocess
import sys
import time
import traceback
import typing

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.daemon_hook import operations

Main = typing.Callable[[typing.List[str]], int]

LOG = logging.getLogger(__name__)

MAGIC = b'XDH2'
#: The service's word to the client: a worker holds the connection.
ACCEPTED = b'XDHA'
#: A worker's answer when its code changed on disk: run the Python hook.
STALE = b'XDHS'
BUILD_ID_BYTES = 32
#: Where the service listens and the client asks.
DEFAULT_SOCKET = constants.HOOK_SOCKET
#: Environment variable naming another socket (tests, the benchmark).
SOCKET_ENV = constants.HOOK_SOCKET_ENV
#: Largest request: the client's argv and environment.
MAX_REQUEST = 1 << 20
#: A client that sends nothing is dropped after this many seconds.
CLIENT_TIMEOUT = 30.0
#: Workers kept ready.
WORKERS = 2
#: Seconds without a call before spent workers are replaced, while a
#: spare is left: libvirtd's calls of one start (``prepare begin``, then
#: ``started begin`` once the device model runs) come seconds apart,
#: and a replacement's start would take CPU from the domain's.
REFILL_AFTER = 2.0
#: A worker's exit status when its package changed on disk.
EXIT_STALE = 75
#: What a call of the hook imports: loaded by each worker before its call.
PRELOAD = (
    'xen_dm_restrict_plugin.cmd.libvirt_hook',
    'xen_dm_restrict_plugin.cmd.common',
    'xen_dm_restrict_plugin.daemon_hook.hook',
    'xen_dm_restrict_plugin.console.relay',
    'xen_dm_restrict_plugin.host.capabilities',
    'xen_dm_restrict_plugin.host.ovsdb',
    'xen_dm_restrict_plugin.host.reaper',
    'xen_dm_restrict_plugin.launcher.cgroup',
    'xen_dm_restrict_plugin.leases.store',
    'xen_dm_restrict_plugin.storage.daemon',
    'xen_dm_restrict_plugin.storage.nbd',
    'xen_dm_restrict_plugin.storage.service',
    'argparse', 'dataclasses', 'json', 'shutil', 'subprocess', 'uuid',
    'urllib.parse',
)
PROG = 'xen-dm-restrict-libvirt-hook'
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT_SOURCE = os.path.join(PACKAGE_DIR, 'daemon_hook', 'client.c')
RLIM_INFINITY = (1 << 64) - 1


class BadRequest(ValueError):
    """A request the service cannot act on."""


def socket_path() -> str:
    """The hook service's socket this process uses."""
    return constants.hook_socket()


def build_id(acted: typing.Sequence[typing.Tuple[str, str]]) -> bytes:
    """What a compiled client and the service must agree on: the
    operations the client hands on (and when: operations.only_with), and
    the client's source (its protocol).
    """
    digest = hashlib.sha256()
    digest.update(repr([' '.join(op) for op in acted]).encode())
    digest.update(repr(operations.only_with(acted)).encode())
    with open(CLIENT_SOURCE, 'rb') as handle:
        digest.update(handle.read())
    return digest.hexdigest()[:BUILD_ID_BYTES].encode()


def code_fingerprint() -> bytes:
    """The package's modules on disk, as far as an upgrade changes them."""
    digest = hashlib.sha256()
    for top, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        for name in sorted(files):
            if name.endswith(('.py', '.c')):
                st = os.stat(os.path.join(top, name))
                digest.update(('%s %d %d %d\n' % (
                    os.path.join(top, name), st.st_ino, st.st_size,
                    st.st_mtime_ns)).encode())
    return digest.digest()


def preload() -> None:
    """Import everything a call of the hook imports."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


class Call(typing.NamedTuple):
    """One client's call, as its request describes it."""

    build: bytes
    umask: int
    nice: int
    limits: typing.List[typing.Tuple[int, int]]
    args: typing.List[str]
    environ: typing.Dict[bytes, bytes]


def parse(data: bytes) -> Call:
    """A request's build id, process attributes, arguments and
    environment.

    :raises BadRequest: it is not a request of this protocol.
    """
    head = len(MAGIC) + BUILD_ID_BYTES
    if not data.startswith(MAGIC) or len(data) < head + 12 \
            or not data.endswith(b'\0'):
        raise BadRequest('not a hook request')
    build = data[len(MAGIC):head]
    mask, nice, count = struct.unpack_from('<IiI', data, head)
    offset = head + 12
    if count > 64 or len(data) < offset + 16 * count + 4:
        raise BadRequest('a hook request with %d resource limits' % count)
    limits = [struct.unpack_from('<QQ', data, offset + 16 * n)
              for n in range(count)]
    offset += 16 * count
    argc, = struct.unpack_from('<I', data, offset)
    items = data[offset + 4:-1].split(b'\0')
    if mask > 0o777 or argc > len(items) or argc < 3:
        raise BadRequest('a hook request with %d arguments of %d items '
                         'and umask %o' % (argc, len(items), mask))
    args = [item.decode('utf-8', 'surrogateescape')
            for item in items[:argc]]
    environ: typing.Dict[bytes, bytes] = {}
    for entry in items[argc:]:
        name, equals, value = entry.partition(b'=')
        if name and equals:
            # As the C library's getenv and Python's os.environ: the
            # first entry of a name counts.
            environ.setdefault(name, value)
    return Call(build, mask, nice, limits, args, environ)


def _peer_uid(conn: socket.socket) -> int:
    return struct.unpack('3i', conn.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize('3i')))[1]


def _descriptors(ancillary) -> typing.List[int]:
    fds: typing.List[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(struct.unpack('%di' % (usable // 4),
                                     payload[:usable]))
    return fds


def _receive(conn: socket.socket
             ) -> typing.Tuple[bytes, typing.List[int]]:
    conn.settimeout(CLIENT_TIMEOUT)
    data, ancillary, flags, _ = conn.recvmsg(
        MAX_REQUEST, socket.CMSG_SPACE(4 * 4))
    fds = _descriptors(ancillary)
    if not data and not fds:
        raise EOFError('the client sent nothing')
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 4:
        for fd in fds:
            os.close(fd)
        raise BadRequest('a hook request without exactly four '
                         'descriptors')
    return data, fds


def _limit(value: int) -> int:
    import resource

    return resource.RLIM_INFINITY if value == RLIM_INFINITY else value


def _become(fds: typing.List[int], call: Call) -> None:
    """Make this process the hook process of the client's call."""
    import resource

    for number, fd in enumerate(fds[:3]):
        os.dup2(fd, number)
    os.fchdir(fds[3])
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.umask(call.umask)
    for which, (soft, hard) in enumerate(call.limits):
        try:
            resource.setrlimit(which, (_limit(soft), _limit(hard)))
        except (ValueError, OSError) as err:
            LOG.warning('resource limit %d of the call not applied: %s',
                        which, err)
    os.setpriority(os.PRIO_PROCESS, 0, call.nice)
    os.environb.clear()
    os.environb.update(call.environ)
    sys.stdin = io.TextIOWrapper(open(0, 'rb', closefd=False))
    sys.stdout = io.TextIOWrapper(open(1, 'wb', closefd=False),
                                  line_buffering=True)
    sys.stderr = io.TextIOWrapper(open(2, 'wb', closefd=False),
                                  errors='backslashreplace',
                                  line_buffering=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    sys.argv = [PROG] + call.args


def _run(main: Main, args: typing.List[str]) -> int:
    try:
        status = main(args)
    except SystemExit as stop:  # argparse's usage errors and --help
        code = stop.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code
        else:
            print(code, file=sys.stderr)
            status = 1
    except BaseException:  # noqa: BLE001 - answer, never hang libvirtd
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return status if 0 <= status <= 255 else 1


def call(conn: socket.socket, main: Main, expected_build: bytes,
         fingerprint: bytes) -> int:
    """Run one client's call of the hook in this worker and answer.

    :returns: the worker's exit status (:data:`EXIT_STALE` when its
        package changed on disk).
    """
    if code_fingerprint() != fingerprint:
        conn.sendall(STALE)
        # Read (and drop) the request: a socket closed on unread data
        # resets the client's connection before it reads the answer.
        try:
            for fd in _receive(conn)[1]:
                os.close(fd)
        except (OSError, EOFError, BadRequest):
            pass
        return EXIT_STALE
    try:
        data, fds = _receive(conn)
    except EOFError:
        return 0  # a probe (preflight), or a client that gave up
    except (OSError, BadRequest) as err:
        LOG.warning('hook request dropped: %s', err)
        return 0
    try:
        request = parse(data)
    except BadRequest as err:
        os.write(fds[2], ('%s: error: %s\n' % (PROG, err)).encode())
        for fd in fds:
            os.close(fd)
        conn.sendall(MAGIC + struct.pack('<I', 1))
        return 0
    if request.build != expected_build:
        os.write(fds[2], (
            '%s: error: the compiled hook is not the one this package '
            'builds (it hands on other operations or speaks another '
            'protocol): run xen-dm-restrict install-hook again\n'
            % PROG).encode())
        for fd in fds:
            os.close(fd)
        conn.sendall(MAGIC + struct.pack('<I', 1))
        return 0
    _become(fds, request)
    status = _run(main, request.args)
    _release_stdio()
    conn.sendall(MAGIC + struct.pack('<I', status))
    return 0


def _release_stdio() -> None:
    """Give libvirtd's pipes back: it reads the hook's output until every
    copy of them is closed, so they must not wait for this process to
    exit.
    """
    null = os.open(os.devnull, os.O_RDWR)
    for number in range(3):
        os.dup2(null, number)
    os.close(null)


def work(control_fd: int, main: Main) -> int:
    """A worker: import the hook, wait for one connection on
    ``control_fd``, serve it.

    :returns: the worker's exit status.
    """
    # Before the imports: a package replaced while they run makes the
    # worker stale, not a mix of old and new code.
    fingerprint = code_fingerprint()
    preload()
    expected = build_id(operations.ACTED_ON)
    with socket.socket(fileno=control_fd) as control:
        _, ancillary, _, _ = control.recvmsg(1, socket.CMSG_SPACE(4))
    fds = _descriptors(ancillary)
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return 0  # the service stopped
    with socket.socket(fileno=fds[0]) as conn:
        return call(conn, main, expected, fingerprint)


def worker_entry(control_fd: int, target: str) -> int:
    """Where a worker process starts: ``target`` (``module:function``)
    is the hook's console-script main it runs the call with.
    """
    import importlib

    logging.basicConfig(level=logging.INFO,
                        format=PROG + ': %(levelname)s %(name)s: %(message)s')
    module, _, name = target.partition(':')
    status = work(control_fd, getattr(importlib.import_module(module), name))
    # Nothing of the interpreter's teardown is needed: the answer is sent,
    # and the caller's descriptors are given back.
    os._exit(status)


WORKER_PROGRAM = """import sys
sys.path[:] = %r
from xen_dm_restrict_plugin.daemon_hook import service
sys.exit(service.worker_entry(%d, %r))"""
#: The hook's console-script main, which workers run.
HOOK_MAIN = 'xen_dm_restrict_plugin.cmd.libvirt_hook:main'


#: CAP_SYS_NICE's bit in /proc/PID/status's CapEff.
CAP_SYS_NICE = 23


def _can_leave_idle() -> bool:
    """Whether this process may move a task out of ``SCHED_IDLE`` again
    (CAP_SYS_NICE): anyone may put a task under it, but without the
    capability (a unit with a reduced bounding set, a container) the way
    back fails, and a spare would run its call, and the storage daemon
    or console relay it starts, at idle priority.
    """
    try:
        with open('/proc/self/status') as handle:
            for line in handle:
                if line.startswith('CapEff:'):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_NICE
                                & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _schedule(pid: int, policy: int) -> bool:
    """Put process ``pid`` under the scheduling ``policy`` (priority 0).

    :returns: whether it is.
    """
    try:
        os.sched_setscheduler(pid, policy, os.sched_param(0))
    except OSError as err:
        LOG.warning('scheduling policy %d of hook worker %d not set: %s',
                    policy, pid, err)
        return False
    return True


class Worker:
    """A worker process and the service's end of its control socket.

    :param spare: started ahead of any call.  A spare worker starts and
        imports under ``SCHED_IDLE``, on CPU time nothing else wants: it
        is started right after a call, while libvirtd is still building
        the domain and starting its device model, which must not wait
        for it.  It is put back under the normal policy when it is given
        a call (then it takes the caller's nice value).
    """

    def __init__(self, target: str, spare: bool = True):
        ours, theirs = socket.socketpair(socket.AF_UNIX,
                                         socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, '-I', '-S', '-c', WORKER_PROGRAM % (
                    sys.path, theirs.fileno(), target)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.control = ours
        self.idle_policy = spare and _schedule(self.proc.pid,
                                               os.SCHED_IDLE)

    def hand(self, conn: socket.socket) -> bool:
        """Give the worker ``conn``; False when it is gone, or cannot
        leave ``SCHED_IDLE`` (then it is killed).
        """
        if self.idle_policy and not _schedule(self.proc.pid,
                                              os.SCHED_OTHER):
            self.control.close()
            self.proc.kill()
            return False
        try:
            self.control.sendmsg([b'c'], [(
                socket.SOL_SOCKET, socket.SCM_RIGHTS,
                struct.pack('i', conn.fileno()))])
        except OSError:
            return False
        finally:
            self.control.close()
        return True


class Service:
    """Accepts root's clients and hands each to a fresh worker.

    :param target: the ``module:function`` workers run each call with.
    """

    def __init__(self, workers: int = WORKERS, target: str = HOOK_MAIN,
                 refill_after: float = REFILL_AFTER):
        self.size = max(1, workers)
        self.target = target
        self.refill_after = refill_after
        self.last_call = 0.0
        #: Spares start under SCHED_IDLE only where they can leave it.
        self.idle_spares = _can_leave_idle()
        self.idle: typing.Deque[Worker] = collections.deque()
        self.busy: typing.List[subprocess.Popen] = []
        self.stale = False

    def fill(self) -> None:
        while len(self.idle) < self.size:
            self.idle.append(Worker(self.target, spare=self.idle_spares))

    def reap(self) -> None:
        for proc in list(self.busy):
            status = proc.poll()
            if status is None:
                continue
            self.busy.remove(proc)
            if status == EXIT_STALE:
                self.stale = True
            elif status != 0:
                LOG.warning('hook worker %d ended with status %d',
                            proc.pid, status)

    def handle(self, conn: socket.socket) -> None:
        """Serve one connection: root's only."""
        uid = _peer_uid(conn)
        if uid != 0:
            LOG.warning('hook connection from uid %d refused: the hook '
                        'service answers root only', uid)
            return
        try:
            # First, so that it comes before anything the worker says.
            conn.send(ACCEPTED)
        except OSError:
            return  # the client gave up
        while True:
            if not self.idle:
                self.idle.append(Worker(self.target, spare=False))
            worker = self.idle.popleft()
            if worker.hand(conn):
                self.busy.append(worker.proc)
                return
            worker.proc.wait()

    def stop(self) -> None:
        """End the spare workers (they have served no one): at once,
        since one still importing under ``SCHED_IDLE`` on a busy host
        would take long to notice.
        """
        while self.idle:
            worker = self.idle.popleft()
            worker.control.close()
            worker.proc.kill()
            worker.proc.wait()

    def serve(self, listener: socket.socket) -> int:
        """Answer clients until the package changes on disk.

        :returns: :data:`EXIT_STALE`, for the init system to restart it.
        """
        self.fill()
        try:
            while not self.stale:
                # While calls run, replacements wait: a worker's start
                # (an interpreter and its imports) would take CPU from
                # the calls libvirtd waits for.
                listener.settimeout(0.05 if self.busy else 1.0)
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    conn = None
                if conn is not None:
                    self.last_call = time.monotonic()
                    with conn:
                        try:
                            self.handle(conn)
                        except OSError as err:
                            LOG.warning('hook call not served: %s', err)
                self.reap()
                if not self.busy and (not self.idle or time.monotonic()
                                      - self.last_call >= self.refill_after):
                    self.fill()
        finally:
            # Clients then run the Python hook at once, rather than wait
            # for a service that no longer takes calls.
            listener.close()
            self.stop()
        LOG.warning('the plugin changed on disk: the hook service exits '
                    'to be restarted with the new code')
        return EXIT_STALE
