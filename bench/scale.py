"""How a lease allocation scales: with active leases and with range size.

An allocation must not scan its range (tenant ranges may hold a million
uids or more) and should not slow down much as a host fills up.  Each
lease count is measured in two cases: the typical one, where the
tenant's round-robin cursor points at a free uid, and the worst one,
where it points at the start of a run of every active lease in a row
(a cursor that just wrapped around), which the store has to measure out.
Memory is measured in a fresh process that boots through the hook with
a full host leased, since RSS is only meaningful for a whole process.
"""

import contextlib
import multiprocessing
import os
import sqlite3
import time
import tracemalloc
import typing
import uuid as uuid_mod

from bench import common
from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin.leases import store as leases

LEASE_COUNTS = (0, 1000, 10000, common.HOST_DOMAINS)
#: Tenant range sizes, up to the largest the first uid allows.
RANGE_SIZES = (40000, 1000000, ranges.MAX_UID - common.FIRST_UID + 1)
TYPICAL_RUNS = 300
WORST_RUNS = 50


def _acquire(store: leases.LeaseStore, uid_range: ranges.UidRange,
             rewind: typing.Optional[sqlite3.Connection]) -> float:
    """Time one allocation; its lease is released afterwards."""
    if rewind is not None:
        rewind.execute('UPDATE cursors SET next_uid = first')
    instance = str(uuid_mod.uuid4())
    start = time.perf_counter()
    store.acquire(instance, uid_range.owner, uid_range)
    spent = time.perf_counter() - start
    store.release(instance)
    return spent


def measure(workdir: str, count: int, worst: bool,
            range_size: int = common.RANGE_SIZE) -> typing.Dict[str, float]:
    """Allocation cost with ``count`` leases active.

    :param worst: all leases in a row in the allocating tenant's range,
        with its cursor rewound to their start before each allocation;
        otherwise spread over 16 tenants, the cursor at a free uid.
    :param range_size: the size of the allocating tenant's range.
    """
    path = os.path.join(workdir, 'scale-%d-%d-%d.sqlite'
                        % (count, worst, range_size))
    one_tenant = worst or range_size != common.RANGE_SIZE
    common.fill(path, count, tenants=1 if one_tenant else common.TENANTS,
                range_size=range_size)
    uid_range = common.uid_range(0, range_size)
    rewind = sqlite3.connect(path, isolation_level=None) if worst else None
    try:
        with leases.LeaseStore(path) as store:
            runs = WORST_RUNS if worst else TYPICAL_RUNS
            for _ in range(10):
                _acquire(store, uid_range, rewind)
            result = common.summary([_acquire(store, uid_range, rewind)
                                     for _ in range(runs)])
    finally:
        if rewind is not None:
            rewind.close()
        for suffix in ('', '-wal', '-shm'):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)
    result.update(leases=count, range_size=range_size,
                  case='worst' if worst else 'typical')
    return result


def run(workdir: str) -> typing.Dict[str, typing.Any]:
    """Allocation cost by lease count and by range size, and memory."""
    by_count = [measure(workdir, count, worst)
                for count in LEASE_COUNTS for worst in (False, True)
                if count or not worst]
    by_size = [measure(workdir, common.HOST_DOMAINS, worst, size)
               for worst in (False, True) for size in RANGE_SIZES]
    growth = {}
    for case in ('typical', 'worst'):
        rows = [r for r in by_size if r['case'] == case]
        growth[case] = rows[-1]['median_ms'] / rows[0]['median_ms']
    return {'by_lease_count': by_count, 'by_range_size': by_size,
            'range_size_growth': growth, 'memory': memory(workdir)}


def memory(workdir: str, boots: int = 1000) -> typing.Dict[str, int]:
    """Memory of a fresh process booting with a full host leased."""
    path = os.path.join(workdir, 'memory.sqlite')
    common.fill(path, common.HOST_DOMAINS)
    context = multiprocessing.get_context('spawn')
    queue = context.Queue()
    process = context.Process(target=_memory_probe,
                              args=(workdir, boots, queue))
    process.start()
    result = queue.get(timeout=300)
    process.join(60)
    result['lease_db_bytes'] = sum(
        os.path.getsize(path + suffix) for suffix in ('', '-wal', '-shm')
        if os.path.exists(path + suffix))
    return result


def _memory_probe(workdir: str, boots: int, queue) -> None:
    """In a fresh process: RSS and Python allocations of the hook."""
    imported = common.kib('VmRSS')
    hook = common.make_hook(workdir, 'memory.sqlite')
    tracemalloc.start()
    for _ in range(boots):
        instance = common.new_instance()
        hook.prepare(common.domain_xml(instance), instance)
        hook.store.release(instance.uuid)
    boot_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    held = len(hook.store.list())
    list_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    hook.close()
    queue.put({'active_leases': held, 'boots': boots,
               'rss_after_import_kib': imported,
               'rss_after_boots_kib': common.kib('VmRSS'),
               'rss_peak_kib': common.kib('VmHWM'),
               'tracemalloc_peak_boots_kib': boot_peak // 1024,
               'tracemalloc_peak_list_all_kib': list_peak // 1024})
