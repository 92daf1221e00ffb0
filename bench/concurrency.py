"""Many processes leasing at once: no uid twice, no error, and how fast.

On a compute host the orchestrator, the console script and the libvirt
hook may all lease at the same moment, from separate processes, through
one SQLite file.  Eight processes each take 1,000 leases from the same
tenant range (the worst contention: one cursor), all at once, hold them
while the parent checks that no uid was given twice, then release them
all at once.  Errors (a lock held past the timeout) are counted, not
raised, and the aggregate rates are wall-clock over all workers.
"""

import multiprocessing
import os
import time
import typing
import uuid as uuid_mod

from bench import common
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.leases import store as leases

WORKERS = 8
PER_WORKER = 1000
TIMEOUT = 30.0


def _worker(path: str, worker: int, go, release, results) -> None:
    uid_range = common.uid_range(0)
    held, errors = [], []
    with leases.LeaseStore(path, TIMEOUT) as store:
        go.wait(60)
        start = time.monotonic()
        for _ in range(PER_WORKER):
            try:
                lease = store.acquire(str(uuid_mod.uuid4()), uid_range.owner,
                                      uid_range)
            except exception.LeaseError as err:
                errors.append(str(err))
            else:
                held.append((lease.uuid, lease.uid))
        acquired = time.monotonic()
        results.put(('acquired', worker, start, acquired, held, errors))
        release.wait(300)
        start = time.monotonic()
        for uuid, _ in held:
            try:
                store.release(uuid)
            except exception.LeaseError as err:
                errors.append(str(err))
        results.put(('released', worker, start, time.monotonic(), errors))


def _rate(count: int, spans: typing.List[typing.Tuple[float, float]]
          ) -> float:
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return count / wall


def run(workdir: str) -> typing.Dict[str, typing.Any]:
    path = os.path.join(workdir, 'concurrency.sqlite')
    leases.LeaseStore(path).close()
    context = multiprocessing.get_context('spawn')
    go, release = context.Event(), context.Event()
    results = context.Queue()
    workers = [context.Process(target=_worker,
                               args=(path, n, go, release, results))
               for n in range(WORKERS)]
    for process in workers:
        process.start()
    go.set()
    acquired = [results.get(timeout=600) for _ in workers]
    told = [pair for *_, held, _ in acquired for pair in held]
    with leases.LeaseStore(path) as store:
        stored = [(lease.uuid, lease.uid) for lease in store.list()]
    release.set()
    released = [results.get(timeout=600) for _ in workers]
    for process in workers:
        process.join(60)
    with leases.LeaseStore(path) as store:
        left = len(store.list())
    errors = [e for *_, held, errs in acquired for e in errs] + [
        e for *_, errs in released for e in errs]
    uids = [uid for _, uid in told]
    return {
        'workers': WORKERS, 'leases_per_worker': PER_WORKER,
        'allocated': len(told),
        'duplicate_uids': len(uids) - len(set(uids)),
        'stored_matches_told': sorted(stored) == sorted(told),
        'errors': len(errors), 'first_errors': errors[:3],
        'left_after_release': left,
        'exit_codes': [process.exitcode for process in workers],
        'allocations_per_s': _rate(len(told), [r[2:4] for r in acquired]),
        'releases_per_s': _rate(len(told), [r[2:4] for r in released]),
    }
