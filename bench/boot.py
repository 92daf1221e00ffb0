"""Per-boot cost of the dm_restrict hook, alone and against libvirt's own.

The hook runs synchronously on every tenant VM boot, so it is measured
as an orchestrator pays for it: ``prepare()`` on a typical HVM domain
(parse, validate, lease, inject, serialize) with a durable lease
database that already holds a full host's 32,752 leases.  Each boot
leases a new instance, and its lease is released (untimed) before the
next, so every boot sees the same full host.  A separate, instrumented
run splits the time by phase, and the same boots are set against
libvirt's own define and create on the embedded ``test:///default``
driver, alternating with plain boots so both see the same machine.
"""

import collections
import contextlib
import sqlite3
import time
import typing

import libvirt

from bench import common
from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import policy
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import extension

#: (owner, attribute, phase): what the instrumented run times.
PHASES = [
    (domain_mod, 'parse', 'parse'),
    (restrict, 'read_record', 'validate'),
    (restrict, 'foreign_args', 'validate'),
    (policy, 'check_domain', 'validate'),
    (leases.LeaseStore, 'claim', 'lease'),
    (restrict, 'apply', 'inject'),
    (domain_mod.Domain, 'to_string', 'serialize'),
]


def _boot(hook: extension.DmRestrictHook) -> typing.Tuple[float, str]:
    """One timed boot of a new instance; its lease is then released."""
    instance = common.new_instance()
    xml = common.domain_xml(instance)
    start = time.perf_counter()
    hook.prepare(xml, instance)
    spent = time.perf_counter() - start
    hook.store.release(instance.uuid)
    return spent, instance.uuid


def per_boot(hook: extension.DmRestrictHook, boots: int,
             warmup: int = 50) -> typing.Dict[str, float]:
    """Time ``boots`` boots through the hook."""
    for _ in range(warmup):
        _boot(hook)
    return common.summary([_boot(hook)[0] for _ in range(boots)])


@contextlib.contextmanager
def _timing(spent: typing.Dict[str, float]) -> typing.Iterator[None]:
    """Add the time spent in each of :data:`PHASES` to ``spent``, each
    phase without the phases it calls (the claim of a lease renders the
    domain inside its transaction).
    """
    saved = []
    inner = [0.0]  # time of timed calls under the running one

    for owner, name, phase in PHASES:
        original = owner.__dict__[name]

        def timed(*args, _original=original, _phase=phase, **kwargs):
            outer = inner[0]
            inner[0] = 0.0
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                took = time.perf_counter() - start
                spent[_phase] += took - inner[0]
                inner[0] = outer + took
        saved.append((owner, name, original))
        setattr(owner, name, timed)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def phases(hook: extension.DmRestrictHook,
           boots: int) -> typing.Dict[str, float]:
    """The median time of each phase of a boot, in ms."""
    per_phase = collections.defaultdict(list)
    for _ in range(boots):
        spent = collections.defaultdict(float)
        with _timing(spent):
            total = _boot(hook)[0]
        spent['other'] = total - sum(spent.values())
        for phase, seconds in spent.items():
            per_phase[phase].append(seconds)
    return {phase: common.summary(samples)['median_ms']
            for phase, samples in per_phase.items()}


def _define_and_create(conn: libvirt.virConnect, xml: str) -> float:
    start = time.perf_counter()
    dom = conn.defineXML(xml)
    dom.create()
    spent = time.perf_counter() - start
    dom.destroy()
    dom.undefine()
    return spent


def libvirt_ratio(hook: extension.DmRestrictHook,
                  runs: int) -> typing.Dict[str, typing.Any]:
    """Hook + define + create against define + create, alternated."""
    conn = libvirt.open('test:///default')
    plain, hooked = [], []
    try:
        for n in range(runs + 20):
            instance = common.new_instance()
            xml = common.domain_xml(instance)
            if n % 2:
                plain.append(_define_and_create(conn, xml))
                continue
            start = time.perf_counter()
            out = hook.prepare(xml, instance)
            spent = time.perf_counter() - start
            hooked.append(spent + _define_and_create(conn, out))
            hook.store.release(instance.uuid)
    finally:
        conn.close()
    plain, hooked = (common.summary(s[10:]) for s in (plain, hooked))
    return {'plain': plain, 'with_hook': hooked,
            'ratio': hooked['median_ms'] / plain['median_ms']}


def durability(path: str) -> str:
    """The journal and sync modes a connection to ``path`` gets.

    The store keeps SQLite's default synchronous mode (FULL), so each
    commit is on disk before ``prepare()`` returns.
    """
    conn = sqlite3.connect(path)
    try:
        journal, = conn.execute('PRAGMA journal_mode').fetchone()
        synchronous, = conn.execute('PRAGMA synchronous').fetchone()
    finally:
        conn.close()
    names = {0: 'OFF', 1: 'NORMAL', 2: 'FULL', 3: 'EXTRA'}
    return 'journal_mode=%s synchronous=%s' % (
        journal, names.get(synchronous, synchronous))


def run(workdir: str, boots: int) -> typing.Dict[str, typing.Any]:
    """Every measurement of this module, on one full-host database."""
    hook = common.make_hook(workdir, 'boot.sqlite')
    common.fill(hook.settings.lease_db, common.HOST_DOMAINS)
    try:
        result = {
            'active_leases': len(hook.store.list()),
            'lease_db_filesystem': common.filesystem(
                hook.settings.lease_db),
            'per_boot': per_boot(hook, boots),
            'phases_median_ms': phases(hook, max(200, boots // 4)),
            'libvirt_test_driver': libvirt_ratio(hook, max(200, boots // 4)),
        }
        result['lease_db_durability'] = durability(hook.settings.lease_db)
        return result
    finally:
        hook.close()
