"""Tests of the uid lease store, on real SQLite files."""

import logging
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import hypothesis
from hypothesis import strategies as st
import pytest

from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.leases import store as leases

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ACME = ranges.UidRange('acme', 200000, 200009)


def uuid(n: int) -> str:
    return '00000000-0000-4000-8000-%012d' % n


def usable(uid: int) -> bool:
    return True


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / 'leases.sqlite')


@pytest.fixture
def store(path):
    with leases.LeaseStore(path, timeout=2) as opened:
        yield opened


def fill(store, count, tenant='acme', uid_range=ACME, start=0):
    return [store.acquire(uuid(start + n), tenant, uid_range, usable)
            for n in range(count)]


def read_bytes(path):
    with open(path, 'rb') as handle:
        return handle.read()


def test_acquire_leases_first_uid_of_range(store):
    before = time.time()
    lease = store.acquire(uuid(1), 'acme', ACME, usable)
    assert (lease.uuid, lease.tenant, lease.uid) == (uuid(1), 'acme', 200000)
    assert before <= lease.created_at <= time.time()
    assert store.get(uuid(1)) == lease
    assert store.get_by_uid(200000) == lease
    assert store.get(uuid(2)) is None
    assert store.get_by_uid(200001) is None


def test_acquire_is_idempotent_and_canonicalises_uuid(store):
    lease = store.acquire(uuid(1), 'acme', ACME, usable)
    again = store.acquire(uuid(1).upper(), 'acme', ACME, usable)
    assert again == lease
    assert store.list() == [lease]
    assert store.acquire(uuid(2), 'acme', ACME, usable).uid == 200001


def test_not_a_uuid_is_refused(store):
    with pytest.raises(exception.LeaseError, match='not a UUID'):
        store.acquire('vm-1', 'acme', ACME, usable)


def test_release_returns_lease_once(store):
    lease = store.acquire(uuid(1), 'acme', ACME, usable)
    assert store.release(uuid(1)) == lease
    assert store.get(uuid(1)) is None
    assert store.get_by_uid(lease.uid) is None
    assert store.release(uuid(1)) is None


def test_list_orders_by_uid_and_filters_tenant(store):
    globex = ranges.UidRange('globex', 100000, 100009)
    acme = fill(store, 3)
    other = fill(store, 2, 'globex', globex, start=10)
    store.release(acme[0].uuid)
    assert store.list() == other + acme[1:]
    assert store.list(tenant='acme') == acme[1:]
    assert store.list(tenant='globex') == other
    assert store.list(tenant='nobody') == []


def test_allocation_is_round_robin(store):
    small = ranges.UidRange('acme', 200000, 200003)
    first, second = fill(store, 2, uid_range=small)
    store.release(first.uuid)
    assert store.acquire(uuid(10), 'acme', small, usable).uid == 200002
    assert store.acquire(uuid(11), 'acme', small, usable).uid == 200003
    # Wrapped: the released uid comes back only now.
    assert store.acquire(uuid(12), 'acme', small, usable).uid == 200000
    assert second.uid == 200001


def test_cursor_skips_a_leased_run(store):
    for n in range(500):
        store.insert(uuid(n), 'acme', 300000 + n)
    store.release(uuid(250))
    big = ranges.UidRange('acme', 300000, 300999)
    assert store.acquire(uuid(1000), 'acme', big, usable).uid == 300250
    assert store.acquire(uuid(1001), 'acme', big, usable).uid == 300500


def test_cost_does_not_grow_with_range_size(store):
    huge = ranges.UidRange(None, 100000, ranges.MAX_UID)
    start = time.monotonic()
    uids = [store.acquire(uuid(n), 'acme', huge, usable).uid
            for n in range(50)]
    assert uids == list(range(100000, 100050))
    assert time.monotonic() - start < 5


def test_forbidden_uids_are_never_leased(store):
    low = ranges.UidRange(None, 0, 1)
    assert store.acquire(uuid(1), 'acme', low, usable).uid == 1
    with pytest.raises(exception.RangeExhausted):
        store.acquire(uuid(2), 'acme', low, usable)


def test_default_skips_uids_with_passwd_account(store):
    accounts = {entry.pw_uid for entry in pwd.getpwall()} - {0}
    if not accounts:
        pytest.skip('the passwd database has no account but root')
    taken = min(accounts)
    free = next(uid for uid in range(taken + 1, taken + 100000)
                if uid not in accounts)
    assert not leases.uid_has_no_account(taken)
    assert not leases.uid_has_no_account(0)
    assert leases.uid_has_no_account(free)
    span = ranges.UidRange('acme', taken, free)
    assert store.acquire(uuid(1), 'acme', span).uid == free
    with pytest.raises(exception.RangeExhausted):
        store.acquire(uuid(2), 'acme', span)
    assert store.get_by_uid(taken) is None


def test_exhaustion_raises_and_takes_nothing(store):
    taken = fill(store, len(ACME))
    with pytest.raises(exception.RangeExhausted) as caught:
        store.acquire(uuid(99), 'acme', ACME, usable)
    message = str(caught.value)
    assert '200000-200009' in message and 'acme' in message
    assert 'release leases or widen the range' in message
    assert store.get(uuid(99)) is None
    assert store.list() == taken


def test_unusable_candidates_are_bounded(store):
    huge = ranges.UidRange('acme', 100000, 2100000)
    calls = []

    def never(uid):
        calls.append(uid)
        return False

    with pytest.raises(exception.RangeExhausted, match='unusable'):
        store.acquire(uuid(1), 'acme', huge, never)
    assert len(calls) == leases.MAX_UNUSABLE
    assert store.list() == []


def test_same_uuid_other_tenant_is_refused(store):
    store.acquire(uuid(1), 'acme', ACME, usable)
    globex = ranges.UidRange('globex', 100000, 100009)
    with pytest.raises(exception.LeaseError, match='held for tenant acme'):
        store.acquire(uuid(1), 'globex', globex, usable)


def test_lease_outside_new_range_is_refused(store):
    store.acquire(uuid(1), 'acme', ACME, usable)
    moved = ranges.UidRange('acme', 300000, 300009)
    with pytest.raises(exception.LeaseError, match='outside the range'):
        store.acquire(uuid(1), 'acme', moved, usable)
    assert store.get(uuid(1)).uid == 200000


def test_leases_and_cursor_persist_across_reopen(path):
    with leases.LeaseStore(path) as store:
        taken = fill(store, 3)
        store.release(taken[2].uuid)
    with leases.LeaseStore(path) as store:
        assert store.list() == taken[:2]
        assert store.acquire(uuid(9), 'acme', ACME, usable).uid == 200003


def test_insert_takes_a_given_uid(store):
    lease = store.insert(uuid(1), 'acme', 200005)
    assert lease.uid == 200005
    assert store.insert(uuid(1), 'acme', 200005) == lease
    assert store.acquire(uuid(1), 'acme', ACME, usable) == lease


@pytest.mark.parametrize('other_uuid, other_uid', [
    (uuid(2), 200005),      # the uid is someone else's
    (uuid(1), 200006),      # the instance holds another uid
])
def test_insert_conflicts(store, other_uuid, other_uid):
    store.insert(uuid(1), 'acme', 200005)
    with pytest.raises(exception.LeaseError, match='already holds'):
        store.insert(other_uuid, 'acme', other_uid)
    assert [le.uid for le in store.list()] == [200005]


def test_insert_same_lease_other_tenant_conflicts(store):
    store.insert(uuid(1), 'acme', 200005)
    with pytest.raises(exception.LeaseError, match='already holds'):
        store.insert(uuid(1), 'globex', 200005)


def test_insert_refuses_forbidden_uid(store):
    with pytest.raises(exception.LeaseError, match='never run as'):
        store.insert(uuid(1), 'acme', 0)


def test_allocation_and_release_are_logged(store, caplog):
    caplog.set_level(logging.INFO, logger=leases.__name__)
    store.acquire(uuid(1), 'acme', ACME, usable)
    store.release(uuid(1))
    text = caplog.text
    assert 'leased uid 200000 to instance %s of tenant acme' % uuid(1) in text
    assert 'released uid 200000 of instance %s' % uuid(1) in text


