"""Durable per-VM uid leases, kept in a SQLite database.

Every restricted device model runs as a uid of its own, leased to the
instance from its tenant's range.  The lease must outlive the process that
took it (a compute service restarts while its VMs keep running), must be
safe when several processes allocate at once (the orchestrator, the
console script and the libvirt hook), and must survive a crash or SIGKILL
at any point.  SQLite gives all three: each change is one ``BEGIN
IMMEDIATE`` transaction, and a UNIQUE constraint on the uid is the
backstop against two instances sharing a uid.

Allocation is round robin: a cursor per range, stored with the leases,
moves past each uid handed out, so a just-released uid is the last one to
be leased again.  That widens the time an old QEMU of a uid has to be
reaped before another domain gets the uid.  The next free uid is found by
counting leases over the uid index in doubling, then halving, windows
from the cursor, so its cost does not grow with the size of the range
(tenant ranges may hold a million uids), and a leased run at the cursor
(after the cursor wraps) costs about 2 ms even when a whole host's
32,752 domain ids are leased in a row.
"""

import contextlib
import dataclasses
import grp
import logging
import os
import pwd
import sqlite3
import stat
import string
import threading
import time
import typing

from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin import exception

LOG = logging.getLogger(__name__)

#: stored in ``PRAGMA user_version``; 0 means "no schema yet".
SCHEMA_VERSION = 3
#: Statements that bring a database of the version before to this one.
_UPGRADE = {
    1: ('ALTER TABLE leases ADD COLUMN claims INTEGER NOT NULL DEFAULT 1',),
    2: ('ALTER TABLE cursors ADD COLUMN updated_at REAL NOT NULL '
        'DEFAULT 0',),
}
#: unusable uids skipped in a row before a range counts as exhausted.
MAX_UNUSABLE = 10000

_SCHEMA = (
    'CREATE TABLE leases ('
    ' uuid TEXT PRIMARY KEY NOT NULL,'
    ' tenant TEXT NOT NULL,'
    ' uid INTEGER NOT NULL UNIQUE,'
    ' created_at REAL NOT NULL,'
    # How many boots took the lease; a failed boot that created it gives
    # it back only while no other took it too.
    ' claims INTEGER NOT NULL DEFAULT 1)',
    # One round-robin cursor per range a tenant ever had; a range that is
    # widened, shrunk or moved goes on from the cursor of the range it
    # replaced (the latest one it overlaps).
    'CREATE TABLE cursors ('
    ' first INTEGER NOT NULL,'
    ' last INTEGER NOT NULL,'
    ' next_uid INTEGER NOT NULL,'
    ' updated_at REAL NOT NULL DEFAULT 0,'
    ' PRIMARY KEY (first, last)) WITHOUT ROWID',
    'CREATE TABLE holds ('
    ' uuid TEXT PRIMARY KEY NOT NULL,'
    ' reason TEXT NOT NULL,'
    ' created_at REAL NOT NULL)',
)
_COLUMNS = 'SELECT uuid, tenant, uid, created_at, claims FROM leases '
_COUNT = 'SELECT COUNT(*) FROM leases WHERE uid BETWEEN ? AND ?'

_CORRUPT = ('restore it from a backup, or move it aside and re-record the '
            'leases of the running domains; it was left untouched')
# (words in the sqlite message, what it means, what to do)
_SQLITE_ERRORS = (
    ('not a database', 'is not a lease database, or is corrupted', _CORRUPT),
    ('malformed', 'is corrupted', _CORRUPT),
    ('locked', 'stayed locked by another process for more than %(timeout)g '
     's', 'find the process holding it (fuser %(path)s) or raise '
     'lease_db_timeout'),
    ('busy', 'stayed busy for more than %(timeout)g s',
     'find the process holding it (fuser %(path)s) or raise '
     'lease_db_timeout'),
    ('readonly', 'is read-only',
     'make the file and its directory writable by this process'),
    ('unable to open', 'cannot be opened',
     'check that the file and its directory exist and are writable by '
     'this process'),
    ('full', 'cannot grow: its disk is full',
     'free space on the filesystem holding it'),
    ('i/o error', 'could not be read or written: its disk may be full or '
     'failing', 'check the free space and the kernel log'),
)


