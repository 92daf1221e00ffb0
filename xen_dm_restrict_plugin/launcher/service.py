"""The launcher service: the device-model launcher's checks, already loaded.

A Python launcher pays Python's start-up and its imports (the argv rules
compile their regular expressions) at every device-model start: about
twice QEMU's own start.  The compiled front (``front.c`` beside this
module, built by ``xen-dm-restrict install-launcher``) instead asks this
service, a Python process that is already running, to decide: it sends
its exact argv over a root-only ``SOCK_SEQPACKET`` socket, the service
runs :func:`~xen_dm_restrict_plugin.launcher.launch.plan` on it (the
same checks as the Python launcher: the argv rules stay in
``core/libxl_argv.py`` and ``core/dm_argv.py``), creates the chroot, the
cgroup and the tap devices, and answers with the plan in the records
below; the front applies it (namespaces, rlimits, signals, descriptors,
cgroup, seccomp) and execs QEMU.  The syscall filter is compiled here
once per device-model uid and sent as BPF.

The tap descriptors travel with the answer (``SCM_RIGHTS``); the front
puts them at the numbers the rewritten ``-netdev`` values name.

Records: a tag byte, a 32-bit little-endian length, the value; integers
are 32-bit little endian, strings end with a NUL.  ``front.c`` reads
exactly these tags.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import threading

from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import launch

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

T_EXIT = 1
T_MESSAGE = 2
T_ARG = 3
T_KEEP = 4
T_TAP = 5
T_UNSHARE = 6
T_RLIMIT = 7
T_CGROUP2 = 8
T_CGROUP1 = 9
T_SECCOMP = 10
T_SIG_IGN = 11
T_SIG_DFL = 12
T_CLOSE_FDS = 13

MAGIC = b'XDR1'
#: Largest request (an argv) and answer the two sides exchange.
MAX_MESSAGE = 1 << 20
#: The front's exit statuses before the exec (as the Python launcher's).
EXIT_ERROR = 1
EXIT_REFUSED = 2
#: A front that stops answering is dropped after this many seconds.
CLIENT_TIMEOUT = 30.0


def _record(tag: int, value: bytes = b'') -> bytes:
    return struct.pack('<BI', tag, len(value)) + value


def _u32(value: int) -> bytes:
    return struct.pack('<I', value & 0xffffffff)


def _text(value: str) -> bytes:
    data = value.encode('utf-8', 'surrogateescape')
    if b'\0' in data:
        raise ValueError('a NUL byte in %r' % value)
    return data + b'\0'


def refusal(status: int, message: str) -> bytes:
    """An answer that makes the front exit with ``status``."""
    return _record(T_EXIT, _u32(status)) + _record(
        T_MESSAGE, message.encode('utf-8', 'replace'))


def encode(steps: launch.Plan, bpf: typing.Optional[bytes] = None
           ) -> bytes:
    """The answer for a plan (its taps go with it, in order).

    :param bpf: the compiled syscall filter, when the plan loads one.
    """
    out = [_record(T_ARG, _text(steps.binary))]
    out += [_record(T_ARG, _text(arg)) for arg in steps.argv]
    if steps.query:
        return b''.join(out)
    out.append(_record(T_MESSAGE, steps.message.encode(
        'utf-8', 'replace')))
    out += [_record(T_KEEP, _u32(fd)) for fd in sorted(steps.keep_fds)]
    out += [_record(T_TAP, _u32(tap.fd)) for tap in steps.taps]
    out.append(_record(T_UNSHARE, _u32(steps.unshare)))
    out += [_record(T_RLIMIT, _u32(limit) + struct.pack('<Q', value))
            for limit, value in steps.rlimits]
    tag = T_CGROUP2 if steps.cgroup_version == 2 else T_CGROUP1
    out += [_record(tag, _text(path)) for path in steps.cgroups]
    # As launch.isolate: SIGPIPE back to its default, SIGXFSZ ignored.
    out.append(_record(T_SIG_DFL, _u32(signal.SIGPIPE)))
    out.append(_record(T_SIG_IGN, _u32(signal.SIGXFSZ)))
    out.append(_record(T_CLOSE_FDS))
    if steps.seccomp:
        if not bpf:
            raise ValueError('the plan loads a syscall filter, and none '
                             'was compiled')
        out.append(_record(T_SECCOMP, bpf))
    return b''.join(out)


def renumber(steps: launch.Plan, args: typing.Sequence[str]
             ) -> typing.List[int]:
    """Give the taps the descriptor numbers they get in QEMU.

    The service's own numbers mean nothing in the front: the taps go
    just above the descriptors QEMU keeps, and the ``-netdev`` values
    the launcher rewrote (those that differ from ``args``) are changed
    to name them.

    :returns: the taps' descriptors in this process, in order; the
        plan's taps then carry the front's numbers.
    """
    wire = []
    target = max(set(steps.keep_fds) | {2}) + 1
    for tap in steps.taps:
        old = 'fd=%d' % tap.fd
        for index, arg in enumerate(steps.argv):
            if arg != args[index] and arg.endswith(old):
                steps.argv[index] = arg[:-len(old)] + 'fd=%d' % target
        steps.message = steps.message.replace(
            'tap %s as fd %d' % (tap.ifname, tap.fd),
            'tap %s as fd %d' % (tap.ifname, target))
        wire.append(tap.fd)
        tap.fd = target
        target += 1
    return wire


class Service:
    """Answers fronts on one listening socket.

    :param load_settings: returns the launcher's current settings (the
        snapshot, or the configuration when that is stale).
    """

    def __init__(self, load_settings: typing.Callable[[], typing.Any]):
        self.load_settings = load_settings
        self._filters: typing.Dict[typing.Tuple[int, int], bytes] = {}
        self._lock = threading.Lock()

    def _filter(self, uid: int, gid: int) -> bytes:
        from xen_dm_restrict_plugin.launcher import seccomp

        with self._lock:
            if (uid, gid) not in self._filters:
                self._filters[(uid, gid)] = seccomp.export(uid, gid)
            return self._filters[(uid, gid)]

    def answer(self, request: bytes
               ) -> typing.Tuple[bytes, typing.List[int]]:
        """The answer to one request and the descriptors that go with
        it (the caller closes them once the answer is sent).
        """
        if not request.startswith(MAGIC):
            return refusal(EXIT_ERROR, 'error: not a launcher request'), []
        body = request[len(MAGIC):]
        args = [arg.decode('utf-8', 'surrogateescape')
                for arg in body.split(b'\0')[:-1]] if body else []
        steps = None
        try:
            settings = self.load_settings()
            steps = launch.plan(settings, args)
            bpf = None
            if steps.seccomp:
                try:
                    bpf = self._filter(steps.uid, steps.gid)
                except OSError as err:
                    raise exception.CapabilityMissing(
                        'device model seccomp filter', str(err),
                        'install libseccomp2, or set [dm_restrict] '
                        'launcher_seccomp = false') from None
        except Exception as err:  # noqa: BLE001 - answer, never hang
            if steps is not None:
                steps.close()
            if isinstance(err, exception.Refused):
                return refusal(EXIT_REFUSED, 'refused: %s' % err), []
            if isinstance(err, exception.DmRestrictError):
                return refusal(EXIT_ERROR, 'error: %s' % err), []
            return refusal(EXIT_ERROR, 'error: %s: %s' % (
                type(err).__name__, err)), []
        wire = renumber(steps, args)
        try:
            return encode(steps, bpf), wire
        except BaseException:
            for fd in wire:
                os.close(fd)
            raise

    def handle(self, conn: socket.socket) -> None:
        """Serve one front: one request, one answer."""
        wire: typing.List[int] = []
        try:
            conn.settimeout(CLIENT_TIMEOUT)
            uid = struct.unpack('3i', conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED,
                struct.calcsize('3i')))[1]
            if uid != 0:
                conn.sendall(refusal(EXIT_ERROR, 'error: the launcher '
                                     'service answers root only'))
                return
            data, wire = self.answer(conn.recv(MAX_MESSAGE))
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                          struct.pack('%di' % len(wire), *wire))] \
                if wire else []
            conn.sendmsg([data], ancillary)
        except OSError:
            pass  # the front gave up; it reports its own error
        finally:
            for fd in wire:
                os.close(fd)
            conn.close()

    def serve(self, listener: socket.socket) -> None:
        """Answer fronts until the process is stopped, each in a thread
        of its own (a slow front never holds up another start).
        """
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self.handle, args=(conn,),
                             daemon=True).start()


def listen(path: str) -> socket.socket:
    """A root-only listening socket at ``path`` (replacing a stale one).

    :raises OSError: it cannot be created, or its directory is not
        root's alone (someone else could put a socket of theirs there,
        and a client's connect would wait on it).
    """
    directory = os.path.dirname(path) or '.'
    os.makedirs(directory, mode=0o755, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise OSError(errno.EPERM, 'the socket directory %s is not root\'s '
                      'alone (owner uid %d, mode %04o)' % (
                          directory, st.st_uid, st.st_mode & 0o7777))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock
