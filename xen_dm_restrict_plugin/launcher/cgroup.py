"""One cgroup per device model: processes, memory and CPU weight.

RLIMIT_NPROC caps the processes of the device-model uid, but nothing in
libxl bounds the memory a compromised QEMU can take in dom0 or the CPU it
can burn.  The launcher puts every device model, before the exec, in a
cgroup of its own, ``<cgroup root>/<[dm_restrict] cgroup_parent>/dm-<uid>``,
with ``pids.max``, a memory limit (no swap) and a CPU weight; the reaper
removes the group once the uid's processes are gone.

cgroup v2 is used when a cgroup2 hierarchy offers the ``pids`` and
``memory`` controllers; otherwise the v1 ``pids`` and ``memory``
hierarchies (and ``cpu`` when mounted).  The launcher imports this module
at every device-model start, so it imports only os and errno.
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

MOUNTS = '/proc/self/mounts'
REQUIRED = ('pids', 'memory')
OPTIONAL = ('cpu',)
GROUP_PREFIX = 'dm-'
V1_SHARES_PER_WEIGHT = 1024 / 100


class Limits:
    """What one device model may use.

    :param pids_max: processes and threads.
    :param memory_max_bytes: memory, swap not allowed.
    :param cpu_weight: cgroup v2 ``cpu.weight`` (1..10000, 100 is the
        default every other process has); v1 gets the same share.
    """

    __slots__ = ('pids_max', 'memory_max_bytes', 'cpu_weight')

    def __init__(self, pids_max: int, memory_max_bytes: int,
                 cpu_weight: int):
        self.pids_max = pids_max
        self.memory_max_bytes = memory_max_bytes
        self.cpu_weight = cpu_weight


class Hierarchy:
    """Where the controllers are mounted.

    :param version: 2 or 1.
    :param roots: controller name -> mount point (one for all in v2).
    """

    __slots__ = ('version', 'roots')

    def __init__(self, version: int, roots: typing.Dict[str, str]):
        self.version = version
        self.roots = roots

    def describe(self) -> str:
        if self.version == 2:
            return 'cgroup v2 at %s (%s)' % (
                next(iter(self.roots.values())), ', '.join(self.roots))
        return 'no cgroup v2 with pids and memory; cgroup v1: %s' % ', '.join(
            '%s at %s' % item for item in sorted(self.roots.items()))


def _unescape(field: str) -> str:
    """Undo the octal escapes of /proc/self/mounts (``\\040``...)."""
    if '\\' not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == '\\' and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return ''.join(out)


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def find(mounts: str = MOUNTS) -> typing.Optional[Hierarchy]:
    """The hierarchy to use, or None when neither v2 nor v1 has
    ``pids`` and ``memory``.
    """
    v1: typing.Dict[str, str] = {}
    with open(mounts) as handle:
        lines = handle.read().splitlines()
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        where, fstype = _unescape(fields[1]), fields[2]
        if fstype == 'cgroup2':
            try:
                offered = _read(os.path.join(
                    where, 'cgroup.controllers')).split()
            except OSError:
                continue
            if all(name in offered for name in REQUIRED):
                return Hierarchy(2, {
                    name: where for name in REQUIRED + OPTIONAL
                    if name in offered})
        elif fstype == 'cgroup':
            options = fields[3].split(',')
            for name in REQUIRED + OPTIONAL:
                if name in options:
                    v1.setdefault(name, where)
    if all(name in v1 for name in REQUIRED):
        return Hierarchy(1, v1)
    return None


def available() -> str:
    """Empty when device-model cgroups can be made here, else why not."""
    try:
        found = find()
    except OSError as err:
        return 'cannot read %s: %s' % (MOUNTS, err.strerror)
    if found is None:
        return ('neither a cgroup v2 hierarchy with the pids and memory '
                'controllers nor v1 pids and memory hierarchies is mounted')
    return ''


def describe() -> str:
    """The hierarchy the launcher would use, for preflight."""
    found = find()
    return found.describe() if found else 'no usable cgroup hierarchy'


def _group_name(uid: int) -> str:
    return GROUP_PREFIX + str(int(uid))


def _check_parent(parent: str) -> str:
    if not parent or parent.startswith('/') or '..' in parent.split('/') \
            or '\0' in parent:
        raise OSError(errno.EINVAL, 'cgroup parent %r is not a relative '
                      'path below the cgroup root' % parent)
    return parent


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    if not os.path.isdir(path) or os.path.islink(path):
        raise OSError(errno.ENOTDIR, '%s is not a cgroup directory' % path)


def _enable(group: str, controllers: typing.Iterable[str]) -> None:
    """Let ``group``'s children use ``controllers`` (cgroup v2)."""
    have = _read(os.path.join(group, 'cgroup.subtree_control')).split()
    missing = ['+' + name for name in controllers if name not in have]
    if missing:
        _write(os.path.join(group, 'cgroup.subtree_control'),
               ' '.join(missing))


def _ensure_empty(group: str) -> None:
    if _read(os.path.join(group, 'cgroup.procs')).split():
        raise OSError(errno.EBUSY, 'cgroup %s still holds processes of an '
                      'earlier device model of this uid' % group)


def _v2_enter(root: str, controllers: typing.List[str], parent: str,
              uid: int, limits: Limits) -> typing.List[str]:
    _enable(root, controllers)
    above = root
    for part in parent.split('/'):
        above = os.path.join(above, part)
        _mkdir(above)
        _enable(above, controllers)
    group = os.path.join(above, _group_name(uid))
    _mkdir(group)
    _ensure_empty(group)
    _write(os.path.join(group, 'pids.max'), str(limits.pids_max))
    _write(os.path.join(group, 'memory.max'), str(limits.memory_max_bytes))
    if os.path.exists(os.path.join(group, 'memory.swap.max')):
        _write(os.path.join(group, 'memory.swap.max'), '0')
    if 'cpu' in controllers:
        _write(os.path.join(group, 'cpu.weight'), str(limits.cpu_weight))
    return [group]


def _v1_memory(group: str, limit: int) -> None:
    memory = os.path.join(group, 'memory.limit_in_bytes')
    swap = os.path.join(group, 'memory.memsw.limit_in_bytes')
    has_swap = os.path.exists(swap)
    try:
        _write(memory, str(limit))
    except OSError as err:
        if err.errno != errno.EINVAL or not has_swap:
            raise
        _write(swap, str(limit))  # memsw must never be below the limit
        _write(memory, str(limit))
    if has_swap:
        _write(swap, str(limit))


def _v1_enter(roots: typing.Dict[str, str], parent: str, uid: int,
              limits: Limits) -> typing.List[str]:
    groups = {}
    for name, root in sorted(roots.items()):
        above = root
        for part in parent.split('/'):
            above = os.path.join(above, part)
            _mkdir(above)
        group = os.path.join(above, _group_name(uid))
        _mkdir(group)
        _ensure_empty(group)
        groups[name] = group
    _write(os.path.join(groups['pids'], 'pids.max'), str(limits.pids_max))
    _v1_memory(groups['memory'], limits.memory_max_bytes)
    if 'cpu' in groups:
        shares = max(2, int(limits.cpu_weight * V1_SHARES_PER_WEIGHT))
        _write(os.path.join(groups['cpu'], 'cpu.shares'), str(shares))
    return [groups[name] for name in sorted(groups)]


def prepare(parent: str, uid: int, limits: Limits
            ) -> typing.Tuple[int, typing.List[str]]:
    """Create the device model's cgroup and set its limits.

    :returns: the cgroup version and the group directories (one for v2,
        one per controller hierarchy for v1), for :func:`join` or, on
        cgroup v2, ``clone3(CLONE_INTO_CGROUP)``.
    :raises OSError: no usable hierarchy, the group still holds an
        earlier device model's processes, or the kernel refused a write.
    """
    _check_parent(parent)
    found = find()
    if found is None:
        raise OSError(errno.ENOTSUP, available())
    if found.version == 2:
        return 2, _v2_enter(next(iter(found.roots.values())),
                            list(found.roots), parent, uid, limits)
    return 1, _v1_enter(found.roots, parent, uid, limits)


def join(paths: typing.Iterable[str], pid: int = 0) -> None:
    """Move process ``pid`` (0: the calling one) into the groups.

    The first move of a running process costs the kernel an RCU grace
    period (several milliseconds); a process started straight into its
    group (``clone3(CLONE_INTO_CGROUP)``, cgroup v2) pays none.
    """
    for group in paths:
        _write(os.path.join(group, 'cgroup.procs'), str(pid or os.getpid()))


def enter(parent: str, uid: int, limits: Limits) -> typing.List[str]:
    """Create the device model's cgroup, set its limits, move in.

    The calling process (the launcher, about to exec QEMU) joins the
    group, so QEMU and everything it starts are counted there.

    :returns: the group directories joined.
    :raises OSError: as :func:`prepare`, or a move was refused.
    """
    paths = prepare(parent, uid, limits)[1]
    join(paths)
    return paths


def groups(parent: str, uid: int) -> typing.List[str]:
    """The existing cgroup directories of ``uid``'s device model."""
    _check_parent(parent)
    found = find()
    if found is None:
        return []
    paths = []
    for root in sorted(set(found.roots.values())):
        path = os.path.join(root, parent, _group_name(uid))
        if os.path.isdir(path):
            paths.append(path)
    return paths


def remove(parent: str, uid: int, attempts: int = 50) -> typing.List[str]:
    """Remove ``uid``'s device-model cgroups once they are empty.

    Called by the reaper after the uid's processes are gone.  A process
    that left the group but is not yet fully released keeps ``rmdir``
    busy for a moment; it is retried, and under cgroup v2 whatever is
    still inside is killed through ``cgroup.kill``.

    :returns: the directories removed.
    :raises OSError: a group could not be removed.
    """
    import time

    removed = []
    for path in groups(parent, uid):
        for attempt in range(attempts):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                break
            except OSError as err:
                if err.errno != errno.EBUSY or attempt == attempts - 1:
                    raise
                kill = os.path.join(path, 'cgroup.kill')
                if os.path.exists(kill):
                    _write(kill, '1')
                time.sleep(0.01)
            else:
                removed.append(path)
                break
    return removed