@dataclasses.dataclass(frozen=True)
class Lease:
    """One instance's hold on one uid.

    :param uuid: the instance (libvirt domain) uuid, lowercase canonical.
    :param tenant: the tenant owning the instance.
    :param uid: the uid its device model runs as.
    :param created_at: when the lease was taken (``time.time()``).
    :param claims: how many boots (and renders) took it; a failed one
        gives back only its own claim (:meth:`LeaseStore.release_claim`).
    """

    uuid: str
    tenant: str
    uid: int
    created_at: float
    claims: int = dataclasses.field(default=1, compare=False)


def uid_has_no_account(uid: int) -> bool:
    """Tell whether a uid is free for a device model: not root, no account.

    A uid with a passwd entry belongs to a user or a service, whose
    processes the device model could then signal and whose files it could
    read.

    :param uid: the uid to check.
    """
    if uid == 0:
        return False
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


def uid_and_gid_are_free(uid: int) -> bool:
    """Like :func:`uid_has_no_account`, and no group has the gid ``uid``.

    For device models whose gid equals their uid (no
    ``device_model_gid``): a gid of an existing group would give them
    that group's files.
    """
    if not uid_has_no_account(uid):
        return False
    try:
        grp.getgrgid(uid)
    except KeyError:
        return True
    return False


_HEX = frozenset(string.hexdigits.lower())
#: What urllib.parse.quote leaves as it is (with "/", its default).
_URI_SAFE = frozenset(string.ascii_letters + string.digits + '_.-~/')


def _is_canonical(value: str) -> bool:
    """Whether ``value`` is already what ``str(uuid.UUID(value))`` gives."""
    return (len(value) == 36 and value[8] == value[13] == value[18]
            == value[23] == '-' and _HEX.issuperset(value.replace('-', ''))
            and value.count('-') == 4)


def _canonical_uuid(value: str) -> str:
    value = str(value)
    if _is_canonical(value):
        # libvirtd's hook takes this path at every start: uuid (and the
        # platform module it imports) are loaded only for another form.
        return value
    import uuid as uuid_mod

    try:
        return str(uuid_mod.UUID(value))
    except ValueError:
        raise exception.LeaseError(
            'instance uuid %r' % (value,), 'it is not a UUID',
            'pass the instance uuid in its canonical form') from None


def _uri_path(path: str) -> str:
    """``path`` quoted for an SQLite URI (as urllib.parse.quote does)."""
    if _URI_SAFE.issuperset(path):
        return path
    import urllib.parse

    return urllib.parse.quote(path)


