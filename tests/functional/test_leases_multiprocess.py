"""The lease store shared by several processes at once, on a real file."""

import multiprocessing
import sqlite3
import time

from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin.leases import store as leases

WORKERS = 8
PER_WORKER = 200
RANGE = ranges.UidRange('acme', 400000, 401999)
SPAWN = multiprocessing.get_context('spawn')


def uuid(worker: int, n: int) -> str:
    return '00000000-0000-4000-8000-%04d%08d' % (worker, n)


def usable(uid: int) -> bool:
    return True


def _allocate(path, worker, start, results):
    with leases.LeaseStore(path, timeout=30) as store:
        start.wait(30)
        got = [store.acquire(uuid(worker, n), 'acme', RANGE, usable)
               for n in range(PER_WORKER)]
        again = [store.acquire(lease.uuid, 'acme', RANGE, usable)
                 for lease in got[:10]]
    results.put((worker, got, again))


def _read_then_write(path, results):
    with leases.LeaseStore(path) as store:
        seen = store.list()
        store.release(uuid(0, 0))
        store.acquire(uuid(1, 0), 'acme', RANGE, usable)
    results.put(seen)


def _churn(path, worker, started):
    with leases.LeaseStore(path, timeout=30) as store:
        started.set()
        for n in range(10 ** 9):
            store.acquire(uuid(worker, n), 'acme', RANGE, usable)
            if n % 10:
                store.release(uuid(worker, n - 1))


def _run(target, *args):
    results = SPAWN.Queue()
    process = SPAWN.Process(target=target, args=args + (results,))
    process.start()
    value = results.get(timeout=60)
    process.join(60)
    assert process.exitcode == 0
    return value


def test_concurrent_allocations_never_share_a_uid(tmp_path):
    path = str(tmp_path / 'leases.sqlite')
    leases.LeaseStore(path).close()
    start, results = SPAWN.Event(), SPAWN.Queue()
    workers = [SPAWN.Process(target=_allocate,
                             args=(path, worker, start, results))
               for worker in range(WORKERS)]
    for process in workers:
        process.start()
    start.set()
    told = {}
    for _ in workers:
        worker, got, again = results.get(timeout=60)
        assert again == got[:10]
        told.update((lease.uuid, lease) for lease in got)
    for process in workers:
        process.join(60)
        assert process.exitcode == 0

    with leases.LeaseStore(path) as store:
        stored = store.list()
    uids = [lease.uid for lease in stored]
    assert len(stored) == WORKERS * PER_WORKER
    assert len(set(uids)) == len(uids)
    assert all(uid in RANGE for uid in uids)
    assert {lease.uuid: lease for lease in stored} == told
    # Round robin with no release: the leases fill the range from its start.
    assert uids == list(range(RANGE.first, RANGE.first + len(uids)))


def test_leases_persist_across_processes(tmp_path):
    path = str(tmp_path / 'leases.sqlite')
    with leases.LeaseStore(path) as store:
        written = [store.acquire(uuid(0, n), 'acme', RANGE, usable)
                   for n in range(3)]
    assert _run(_read_then_write, path) == written
    with leases.LeaseStore(path) as store:
        assert store.get(uuid(0, 0)) is None
        assert store.get(uuid(1, 0)).uid == RANGE.first + 3
        assert store.list()[:2] == written[1:]


def test_sigkill_leaves_database_consistent(tmp_path):
    path = str(tmp_path / 'leases.sqlite')
    leases.LeaseStore(path).close()
    for worker in range(5):
        started = SPAWN.Event()
        process = SPAWN.Process(target=_churn, args=(path, worker, started))
        process.start()
        assert started.wait(30)
        time.sleep(0.1 + 0.05 * worker)
        process.kill()
        process.join(30)
    with sqlite3.connect(path) as conn:
        assert conn.execute('PRAGMA integrity_check').fetchall() == [('ok',)]
    with leases.LeaseStore(path) as store:
        before = store.list()
        lease = store.acquire(uuid(99, 0), 'acme', RANGE, usable)
    uids = [held.uid for held in before]
    assert before and len(set(uids)) == len(uids)
    assert lease.uid not in uids
