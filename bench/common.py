"""What the benchmarks share: statistics, tenants, domains, a full host.

Timings are wall-clock (``time.perf_counter``) per operation, summarised
by the median and the 99th percentile (nearest rank): a boot that is slow
once in a hundred matters as much as the typical one.  The "full host" is
32,752 active leases (one per Xen domain id below DOMID_FIRST_RESERVED)
spread over 16 tenants whose ranges total one million uids; it is written
straight into the lease database, since taking 32,752 leases one durable
transaction at a time would only slow the bench down.
"""

import contextlib
import math
import os
import pathlib
import sqlite3
import statistics
import subprocess
import sys
import time
import typing
import uuid as uuid_mod

from tests import base
from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks

HOST_DOMAINS = 32752
TENANTS = 16
RANGE_SIZE = 62500
FIRST_UID = 1000000


def tenant(n: int) -> str:
    return 'tenant-%02d' % n


def uid_range(n: int, size: int = RANGE_SIZE) -> ranges.UidRange:
    first = FIRST_UID + n * RANGE_SIZE
    return ranges.UidRange(tenant(n), first, first + size - 1)


def tenant_ranges() -> typing.Dict[str, str]:
    """The 16 tenant ranges, as ``[dm_restrict] tenant_uid_ranges``."""
    return {tenant(n): str(uid_range(n)) for n in range(TENANTS)}


def summary(samples: typing.Sequence[float]) -> typing.Dict[str, float]:
    """Median, 99th percentile, mean and max of timings, in ms."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(0.99 * len(ordered)))
    return {'n': len(ordered),
            'median_ms': statistics.median(ordered) * 1e3,
            'p99_ms': ordered[rank - 1] * 1e3,
            'mean_ms': statistics.fmean(ordered) * 1e3,
            'max_ms': ordered[-1] * 1e3}


def new_instance(n: int = 0) -> hooks.Instance:
    """A new instance of tenant ``n``."""
    return hooks.Instance(str(uuid_mod.uuid4()), tenant(n))


def domain_xml(instance: hooks.Instance) -> str:
    """The typical HVM domain of the tests, for ``instance``."""
    return base.fixture('hvm.xml').replace(
        base.HVM_UUID, instance.uuid).replace(
        'fixture-hvm', 'vm-%s' % instance.uuid[:8])


def make_hook(workdir: str, name: str = 'leases.sqlite',
              **overrides) -> extension.DmRestrictHook:
    """The hook as an orchestrator builds it, leasing from ``workdir``."""
    options = dict(tenant_uid_ranges=tenant_ranges(),
                   lease_db=str(pathlib.Path(workdir) / name))
    options.update(overrides)
    return extension.DmRestrictHook(base.make_conf(pathlib.Path(workdir),
                                                   **options))


def fill(path: str, count: int, tenants: int = TENANTS,
         range_size: int = RANGE_SIZE) -> None:
    """Record ``count`` leases as a host that leased them one by one.

    They are spread evenly over the first ``tenants`` tenants, each
    tenant's in a row from the start of its range, with its cursor just
    after them.
    """
    leases.LeaseStore(path).close()
    now = time.time()
    rows, cursors = [], []
    for n in range(tenants):
        share = count // tenants + (1 if n < count % tenants else 0)
        span = uid_range(n, range_size)
        rows += [(str(uuid_mod.uuid4()), tenant(n), span.first + i, now)
                 for i in range(share)]
        cursors.append((span.first, span.last, span.first + share, now))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute('BEGIN IMMEDIATE')
        conn.executemany('INSERT INTO leases (uuid, tenant, uid, created_at) '
                         'VALUES (?, ?, ?, ?)', rows)
        conn.executemany('INSERT OR REPLACE INTO cursors (first, last, '
                         'next_uid, updated_at) VALUES (?, ?, ?, ?)',
                         cursors)
        conn.execute('COMMIT')
        conn.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    finally:
        conn.close()


def filesystem(path: str) -> str:
    """The type of the filesystem holding ``path``, e.g. ``ext4``."""
    target = pathlib.Path(path).resolve()
    best, kind = '', 'unknown'
    with open('/proc/self/mounts', encoding='utf-8') as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace('\\040', ' ')
            inside = target == pathlib.Path(point) or \
                pathlib.Path(point) in target.parents
            if inside and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


def proc_status(field: str, pid: typing.Union[int, str] = 'self') -> str:
    """A field of ``/proc/PID/status``, e.g. ``VmRSS`` or ``Uid``."""
    with open('/proc/%s/status' % pid, encoding='utf-8') as status:
        for line in status:
            key, _, value = line.partition(':')
            if key == field:
                return value.strip()
    return ''


def kib(field: str) -> int:
    """A memory field of this process's status, in KiB."""
    return int(proc_status(field).split()[0])


def start_service(module: str, env: dict, socket_path: str
                  ) -> subprocess.Popen:
    """One of the package's root services (``module``, run with ``-m``)
    as init runs it; returns once it listens on ``socket_path``.

    :raises RuntimeError: it ended or did not listen within 30 s (with
        what it wrote on stderr).
    """
    proc = subprocess.Popen(
        [sys.executable, '-m', module], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not os.path.exists(socket_path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError('%s did not start: %s' % (
                module, proc.communicate()[1].decode(errors='replace')))
        time.sleep(0.01)
    proc.stderr.close()
    return proc


@contextlib.contextmanager
def environ(values: typing.Dict[str, str]) -> typing.Iterator[None]:
    """This process's environment with ``values`` set: settings snapshots
    and probe caches written in process go to the step's scratch
    directory, never to the host's /run.
    """
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