class LeaseStore:
    """The lease database, opened (and created if absent) eagerly.

    Every SQLite failure is raised as :class:`LeaseError` naming the
    database, and nothing here ever deletes a lease except
    :meth:`release`.  One store may be shared by threads.

    :param path: the database file; its directory must exist.
    :param timeout: seconds to wait for another process's write lock.
    :raises LeaseError: the directory is missing, or the file cannot be
        opened, is not a lease database, is locked or is read-only.
    """

    def __init__(self, path: str, timeout: float = 10.0,
                 create: bool = True):
        self.path = path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: typing.Optional[sqlite3.Connection] = None
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise exception.LeaseError(
                'lease database %s' % path,
                'its directory %s does not exist' % parent,
                'create %s (mode 0700, owned by the service user) or set '
                'lease_db to a path in an existing directory' % parent)
        self._check_not_planted(path)
        with self._guard():
            if create:
                conn = sqlite3.connect(path, timeout=timeout,
                                       isolation_level=None,
                                       check_same_thread=False)
            else:
                # mode=rw never creates the file.
                conn = sqlite3.connect(
                    'file:%s?mode=rw' % _uri_path(os.path.abspath(path)),
                    timeout=timeout, isolation_level=None,
                    check_same_thread=False, uri=True)
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    @staticmethod
    def _check_not_planted(path: str) -> None:
        """As root, refuse a database that is a symbolic link or a hard
        link: its directory belongs to the service user, and SQLite
        would follow it and write to whatever it names.  (SQLite itself
        refuses a ``-wal`` or ``-shm`` that is a link, and gives the ones
        root creates to the database's owner.)
        """
        if os.geteuid() != 0:
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode) or \
                st.st_nlink != 1:
            LOG.error('lease database %s refused: not a regular file with '
                      'one link', path)
            raise exception.LeaseError(
                'lease database %s' % path,
                'it is a symbolic link, a hard link or not a regular file, '
                'and root does not follow it',
                'set lease_db to the real file (in a directory of its own, '
                'owned by the service user)')

    @classmethod
    def open_existing(cls, path: str, timeout: float = 10.0
                      ) -> typing.Optional['LeaseStore']:
        """Open the database only if it exists; ``None`` (and no file
        created) when it does not.

        For the calls that only read, release or refuse: a missing
        database holds no lease and no hold, and a refusal must leave
        nothing behind.
        """
        if not os.path.exists(path):
            return None
        try:
            return cls(path, timeout, create=False)
        except exception.LeaseError:
            if not os.path.exists(path):
                return None
            raise

    def __enter__(self) -> 'LeaseStore':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the database; closing twice is harmless."""
        with self._lock, self._guard():
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def acquire(self, uuid: str, tenant: str, uid_range: ranges.UidRange,
                is_usable: typing.Callable[[int], bool] = uid_has_no_account
                ) -> Lease:
        """Lease an instance a uid from a range, or return its lease.

        :param uuid: the instance uuid.
        :param tenant: the tenant owning the instance.
        :param uid_range: the range to lease from.
        :param is_usable: tells whether a free uid may be leased; uids
            0, 65534, 65535 and 4294967295 are never leased.
        :raises LeaseError: the instance already holds a lease for another
            tenant or outside the range, or the database failed.
        :raises RangeExhausted: no free, usable uid is left in the range.
        """
        return self.claim(uuid, tenant, uid_range, is_usable)[0]

    def claim(self, uuid: str, tenant: str, uid_range: ranges.UidRange,
              is_usable: typing.Callable[[int], bool] = uid_has_no_account,
              inside: typing.Optional[
                  typing.Callable[[Lease, bool], None]] = None
              ) -> typing.Tuple[Lease, bool]:
        """Like :meth:`acquire`; also tells whether this call created it.

        Taking an existing lease counts the claim, so a concurrent caller
        that created it and then fails cannot give it back: each gives
        back only its own claim (:meth:`release_claim`).

        :param inside: called with the lease and whether it is new
            before the claim is committed; when it raises, the claim is
            rolled back (nothing to give back, even on a full disk) and
            the error passed on.
        :returns: the lease, and True when this call created it.
        """
        uuid = _canonical_uuid(uuid)
        with self._write() as conn:
            lease = self._find(conn, 'WHERE uuid = ?', uuid)
            if lease is not None:
                self._check_kept(lease, tenant, uid_range)
                conn.execute('UPDATE leases SET claims = claims + 1 '
                             'WHERE uuid = ?', (uuid,))
                lease = dataclasses.replace(lease, claims=lease.claims + 1)
                created = False
            else:
                uid = _allocate(conn, tenant, uid_range, is_usable)
                lease = self._add(conn, uuid, tenant, uid)
                following = (uid + 1 if uid < uid_range.last
                             else uid_range.first)
                conn.execute(
                    'INSERT OR REPLACE INTO cursors VALUES (?, ?, ?, ?)',
                    (uid_range.first, uid_range.last, following,
                     time.time()))
                created = True
            if inside is not None:
                inside(lease, created)
        if created:
            LOG.info('leased uid %d to instance %s of tenant %s',
                     lease.uid, uuid, tenant)
        return lease, created

    def release_claim(self, lease: Lease) -> bool:
        """Give back one claim on a lease, taken by :meth:`claim`.

        The lease itself goes only with its last claim: a boot that
        succeeded never gives its claim back, so a failed boot can never
        release the lease of a domain that another boot defined.

        :returns: whether the lease was released (its last claim).
        """
        with self._write() as conn:
            kept = conn.execute(
                'UPDATE leases SET claims = claims - 1 WHERE uuid = ? AND '
                'uid = ? AND claims > 1', (lease.uuid, lease.uid)).rowcount
            gone = 0 if kept else conn.execute(
                'DELETE FROM leases WHERE uuid = ? AND uid = ?',
                (lease.uuid, lease.uid)).rowcount
        if gone:
            LOG.info('gave back uid %d of instance %s of tenant %s: its '
                     'last claim', lease.uid, lease.uuid, lease.tenant)
        elif kept:
            LOG.info('gave back one claim on uid %d of instance %s of '
                     'tenant %s; others keep the lease', lease.uid,
                     lease.uuid, lease.tenant)
        return bool(gone)

    def clamp_future(self, now: typing.Optional[float] = None) -> int:
        """Date leases taken "in the future" (the clock stepped back
        since) to now, so that reconcile's grace period counts from now
        instead of never ending.

        :returns: how many leases were re-dated.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            count = conn.execute(
                'UPDATE leases SET created_at = ? WHERE created_at > ?',
                (now, now)).rowcount
        if count:
            LOG.warning('%d lease(s) were dated in the future (the clock '
                        'stepped back); dated now', count)
        return count

    def insert(self, lease_uuid: str, tenant: str, uid: int) -> Lease:
        """Lease a given uid to an instance, e.g. to re-record a lease.

        Taking the lease the instance already holds returns it.

        :param lease_uuid: the instance uuid.
        :param tenant: the tenant owning the instance.
        :param uid: the uid to lease.
        :raises LeaseError: the uid may never be leased, the uid or the
            instance is leased to someone else, or the database failed.
        """
        lease_uuid = _canonical_uuid(lease_uuid)
        if uid in ranges.FORBIDDEN_UIDS:
            raise exception.LeaseError(
                'uid %d' % uid, 'a device model must never run as it',
                'lease a uid from the tenant range instead')
        with self._write() as conn:
            mine = self._find(conn, 'WHERE uuid = ?', lease_uuid)
            if mine is not None and (mine.uid, mine.tenant) == (uid, tenant):
                return mine
            holder = self._find(conn, 'WHERE uid = ?', uid)
            for held in (mine, holder):
                if held is not None:
                    raise exception.LeaseError(
                        'lease of uid %d to instance %s' % (uid, lease_uuid),
                        'instance %s of tenant %s already holds uid %d'
                        % (held.uuid, held.tenant, held.uid),
                        'release that lease first, after checking no '
                        'domain still runs as its uid')
            lease = self._add(conn, lease_uuid, tenant, uid)
        LOG.info('recorded lease of uid %d to instance %s of tenant %s',
                 uid, lease_uuid, tenant)
        return lease

    def get(self, uuid: str) -> typing.Optional[Lease]:
        """Return the lease of an instance, or ``None``.

        :param uuid: the instance uuid.
        :raises LeaseError: the database failed.
        """
        uuid = _canonical_uuid(uuid)
        with self._read() as conn:
            return self._find(conn, 'WHERE uuid = ?', uuid)

    def get_by_uid(self, uid: int) -> typing.Optional[Lease]:
        """Return the lease holding a uid, or ``None``.

        :param uid: the uid.
        :raises LeaseError: the database failed.
        """
        with self._read() as conn:
            return self._find(conn, 'WHERE uid = ?', uid)

    def release(self, uuid: str) -> typing.Optional[Lease]:
        """Give an instance's uid back.

        Reap the uid's processes first: the uid is leased again later.
        A hold on the instance is lifted with it.

        :param uuid: the instance uuid.
        :returns: the released lease, ``None`` if there was none.
        :raises LeaseError: the database failed.
        """
        uuid = _canonical_uuid(uuid)
        with self._write() as conn:
            lease = self._find(conn, 'WHERE uuid = ?', uuid)
            if lease is None:
                return None
            conn.execute('DELETE FROM leases WHERE uuid = ?', (uuid,))
            # A hold is about the domain's uid; with the lease gone, the
            # next boot leases another one.
            conn.execute('DELETE FROM holds WHERE uuid = ?', (uuid,))
        LOG.info('released uid %d of instance %s of tenant %s',
                 lease.uid, lease.uuid, lease.tenant)
        return lease

    #: Outcomes of :meth:`give_back`.
    GAVE_CLAIM = 'gave back one claim'
    RELEASED = 'released'
    KEPT = 'kept: libvirt still has the domain (or cannot tell)'
    NO_LEASE = 'no lease'
    NOT_ITS_OWN = 'kept: the lease changed meanwhile'
    FOREIGN = 'kept: the lease belongs to another tenant'

    def give_back(self, uuid: str, still_gone: typing.Callable[[], bool],
                  reap: typing.Callable[[int], typing.Any],
                  claim: typing.Optional[Lease] = None,
                  tenant: typing.Optional[str] = None) -> str:
        """Give back an instance's lease (or one ``claim`` on it),
        deciding under the database's write lock.

        In one ``BEGIN IMMEDIATE`` transaction: the lease must still be
        the claimed one (same uid) and belong to ``tenant``; a claim
        among several is only counted down; otherwise ``still_gone()``
        must answer again, here, that libvirt has no domain of the
        instance, then ``reap(uid)`` runs and the lease and its hold go.
        Every start reads the lease under the same lock
        (:meth:`start_state`, the libvirt daemon hook's included), so a
        start from another client either comes before (and
        ``still_gone`` sees the domain) or after (and finds no lease).

        :param claim: the lease one prepare claimed, for giving back
            that claim only; None to release the lease whatever its
            claims (the domain was undefined).
        :param tenant: the tenant the caller acts for; a lease of
            another tenant is kept.
        :returns: one of the outcome constants of this class.
        :raises LeaseError: the database failed.
        :raises DmRestrictError: ``reap`` failed; nothing was released.
        """
        uuid = _canonical_uuid(uuid)
        with self._write() as conn:
            current = self._find(conn, 'WHERE uuid = ?', uuid)
            if current is None:
                if claim is not None:
                    return self.NOT_ITS_OWN
                # No lease; a hold goes with a domain that is gone.
                if conn.execute('SELECT 1 FROM holds WHERE uuid = ?',
                                (uuid,)).fetchone() and still_gone():
                    conn.execute('DELETE FROM holds WHERE uuid = ?',
                                 (uuid,))
                return self.NO_LEASE
            if tenant is not None and current.tenant != tenant:
                return self.FOREIGN
            if claim is not None and current.uid != claim.uid:
                return self.NOT_ITS_OWN
            if claim is not None and current.claims > 1:
                conn.execute('UPDATE leases SET claims = claims - 1 '
                             'WHERE uuid = ?', (uuid,))
                outcome = self.GAVE_CLAIM
            elif not still_gone():
                return self.KEPT
            else:
                reap(current.uid)
                conn.execute('DELETE FROM leases WHERE uuid = ?', (uuid,))
                conn.execute('DELETE FROM holds WHERE uuid = ?', (uuid,))
                outcome = self.RELEASED
        LOG.info('instance %s of tenant %s, uid %d: %s', uuid,
                 current.tenant, current.uid, outcome)
        return outcome

    def unhold_if(self, uuid: str,
                  still_clear: typing.Callable[[typing.List[Lease]], bool]
                  ) -> bool:
        """Lift a hold only if ``still_clear(leases)`` (given every lease,
        read inside the transaction) confirms, under the write lock, that
        its conflict is gone.

        :returns: whether a hold was lifted.
        """
        uuid = _canonical_uuid(uuid)
        with self._write() as conn:
            if not conn.execute('SELECT 1 FROM holds WHERE uuid = ?',
                                (uuid,)).fetchone():
                return False
            every = [Lease(*row) for row in conn.execute(_COLUMNS)]
            if not still_clear(every):
                return False
            conn.execute('DELETE FROM holds WHERE uuid = ?', (uuid,))
        LOG.info('instance %s no longer held: its conflict is gone', uuid)
        return True

    def release_orphan(self, lease: Lease,
                       still_orphan: typing.Callable[[], bool],
                       reap: typing.Callable[[int], typing.Any]) -> bool:
        """Release a lease whose domain is gone, deciding under the
        database's write lock.

        In one ``BEGIN IMMEDIATE`` transaction: the lease must be
        unchanged (same uid, same time), ``still_orphan()`` must confirm
        again that no domain has it (libvirt answered "no such domain"),
        then ``reap(uid)`` runs and the lease and its hold go.  A start
        checks the lease under the same lock (:meth:`start_state`), so a
        domain defined and started meanwhile either is seen by
        ``still_orphan`` or is refused for having no lease.

        :returns: whether it was released.
        :raises LeaseError: the database failed.
        :raises DmRestrictError: ``reap`` failed; nothing was released.
        """
        with self._write() as conn:
            current = self._find(conn, 'WHERE uuid = ?', lease.uuid)
            if current is None or (current.uid, current.created_at) != (
                    lease.uid, lease.created_at):
                return False
            if not still_orphan():
                return False
            reap(lease.uid)
            conn.execute('DELETE FROM leases WHERE uuid = ?', (lease.uuid,))
            conn.execute('DELETE FROM holds WHERE uuid = ?', (lease.uuid,))
        LOG.info('released orphan lease of uid %d of instance %s of tenant '
                 '%s', lease.uid, lease.uuid, lease.tenant)
        return True

    def start_state(self, uuid: str
                    ) -> typing.Tuple[typing.Optional[Lease],
                                      typing.Optional[str]]:
        """The lease and the hold reason of an instance about to start,
        read under the write lock, so no reconcile decision is half done.
        """
        uuid = _canonical_uuid(uuid)
        with self._write() as conn:
            lease = self._find(conn, 'WHERE uuid = ?', uuid)
            row = conn.execute('SELECT reason FROM holds WHERE uuid = ?',
                               (uuid,)).fetchone()
        return lease, (row[0] if row else None)

    def list(self, tenant: typing.Optional[str] = None
             ) -> typing.List[Lease]:
        """Return the leases, of one tenant or of all, ordered by uid.

        :param tenant: only this tenant's leases, if given.
        :raises LeaseError: the database failed.
        """
        with self._read() as conn:
            if tenant is None:
                rows = conn.execute(_COLUMNS + 'ORDER BY uid')
            else:
                rows = conn.execute(
                    _COLUMNS + 'WHERE tenant = ? ORDER BY uid', (tenant,))
            return [Lease(*row) for row in rows]

    def hold(self, uuid: str, reason: str) -> None:
        """Forbid an instance's domain to start until the hold is lifted.

        Reconcile holds domains whose uid is in conflict; the lifecycle
        refuses to start a held domain.

        :param uuid: the instance uuid.
        :param reason: why, shown when a start is refused.
        :raises LeaseError: the database failed.
        """
        uuid = _canonical_uuid(uuid)
        with self._write() as conn:
            conn.execute('INSERT OR REPLACE INTO holds VALUES (?, ?, ?)',
                         (uuid, reason, time.time()))
        LOG.warning('instance %s held: %s', uuid, reason)

    def unhold(self, uuid: str) -> bool:
        """Lift the hold on an instance; False if there was none."""
        uuid = _canonical_uuid(uuid)
        with self._write() as conn:
            done = conn.execute('DELETE FROM holds WHERE uuid = ?',
                                (uuid,)).rowcount > 0
        if done:
            LOG.info('instance %s no longer held', uuid)
        return done

    def holds(self) -> typing.Dict[str, str]:
        """Every held instance uuid and the reason it is held."""
        with self._read() as conn:
            return dict(conn.execute(
                'SELECT uuid, reason FROM holds ORDER BY uuid'))

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # SQLite answers "locked" at once, without waiting, to some of
        # what a new database's first openers do at the same moment
        # (switching to WAL while another is creating the schema): wait
        # for those as for any lock.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self._prepare_once(conn)
            except sqlite3.OperationalError as err:
                text = str(err).lower()
                if ('locked' not in text and 'busy' not in text) or \
                        time.monotonic() >= deadline:
                    raise
                self._rollback(conn)
                time.sleep(0.01)

    def _prepare_once(self, conn: sqlite3.Connection) -> None:
        # Check the file is ours before switching it to WAL, which writes.
        # The version and the table list are read in one transaction: a
        # process creating the schema meanwhile must not make a new
        # database look like someone else's.
        conn.execute('BEGIN')
        try:
            version = self._check_schema(conn)
            conn.execute('COMMIT')
        finally:
            self._rollback(conn)
        mode = conn.execute('PRAGMA journal_mode=WAL').fetchone()[0]
        if mode != 'wal':
            raise exception.LeaseError(
                'lease database %s' % self.path,
                'it cannot use write-ahead logging (journal mode %s)' % mode,
                'put it on a local filesystem')
        if version == SCHEMA_VERSION:
            return
        conn.execute('BEGIN IMMEDIATE')
        try:
            version = self._check_schema(conn)
            if version == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
            else:
                for older in range(version, SCHEMA_VERSION):
                    for statement in _UPGRADE[older]:
                        conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute('PRAGMA user_version = %d' % SCHEMA_VERSION)
            conn.execute('COMMIT')
        finally:
            self._rollback(conn)

    def _check_schema(self, conn: sqlite3.Connection) -> int:
        version = self._version(conn)
        if version not in (0, SCHEMA_VERSION) and version not in _UPGRADE:
            raise exception.LeaseError(
                'lease database %s' % self.path,
                'its schema version %d is not the %d this code knows'
                % (version, SCHEMA_VERSION),
                'run the xen-dm-restrict-plugin release that wrote it')
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        if version == 0 and tables:
            raise exception.LeaseError(
                'lease database %s' % self.path,
                'it holds other tables (%s) and no lease schema'
                % ', '.join(sorted(tables)),
                'set lease_db to a file of its own')
        return version

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        return conn.execute('PRAGMA user_version').fetchone()[0]

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute('ROLLBACK')

    @contextlib.contextmanager
    def _guard(self) -> typing.Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _error(self, exc: sqlite3.Error) -> exception.LeaseError:
        message = str(exc)
        reason, remedy = 'failed', 'check the file, its disk and the log'
        for words, meaning, what_to_do in _SQLITE_ERRORS:
            if words in message.lower():
                reason, remedy = meaning, what_to_do
                break
        values = {'path': self.path, 'timeout': self.timeout}
        return exception.LeaseError(
            'lease database %s' % self.path,
            'it %s (sqlite: %s)' % (reason % values, message),
            remedy % values)

    @contextlib.contextmanager
    def _read(self) -> typing.Iterator[sqlite3.Connection]:
        with self._lock, self._guard():
            yield self._open_connection()

    @contextlib.contextmanager
    def _write(self) -> typing.Iterator[sqlite3.Connection]:
        with self._lock, self._guard():
            conn = self._open_connection()
            conn.execute('BEGIN IMMEDIATE')
            try:
                yield conn
                conn.execute('COMMIT')
            finally:
                self._rollback(conn)

    def _open_connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise exception.LeaseError(
                'lease database %s' % self.path, 'this store is closed',
                'open a new LeaseStore')
        return self._conn

    @staticmethod
    def _find(conn: sqlite3.Connection, where: str,
              value: typing.Union[str, int]) -> typing.Optional[Lease]:
        row = conn.execute(_COLUMNS + where, (value,)).fetchone()
        return Lease(*row) if row else None

    @staticmethod
    def _add(conn: sqlite3.Connection, uuid: str, tenant: str,
             uid: int) -> Lease:
        lease = Lease(uuid, tenant, uid, time.time())
        conn.execute('INSERT INTO leases (uuid, tenant, uid, created_at, '
                     'claims) VALUES (?, ?, ?, ?, ?)',
                     (lease.uuid, lease.tenant, lease.uid, lease.created_at,
                      lease.claims))
        return lease

    @staticmethod
    def _check_kept(lease: Lease, tenant: str,
                    uid_range: ranges.UidRange) -> None:
        if lease.tenant != tenant:
            raise exception.LeaseError(
                'lease of instance %s' % lease.uuid,
                'it is held for tenant %s, not %s' % (lease.tenant, tenant),
                'pass the tenant that owns the instance, or release the '
                'lease after the domain is destroyed')
        if lease.uid not in uid_range:
            raise exception.LeaseError(
                'lease of instance %s' % lease.uuid,
                'its uid %d is outside the range %s now configured for '
                'tenant %s' % (lease.uid, uid_range, tenant),
                'destroy the domain and release the lease so a uid of the '
                'new range is leased, or restore the old range')


