"""The hook service: libvirtd's hook with its modules already imported.

libvirtd waits for its hook at every operation of every domain.  A
Python hook pays the interpreter's start and its imports (lxml, the
policy, the lease store) at every call: about 90 ms of a ``prepare
begin`` whose work is a few milliseconds.  The compiled client
(``client.c`` beside this module, built by ``xen-dm-restrict
install-hook``) instead hands the call to this service, a process that
has imported all of it once: it sends its argv, environment and umask
over a root-only ``SOCK_SEQPACKET`` socket with its standard descriptors
(``SCM_RIGHTS``).  For each call the service forks twice (the
grandchild is reparented, so nothing of the call stays the service's
child) and the grandchild becomes the hook process the Python hook
would have been: libvirtd's pipes as its standard descriptors,
libvirtd's environment and umask, and the same code
(:func:`xen_dm_restrict_plugin.cmd.libvirt_hook.main`, handed to
:func:`serve`).  It answers with
the hook's exit status and exits.  Every call is a fresh process: no
state of one call reaches the next, and a crash ends only that call
(the client then reports the missing answer and fails).

Request: ``XDH1``, the umask and the argument count as 32-bit little
endian, then the arguments and the environment entries, each ending
with a NUL.  Answer: ``XDH1`` and the exit status (32-bit little
endian).  ``client.c`` writes and reads exactly these.

The settings are read at every call (the snapshot, compared with the
configuration file), so a changed configuration applies to the next
call; changed code (an upgrade) applies once the service is restarted.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import struct
import sys
import traceback

from xen_dm_restrict_plugin.core import constants

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

    Main = typing.Callable[[typing.List[str]], int]

LOG = logging.getLogger(__name__)

MAGIC = b'XDH1'
#: Where the service listens and the client asks.
DEFAULT_SOCKET = constants.HOOK_SOCKET
#: Environment variable naming another socket (tests, the benchmark).
SOCKET_ENV = constants.HOOK_SOCKET_ENV
#: Largest request: the client's argv and environment.
MAX_REQUEST = 1 << 20
#: A client that sends nothing is dropped after this many seconds.
CLIENT_TIMEOUT = 30.0
#: What a call of the hook imports: loaded once, before any fork.
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


class BadRequest(ValueError):
    """A request the service cannot act on."""


def socket_path() -> str:
    """The hook service's socket this process uses."""
    return constants.hook_socket()


def preload() -> None:
    """Import everything a call of the hook imports."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


def parse(data: bytes) -> typing.Tuple[int, typing.List[str],
                                       typing.Dict[bytes, bytes]]:
    """A request's umask, arguments and environment.

    :raises BadRequest: it is not a request of this protocol.
    """
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8 \
            or not data.endswith(b'\0'):
        raise BadRequest('not a hook request')
    mask, count = struct.unpack_from('<II', data, len(MAGIC))
    items = data[len(MAGIC) + 8:-1].split(b'\0')
    if mask > 0o777 or count > len(items) or count < 3:
        raise BadRequest('a hook request with %d arguments of %d items '
                         'and umask %o' % (count, len(items), mask))
    args = [item.decode('utf-8', 'surrogateescape')
            for item in items[:count]]
    environ = {}
    for entry in items[count:]:
        name, equals, value = entry.partition(b'=')
        if name and equals:
            environ[name] = value
    return mask, args, environ


def _peer_uid(conn: socket.socket) -> int:
    return struct.unpack('3i', conn.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize('3i')))[1]


def _receive(conn: socket.socket
             ) -> typing.Tuple[bytes, typing.List[int]]:
    conn.settimeout(CLIENT_TIMEOUT)
    data, ancillary, flags, _ = conn.recvmsg(
        MAX_REQUEST, socket.CMSG_SPACE(3 * 4))
    fds: typing.List[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(struct.unpack('%di' % (usable // 4),
                                     payload[:usable]))
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise BadRequest('a hook request without exactly three '
                         'descriptors')
    return data, fds


def _become(fds: typing.List[int], mask: int,
            environ: typing.Dict[bytes, bytes], args: typing.List[str]
            ) -> None:
    """Make this process the hook process of the client's call."""
    for number, fd in enumerate(fds):
        os.dup2(fd, number)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.umask(mask)
    os.environb.clear()
    os.environb.update(environ)
    sys.stdin = io.TextIOWrapper(open(0, 'rb', closefd=False))
    sys.stdout = io.TextIOWrapper(open(1, 'wb', closefd=False),
                                  line_buffering=True)
    sys.stderr = io.TextIOWrapper(open(2, 'wb', closefd=False),
                                  errors='backslashreplace',
                                  line_buffering=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    sys.argv = [PROG] + args


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


def call(conn: socket.socket, main: Main) -> None:
    """Run one client's call of the hook in this (forked) process and
    answer with its exit status; an unusable request gets no answer.
    """
    try:
        data, fds = _receive(conn)
    except (OSError, BadRequest) as err:
        LOG.warning('hook request dropped: %s', err)
        return
    try:
        mask, args, environ = parse(data)
    except BadRequest as err:
        os.write(fds[2], ('%s: error: %s\n' % (PROG, err)).encode())
        for fd in fds:
            os.close(fd)
        conn.sendall(MAGIC + struct.pack('<I', 1))
        return
    _become(fds, mask, environ, args)
    status = _run(main, args)
    conn.sendall(MAGIC + struct.pack('<I', status))


def standard_descriptors() -> None:
    """Open /dev/null on a missing 0, 1 or 2: a socket must never get
    one of those numbers, which each call overwrites.
    """
    for number in range(3):
        try:
            os.fstat(number)
        except OSError:
            fd = os.open(os.devnull, os.O_RDWR)
            if fd != number:
                os.dup2(fd, number)
                os.close(fd)


def handle(listener: socket.socket, conn: socket.socket, main: Main
           ) -> None:
    """Serve one connection: root's only, in a grandchild."""
    if _peer_uid(conn) != 0:
        LOG.warning('hook request from uid %d refused: the hook service '
                    'answers root only', _peer_uid(conn))
        return
    pid = os.fork()
    if pid == 0:
        try:
            listener.close()
            if os.fork() == 0:
                try:
                    call(conn, main)
                finally:
                    os._exit(0)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def serve(listener: socket.socket, main: Main) -> None:
    """Answer clients until the process is stopped, each call by
    ``main(argv)`` (the hook's console script) in a process of its own
    (call
    :func:`standard_descriptors` before the listening socket is made).
    """
    while True:
        conn, _ = listener.accept()
        try:
            handle(listener, conn, main)
        except OSError as err:
            LOG.warning('hook request not served: %s', err)
        finally:
            conn.close()
