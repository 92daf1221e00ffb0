"""A process SIGKILLed anywhere in allocate/release leaves a sound database.

Hundreds of forked workers allocate and release leases for a fixed set of
domains in two tenants and are killed at random moments; afterwards the
database must hold no duplicate uid, no lease outside its tenant's range,
no lease of an unknown domain, and the next process must carry on.
"""

import os
import random
import signal
import sqlite3
import time
import uuid as uuid_mod

from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.leases import store as leases

KILLS = 300
RANGES = {'acme': ranges.UidRange('acme', 200000, 200049),
          'globex': ranges.UidRange('globex', 201000, 201049)}
DOMAINS = {str(uuid_mod.UUID(int=i + 1)): ('acme' if i % 2 else 'globex')
           for i in range(80)}


def _worker(path, seed):
    rng = random.Random(seed)
    pool = list(DOMAINS.items())
    try:
        store = leases.LeaseStore(path, timeout=30)
        while True:
            uuid, tenant = rng.choice(pool)
            if rng.random() < 0.6:
                try:
                    store.acquire(uuid, tenant, RANGES[tenant])
                except exception.RangeExhausted:
                    pass
            else:
                store.release(uuid)
    finally:
        os._exit(0)


def _check(path):
    with leases.LeaseStore(path) as store:
        found = store.list()
    uids = [le.uid for le in found]
    assert len(uids) == len(set(uids))
    for lease in found:
        assert DOMAINS.get(lease.uuid) == lease.tenant, lease
        assert lease.uid in RANGES[lease.tenant], lease
    conn = sqlite3.connect(path)
    try:
        assert conn.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
        for first, last, cursor in conn.execute(
                'SELECT first, last, next_uid FROM cursors'):
            assert first <= cursor <= last
    finally:
        conn.close()
    return found


def test_sigkill_at_random_points_keeps_the_database_sound(tmp_path):
    path = str(tmp_path / 'leases.sqlite')
    leases.LeaseStore(path).close()
    rng = random.Random(20261122)
    killed_busy = 0
    for kill in range(KILLS):
        workers = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                _worker(path, rng.random())
            workers.append(pid)
        time.sleep(rng.uniform(0.0, 0.02))
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        for pid in workers:
            _, status = os.waitpid(pid, 0)
            killed_busy += os.WIFSIGNALED(status)
        if kill % 50 == 49:
            _check(path)
    assert killed_busy >= KILLS  # the workers died by the kill, not early
    before = _check(path)
    assert before, 'the workers never got to allocate before the kills'
    with leases.LeaseStore(path) as store:
        free = next(u for u, t in DOMAINS.items()
                    if store.get(u) is None and t == 'acme')
        if len([le for le in before if le.tenant == 'acme']) < 50:
            lease = store.acquire(free, 'acme', RANGES['acme'])
            assert lease.uid in RANGES['acme']
    _check(path)