def start_blocker(store: typing.Optional[LeaseStore], uuid: str, uid: int,
                  gid_is_uid: bool = True,
                  tenant: typing.Optional[str] = None
                  ) -> typing.Optional[typing.Tuple[str, str]]:
    """Why a domain recording ``uid`` must not start, or None.

    It may start only while ``uid`` is leased to its uuid, reconcile
    holds no conflict against it, and the uid (and, when the gid equals
    the uid, the gid) still belongs to no account: one created inside a
    range after the lease would otherwise be the device model's identity.

    :param gid_is_uid: the device model's gid is its uid (no
        ``device_model_gid``), so a group with that gid blocks too.
    :param tenant: the tenant the domain's record claims; the lease must
        be that tenant's (whose paths the domain may name depends on it).

    :param store: the lease database; ``None`` when it does not exist
        (no lease, so the start is refused).
    :returns: (reason, remedy), or None when it may start.
    :raises LeaseError: the database failed.
    """
    uuid = _canonical_uuid(uuid)
    lease, held = store.start_state(uuid) if store else (None, None)
    if held is not None:
        return ('it is held: %s' % held,
                'resolve the conflict, then run "xen-dm-restrict leases '
                'reconcile --connect xen:///system --apply" or '
                '"xen-dm-restrict leases unhold %s"'
                % uuid)
    if lease is None or lease.uid != uid:
        return ('its recorded uid %d is not leased to it (%s)'
                % (uid, 'no lease' if lease is None else
                   'its lease is uid %d' % lease.uid),
                'define the domain through the dm_restrict hook, which '
                'leases the uid (never copy a record between domains), or '
                'run "xen-dm-restrict leases reconcile --connect '
                'xen:///system --apply"')
    if tenant is not None and lease.tenant != tenant:
        return ('its dm_restrict record claims tenant %r, but its uid %d is '
                'leased to tenant %r (a record edited to reach another '
                'tenant\'s {tenant} paths)' % (tenant, uid, lease.tenant),
                'define the domain again through the dm_restrict hook with '
                'the handle of the tenant that owns it; never edit the '
                'record')
    taken = _account_of(uid, gid_is_uid)
    if taken is not None:
        return ('its uid %d is now %s, whose files and processes the device '
                'model would reach' % (uid, taken),
                'remove that account (ids inside a tenant range must have '
                'none), or destroy the domain and release its lease so it '
                'gets another uid')
    return None


