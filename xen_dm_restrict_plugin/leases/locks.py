"""One lock per instance, shared by every process that starts, defines,
undefines or reconciles it.

A lease may be given back only while no domain of its instance can run,
and that is a fact about libvirt, not about the lease database: between
"libvirt has no such domain" and "release the lease", another process
could define and start the domain.  Every caller that decides on that
fact (the libvirt wrapper's define, start, undefine and clean-up after a
failed boot; reconcile's release of an orphan lease and its re-leasing of
an unleased domain) holds the instance's lock from the look-up to the
change, so those decisions never interleave.

The locks are Linux open file description locks (``F_OFD_SETLK``) on one
byte per instance of one file next to the lease database: they are per
open file, so threads of one process exclude each other too; the kernel
drops them when their holder dies (SIGKILL included), so no lock is ever
stale; and no file is created per instance.  The database file itself is
never locked this way: closing another descriptor of it would drop
SQLite's own POSIX locks.  libvirtd's hook never takes these locks (the
wrapper holds one while libvirt runs the hook).
"""

import errno
import fcntl
import logging
import os
import struct
import time
import typing
import uuid as uuid_mod

from xen_dm_restrict_plugin import exception

LOG = logging.getLogger(__name__)

#: Suffix of the lock file, next to the lease database.
SUFFIX = '.lock'
#: Offset of the first instance's byte: far from anything else.
_BASE = 1 << 32
_SLOTS = 1 << 40
_POLL = 0.005
#: Seconds to wait for another holder: a start may take that long.
DEFAULT_TIMEOUT = 60.0


def lock_path(lease_db: str) -> str:
    """The lock file that goes with a lease database."""
    return lease_db + SUFFIX


def _flock(kind: int, start: int) -> bytes:
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD).
    return struct.pack('hhqqi4x', kind, os.SEEK_SET, start, 1, 0)


class InstanceLock:
    """Hold the lifecycle lock of one instance, as a context manager.

    :param lease_db: the lease database path; the lock file is
        :func:`lock_path` of it, created (owned like the database) if
        missing.
    :param uuid: the instance uuid.
    :param timeout: seconds to wait for another holder.
    :raises LeaseError: the lock file cannot be opened, or another
        process held the lock for longer than ``timeout``.
    """

    def __init__(self, lease_db: str, uuid: str,
                 timeout: float = DEFAULT_TIMEOUT):
        self.path = lock_path(lease_db)
        self.lease_db = lease_db
        self.uuid = str(uuid_mod.UUID(str(uuid)))
        self.timeout = timeout
        self.offset = _BASE + uuid_mod.UUID(self.uuid).int % _SLOTS
        self._fd: typing.Optional[int] = None

    def __enter__(self) -> 'InstanceLock':
        fd = self._open()
        deadline = time.monotonic() + self.timeout
        delay = _POLL
        try:
            while True:
                try:
                    fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                                _flock(fcntl.F_WRLCK, self.offset))
                    break
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES):
                        raise self._error('it cannot be locked (%s)'
                                          % err.strerror) from None
                if time.monotonic() >= deadline:
                    raise self._error(
                        'another process held the lock of instance %s for '
                        'more than %g s' % (self.uuid, self.timeout),
                        'find the process (fuser %s) and let it finish'
                        % self.path)
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)          # drops the lock

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
        except OSError as err:
            raise self._error('it cannot be opened (%s)' % err.strerror,
                              'make the directory of lease_db writable '
                              'by this process') from None
        try:
            _own_like_database(fd, self.lease_db)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _error(self, reason: str,
               remedy: str = 'check the file and its directory'
               ) -> exception.LeaseError:
        return exception.LeaseError('instance lock file %s' % self.path,
                                    reason, remedy)


def _own_like_database(fd: int, lease_db: str) -> None:
    """A lock file root created must stay usable by the service user who
    owns the database.
    """
    if os.geteuid() != 0:
        return
    try:
        want = os.stat(lease_db)
    except FileNotFoundError:
        return
    have = os.fstat(fd)
    if (have.st_uid, have.st_gid) != (want.st_uid, want.st_gid):
        os.fchown(fd, want.st_uid, want.st_gid)


class NoLock:
    """Stands in for :class:`InstanceLock` where nothing is shared."""

    def __enter__(self) -> 'NoLock':
        return self

    def __exit__(self, *exc_info) -> None:
        pass
