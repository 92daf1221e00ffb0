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
import stat
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
        :func:`lock_path` of it, created (owned like the database, or
        its directory) if missing; see :func:`open_lock_file`.
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
        return open_lock_file(self.path, self.lease_db)

    def _error(self, reason: str,
               remedy: str = 'check the file and its directory'
               ) -> exception.LeaseError:
        return exception.LeaseError('instance lock file %s' % self.path,
                                    reason, remedy)


#: Opened never through a symlink, never as a controlling terminal,
#: never blocking (a FIFO planted there).
_OPEN_FLAGS = (os.O_RDWR | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
               | os.O_NONBLOCK)


def open_lock_file(path: str, lease_db: str) -> int:
    """Open (or create) the lock file of a lease database, safely as root.

    The lock file's directory belongs to the service user, who could put
    anything there: a symlink to ``/etc/shadow``, a hard link, a FIFO.
    So the file is never followed through a symlink, must be a regular
    file with one link, owned by this process or by the owner of the
    database (or, before there is one, of its directory) and writable by
    nobody else; a file that is not is refused, never "repaired".  Only
    a file this call just created (``O_EXCL``) is given to the
    database's owner (or the directory's, before there is a database),
    so that a lock file root creates first never locks the service user
    out.

    :returns: the open descriptor.
    :raises LeaseError: naming the file, why, and what to do.
    """
    created = True
    try:
        fd = os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        created = False
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as err:
            raise _refused(path, _open_reason(err),
                           _open_remedy(err, path, lease_db)) from None
    except OSError as err:
        raise _refused(path, 'it cannot be created (%s)' % err.strerror,
                       'make the directory of lease_db writable by this '
                       'process') from None
    try:
        if created:
            _give_to_owner(fd, lease_db)
        else:
            _check_existing(fd, path, lease_db)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _owner(lease_db: str) -> os.stat_result:
    """Who the lock file should belong to: the database's owner, or its
    directory's before there is a database.
    """
    try:
        return os.stat(lease_db)
    except FileNotFoundError:
        return os.stat(os.path.dirname(os.path.abspath(lease_db)))


def _give_to_owner(fd: int, lease_db: str) -> None:
    if os.geteuid() != 0:
        return
    want = _owner(lease_db)
    have = os.fstat(fd)
    if (have.st_uid, have.st_gid) != (want.st_uid, want.st_gid):
        os.fchown(fd, want.st_uid, want.st_gid)
        LOG.info('created lock file %s for uid %d gid %d, the owner of '
                 'the lease database (or of its directory)',
                 lock_path(lease_db), want.st_uid, want.st_gid)


def _check_existing(fd: int, path: str, lease_db: str) -> None:
    have = os.fstat(fd)
    if not stat.S_ISREG(have.st_mode):
        raise _refused(path, 'it is not a regular file',
                       'remove it (nothing else belongs there); it is '
                       'created again when needed')
    if have.st_nlink != 1:
        raise _refused(path, 'it has %d hard links, so it is another file '
                       'too' % have.st_nlink,
                       'remove it; it is created again when needed')
    owners = {os.geteuid(), _owner(lease_db).st_uid}
    if have.st_uid not in owners:
        raise _refused(path, 'it belongs to uid %d, neither this process '
                       'nor the owner of the lease database'
                       % have.st_uid,
                       'chown it to the user that owns the lease database, '
                       'or remove it while no process uses it')
    if have.st_mode & 0o022:
        raise _refused(path, 'its mode %04o lets others write it'
                       % stat.S_IMODE(have.st_mode),
                       'chmod 0600 %s' % path)


def _open_reason(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return 'it is a symbolic link'
    return 'it cannot be opened (%s)' % err.strerror


def _open_remedy(err: OSError, path: str, lease_db: str) -> str:
    if err.errno == errno.ELOOP:
        return 'remove the link; the lock file is created again when needed'
    if err.errno in (errno.EACCES, errno.EPERM):
        return ('chown %s to the user that owns the lease database %s, or '
                'remove it while no process uses it' % (path, lease_db))
    return 'check the file and its directory'


def _refused(path: str, reason: str, remedy: str) -> exception.LeaseError:
    LOG.error('instance lock file %s refused: %s', path, reason)
    return exception.LeaseError('instance lock file %s' % path, reason,
                                remedy)


class NoLock:
    """Stands in for :class:`InstanceLock` where nothing is shared."""

    def __enter__(self) -> 'NoLock':
        return self

    def __exit__(self, *exc_info) -> None:
        pass