def _account_of(uid: int, gid_is_uid: bool) -> typing.Optional[str]:
    try:
        return 'the uid of user %s' % pwd.getpwuid(uid).pw_name
    except KeyError:
        pass
    if gid_is_uid:
        try:
            return 'the gid of group %s' % grp.getgrgid(uid).gr_name
        except KeyError:
            pass
    return None


def _allocate(conn: sqlite3.Connection, tenant: str,
              uid_range: ranges.UidRange,
              is_usable: typing.Callable[[int], bool]) -> int:
    """Return the free, usable uid the range's cursor points at or after."""
    cursor = _cursor(conn, uid_range)
    skipped = 0
    for start, stop in ((cursor, uid_range.last),
                        (uid_range.first, cursor - 1)):
        uid = _next_free(conn, start, stop)
        while uid is not None:
            if uid not in ranges.FORBIDDEN_UIDS and is_usable(uid):
                return uid
            skipped += 1
            if skipped >= MAX_UNUSABLE:
                raise _exhausted(
                    tenant, uid_range, 'the last %d free uids tried all '
                    'have a passwd account or are otherwise unusable'
                    % MAX_UNUSABLE)
            uid = _next_free(conn, uid + 1, stop)
    raise _exhausted(tenant, uid_range,
                     'every uid in it is leased or unusable')