def test_closed_store_refuses(path):
    store = leases.LeaseStore(path)
    store.close()
    store.close()
    with pytest.raises(exception.LeaseError, match='closed'):
        store.list()


def test_missing_parent_dir(tmp_path):
    path = str(tmp_path / 'absent' / 'leases.sqlite')
    with pytest.raises(exception.LeaseError) as caught:
        leases.LeaseStore(path)
    assert path in str(caught.value)
    assert 'does not exist' in str(caught.value)
    assert not os.path.exists(tmp_path / 'absent')


def test_garbage_file_is_refused_and_kept(path):
    garbage = os.urandom(8192)
    with open(path, 'wb') as handle:
        handle.write(garbage)
    with pytest.raises(exception.LeaseError) as caught:
        leases.LeaseStore(path)
    assert 'lease database %s' % path in str(caught.value)
    assert 'not a lease database' in str(caught.value)
    assert read_bytes(path) == garbage


def test_corrupted_pages_are_refused_and_kept(path):
    with leases.LeaseStore(path) as store:
        fill(store, 5)
    data = bytearray(read_bytes(path))
    page = int.from_bytes(data[16:18], 'big')
    data[page:] = b'\xa5' * (len(data) - page)
    with open(path, 'wb') as handle:
        handle.write(data)
    with pytest.raises(exception.LeaseError) as caught:
        with leases.LeaseStore(path) as store:
            store.acquire(uuid(9), 'acme', ACME, usable)
    assert 'lease database %s' % path in str(caught.value)
    assert 'corrupted' in str(caught.value)
    assert read_bytes(path) == data


def test_foreign_database_is_refused_and_kept(path):
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE other (x)')
    before = read_bytes(path)
    with pytest.raises(exception.LeaseError, match='other tables'):
        leases.LeaseStore(path)
    assert read_bytes(path) == before


def test_newer_schema_is_refused(path):
    with leases.LeaseStore(path) as store:
        fill(store, 1)
    with sqlite3.connect(path) as conn:
        conn.execute('PRAGMA user_version = 99')
    with pytest.raises(exception.LeaseError, match='schema version 99'):
        leases.LeaseStore(path)


def test_lock_held_past_timeout(path):
    with leases.LeaseStore(path) as store:
        taken = fill(store, 3)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute('BEGIN EXCLUSIVE')
        with leases.LeaseStore(path, timeout=0.5) as store:
            start = time.monotonic()
            with pytest.raises(exception.LeaseError) as caught:
                store.acquire(uuid(9), 'acme', ACME, usable)
            elapsed = time.monotonic() - start
            assert 0.4 <= elapsed < 3
            assert 'lease database %s' % path in str(caught.value)
            assert 'locked' in str(caught.value)
    finally:
        other.rollback()
        other.close()
    with leases.LeaseStore(path) as store:
        assert store.list() == taken


CHILD = '''
import os
import sys
from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin import exception, leases
if len(sys.argv) > 3:
    uid, gid = int(sys.argv[3]), int(sys.argv[4])
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
count = 0
try:
    with leases.LeaseStore(sys.argv[1], timeout=1) as store:
        for n in range(int(sys.argv[2])):
            store.acquire('00000000-0000-4000-8000-%012d' % (100 + n),
                          't' * 4000, ranges.UidRange('x', 300000, 309999),
                          lambda uid: True)
            count += 1
except exception.LeaseError as exc:
    print('%d LeaseError %s' % (count, exc))
else:
    print('%d done' % count)
'''