def _cursor(conn: sqlite3.Connection, uid_range: ranges.UidRange) -> int:
    """Where round robin goes on in ``uid_range``.

    The range's own cursor, or else the cursor of the range it replaced
    (the one that overlaps it and moved last): widening, shrinking or
    moving a range must not hand out a just-released uid first.
    """
    row = conn.execute(
        'SELECT next_uid FROM cursors WHERE first = ? AND last = ?',
        (uid_range.first, uid_range.last)).fetchone()
    if row is None:
        row = conn.execute(
            'SELECT next_uid FROM cursors WHERE first <= ? AND last >= ? '
            'ORDER BY updated_at DESC LIMIT 1',
            (uid_range.last, uid_range.first)).fetchone()
    if row is None or row[0] not in uid_range:
        return uid_range.first
    return row[0]


def _next_free(conn: sqlite3.Connection, start: int,
               stop: int) -> typing.Optional[int]:
    """Return the lowest unleased uid in [start, stop], or ``None``.

    The leased run at ``start`` is measured by counting leases in
    windows that double until one has a free uid, then halve inside it.
    Each count walks only leased uids of the index, so the cost follows
    the run's length (each lease about twice) and never the range size.
    """
    if start > stop:
        return None
    if not _all_leased(conn, start, start):
        return start
    low, step = start + 1, 1            # [start, low) is all leased
    while low <= stop:
        high = min(low + step, stop + 1)
        if not _all_leased(conn, low, high - 1):
            break
        low, step = high, step * 2
    else:
        return None
    while high - low > 1:               # a free uid is in [low, high)
        middle = (low + high) // 2
        if _all_leased(conn, low, middle - 1):
            low = middle
        else:
            high = middle
    return low


def _all_leased(conn: sqlite3.Connection, first: int, last: int) -> bool:
    count = conn.execute(_COUNT, (first, last)).fetchone()[0]
    return count == last - first + 1


def _exhausted(tenant: str, uid_range: ranges.UidRange,
               reason: str) -> exception.RangeExhausted:
    owner = ('tenant %s' % uid_range.owner if uid_range.owner is not None
             else 'the shared pool')
    return exception.RangeExhausted(
        'uid range %s of %s, leasing for tenant %s'
        % (uid_range, owner, tenant),
        reason, 'release leases or widen the range')