def run_child(path, count, *as_ids, **kwargs):
    """Lease ``count`` uids in a child, optionally as uid and gid."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    argv = [sys.executable, '-c', CHILD, path, str(count)]
    done = subprocess.run(argv + [str(i) for i in as_ids],
                          capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60, **kwargs)
    assert done.returncode == 0, done.stderr
    acquired, _, outcome = done.stdout.strip().partition(' ')
    return int(acquired), outcome


@pytest.fixture
def shared_dir(tmp_path):
    """A directory a non-root child can reach when tests run as root."""
    if os.geteuid() != 0:
        yield str(tmp_path)
        return
    made = tempfile.mkdtemp(prefix='leases-ro-')
    os.chmod(made, 0o755)
    yield made
    shutil.rmtree(made)


def test_read_only_database(shared_dir):
    path = os.path.join(shared_dir, 'leases.sqlite')
    with leases.LeaseStore(path) as store:
        taken = fill(store, 3)
    if os.geteuid() == 0:
        # chmod does not stop root: the child drops to "nobody" instead,
        # after its imports (the interpreter may live under /root).
        try:
            nobody = pwd.getpwnam('nobody')
            ids = (nobody.pw_uid, nobody.pw_gid)
        except KeyError:
            ids = (65534, 65534)
        acquired, outcome = run_child(path, 1, *ids)
    else:
        os.chmod(path, 0o444)
        os.chmod(shared_dir, 0o555)
        try:
            acquired, outcome = run_child(path, 1)
        finally:
            os.chmod(shared_dir, 0o755)
            os.chmod(path, 0o644)
    assert acquired == 0
    assert outcome.startswith('LeaseError lease database %s' % path)
    assert 'read-only' in outcome or 'cannot be opened' in outcome
    with leases.LeaseStore(path) as store:
        assert store.list() == taken


def _limit_file_size():
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


def test_disk_full(path):
    with leases.LeaseStore(path) as store:
        taken = fill(store, 3)
    acquired, outcome = run_child(path, 5000, preexec_fn=_limit_file_size)
    assert outcome.startswith('LeaseError lease database %s' % path)
    assert 'disk may be full' in outcome
    with leases.LeaseStore(path) as store:
        kept = store.list()
    assert kept[:3] == taken
    assert len(kept) == 3 + acquired


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    leased=st.sets(st.integers(0, 300), max_size=250),
    start=st.integers(0, 310), length=st.integers(0, 310))
def test_next_free_is_the_lowest_unleased_uid(leased, start, length):
    stop = start + length
    with sqlite3.connect(':memory:', isolation_level=None) as conn:
        for statement in leases._SCHEMA:
            conn.execute(statement)
        conn.executemany('INSERT INTO leases (uuid, tenant, uid, created_at) '
                         'VALUES (?, ?, ?, 0)',
                         [(uuid(uid), 'acme', uid) for uid in leased])
        expected = next((uid for uid in range(start, stop + 1)
                         if uid not in leased), None)
        assert leases._next_free(conn, start, stop) == expected


def test_a_failed_boot_cannot_give_back_a_lease_claimed_again(tmp_path):
    # Two boots of one instance: the first creates the lease, the second
    # takes it, then the first fails and gives back only what it created
    # and nobody claimed since.
    path = str(tmp_path / 'race.sqlite')
    rng = ranges.UidRange('acme', 200000, 200099)
    with leases.LeaseStore(path) as first, leases.LeaseStore(path) as second:
        mine, created = first.claim(uuid(1), 'acme', rng, lambda uid: True)
        theirs, reused_created = second.claim(uuid(1), 'acme', rng,
                                              lambda uid: True)
        assert created and not reused_created and theirs.uid == mine.uid
        assert first.release_claim(mine) is False
        assert second.get(uuid(1)).uid == mine.uid
        # Unclaimed since, a failed creator does give it back.
        again, created = first.claim(uuid(2), 'acme', rng, lambda uid: True)
        assert created and first.release_claim(again) is True
        assert first.get(uuid(2)) is None


def test_a_version_1_database_is_upgraded_in_place(path):
    # Written by the first release: no claims column.
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE leases (uuid TEXT PRIMARY KEY NOT NULL, '
                 'tenant TEXT NOT NULL, uid INTEGER NOT NULL UNIQUE, '
                 'created_at REAL NOT NULL)')
    conn.execute('CREATE TABLE cursors (first INTEGER NOT NULL, last '
                 'INTEGER NOT NULL, next_uid INTEGER NOT NULL, PRIMARY KEY '
                 '(first, last)) WITHOUT ROWID')
    conn.execute('CREATE TABLE holds (uuid TEXT PRIMARY KEY NOT NULL, '
                 'reason TEXT NOT NULL, created_at REAL NOT NULL)')
    conn.execute("INSERT INTO leases VALUES (?, 'acme', 200003, 1.0)",
                 (uuid(7),))
    conn.execute('PRAGMA user_version = 1')
    conn.commit()
    conn.close()
    with leases.LeaseStore(path) as store:
        kept, created = store.claim(uuid(7), 'acme', ACME, usable)
        assert (kept.uid, created) == (200003, False)
        # Claimed twice now (its first boot and this one): kept.
        assert store.release_claim(kept) is False
    assert sqlite3.connect(path).execute(
        'PRAGMA user_version').fetchone()[0] == leases.SCHEMA_VERSION


# -- issue 24: giving leases back ------------------------------------------
def test_each_failed_claim_gives_back_only_its_own(store):
    first, created = store.claim(uuid(90), 'acme', ACME, usable)
    second, again = store.claim(uuid(90), 'acme', ACME, usable)
    assert (created, again) == (True, False)
    assert store.get(uuid(90)).claims == 2
    # The creator fails first: the other claim keeps the lease.
    assert store.release_claim(first) is False
    assert store.get(uuid(90)).claims == 1
    assert store.release_claim(second) is True
    assert store.get(uuid(90)) is None


def test_a_claim_whose_inside_fails_is_rolled_back(store):
    def fail(lease, created):
        raise OSError('disk full')
    with pytest.raises(OSError):
        store.claim(uuid(91), 'acme', ACME, usable, inside=fail)
    assert store.get(uuid(91)) is None
    lease = store.acquire(uuid(92), 'acme', ACME, usable)
    with pytest.raises(OSError):
        store.claim(uuid(92), 'acme', ACME, usable, inside=fail)
    assert store.get(uuid(92)).claims == lease.claims


def test_release_lifts_the_hold(store):
    store.acquire(uuid(93), 'acme', ACME, usable)
    store.hold(uuid(93), 'conflict')
    store.release(uuid(93))
    assert store.holds() == {}


def test_future_leases_are_dated_now(store):
    lease = store.acquire(uuid(94), 'acme', ACME, usable)
    with store._write() as conn:
        conn.execute('UPDATE leases SET created_at = created_at + 1e6')
    assert store.clamp_future(lease.created_at + 5) == 1
    assert store.get(uuid(94)).created_at == lease.created_at + 5


def test_open_existing_creates_nothing(tmp_path):
    missing = str(tmp_path / 'none.sqlite')
    assert leases.LeaseStore.open_existing(missing) is None
    assert os.listdir(tmp_path) == []


def test_shrinking_keeps_the_cursor_inside(store):
    wide = ranges.UidRange('acme', 200000, 200009)
    narrow = ranges.UidRange('acme', 200000, 200004)
    for n in range(7):
        store.acquire(uuid(100 + n), 'acme', wide, usable)
    for n in range(7):
        store.release(uuid(100 + n))
    # The wide range's cursor (200007) is past the new end: wrap.
    assert store.acquire(uuid(120), 'acme', narrow, usable).uid == 200000


def test_a_start_is_refused_when_the_record_claims_another_tenant(store):
    """The libvirt hook expands ``{tenant}`` with the tenant the domain's
    record names; only the lease says whose the instance is.
    """
    lease = store.acquire(uuid(1), 'acme', ACME, usable)
    blocker = leases.start_blocker(store, uuid(1), lease.uid,
                                   tenant='globex')
    assert blocker is not None
    reason, remedy = blocker
    assert "claims tenant 'globex'" in reason
    assert "leased to tenant 'acme'" in reason
    assert 'handle of the tenant that owns it' in remedy
    assert leases.start_blocker(store, uuid(1), lease.uid,
                                tenant='acme') is None
