"""Disk throughput through the deprivileged storage daemon, against root.

A qcow2 disk of a restricted guest is served by a ``qemu-storage-daemon``
of its own, started by :func:`xen_dm_restrict_plugin.storage.daemon.start`
as the instance's uid (a real user, created for the step and removed
after), in a mount namespace holding only the backing chain, in the
instance's cgroup and under the launcher's seccomp filter.  What qdisk
does instead is QEMU parsing the image as root in dom0: here the same
daemon with the same command line
(:func:`~xen_dm_restrict_plugin.storage.daemon.argv`), started by root
with none of that.

The images are Nova's layout: a raw file with data in the instances'
``_base`` directory, and per instance a qcow2 overlay on it, made afresh
for every run so that every run's writes allocate.  They lie on a tmpfs
(``/dev/shm``) when there is room: nothing is flushed anyway, and so
neither the disk, nor its journal, nor other work's writeback shows in
the figures; what is measured is the serving path, not the disk under
it, and the restrictions' share of it is the largest it can be.  The
client is ``fio``'s ``nbd`` engine (libnbd) on the daemon's unix
socket, since this kind of machine has no nbd module (the guest's kernel
path is the Xen lab's).  Per run: sequential 1 MiB reads (depth 4) of
the whole disk, through the empty overlay into the base; 4 KiB random
reads, 8 in flight (the cost per request, where a syscall filter would
show); sequential 1 MiB writes (depth 4) of the whole disk, allocating
the overlay.  Beside the throughput, the daemon's own CPU time (user
and system, all threads, read from ``/proc`` by fio around each job)
per GiB and per random read.

Other work on the machine moves the figures by more than the
restrictions do, so every run pairs the two daemons: both serve at once
(each its own overlay) and one fio run does every job in two halves,
ordered restricted, root, root, restricted (or the reverse, alternating
by run): what one job leaves behind for the next (memory to allocate
again after a write) falls on both alike.  A ratio is the median of the
runs' own ratios (restricted / root: above 1 the restricted daemon is
faster or, for CPU time, costlier).  With ``toggles``, the restricted
daemon also runs without the seccomp filter, without the cgroup, and
without both (uid and namespace only), each paired with root the same
way, to say where an overhead comes from.  Needs root,
``qemu-storage-daemon``, ``qemu-img`` and ``fio``; otherwise the step
is skipped with the reason.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import typing
import uuid as uuid_mod

from bench import common
from tests.functional import hostenv
from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import disks
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin.core import settings as settings_mod
from xen_dm_restrict_plugin.launcher import cgroup
from xen_dm_restrict_plugin.launcher import seccomp
from xen_dm_restrict_plugin.storage import daemon

FIO = 'fio'
QEMU_IMG = 'qemu-img'
#: The disk's size; on a tmpfs the overlay's pages are charged to the
#: restricted daemon's cgroup and cannot be reclaimed, so it stays well
#: under device_model_memory_mib.
IMAGE_MIB = 256
#: Seconds of 4 KiB random reads per run and daemon (in two halves).
RANDOM_SECONDS = 1
#: Requests in flight of the random reads: enough to keep the daemon
#: busy, so that its cost per request shows rather than the wakeups of
#: a loaded machine.
RANDOM_DEPTH = 8
TARGET = 'xvda'
TENANT = 'acme'
THROUGHPUT = ('seq_read_mib_s', 'seq_write_mib_s', 'rand_read_iops')
CPU = ('seq_read_cpu_s_per_gib', 'seq_write_cpu_s_per_gib',
       'rand_read_cpu_us_per_io')
METRICS = THROUGHPUT + CPU
RESTRICTED = 'restricted'
#: The restricted daemon with restrictions left out, to say where an
#: overhead comes from: name -> settings changed.
TOGGLES = {
    'without_seccomp': {'launcher_seccomp': False},
    'without_cgroup': {'cgroup_limits': constants.CGROUPS_OFF},
    'uid_and_namespace_only': {'launcher_seccomp': False,
                               'cgroup_limits': constants.CGROUPS_OFF},
}


def skip_reason(binary: str) -> typing.Optional[str]:
    """Why the disk step cannot run here, or None."""
    if os.geteuid() != 0:
        return 'not root: the storage daemon changes uid and namespace'
    for tool in (binary, QEMU_IMG, FIO):
        if not shutil.which(tool):
            return '%s is not installed (see bindep.txt)' % tool
    engines = subprocess.run([FIO, '--enghelp'], capture_output=True,
                             text=True).stdout.split()
    if 'nbd' not in engines:
        return 'fio was built without its nbd engine (libnbd)'
    return None


@dataclasses.dataclass
class Served:
    """A daemon serving a disk to the bench, and its figures."""

    name: str
    socket: str
    pid: int
    figures: typing.Dict[str, float] = dataclasses.field(
        default_factory=dict)

    @property
    def uri(self) -> str:
        return 'nbd+unix:///%s?socket=%s' % (daemon.EXPORT, self.socket)


def fio_jobs() -> typing.Tuple[typing.Tuple[str, str, tuple], ...]:
    """The jobs of a run, in order: name, what fio reports it under, and
    the fio options of each of its two halves.
    """
    return (
        ('seq-read', 'read', (
            ('--rw=read', '--bs=1M', '--iodepth=4'),) * 2),
        ('rand-read', 'read', (
            ('--rw=randread', '--bs=4k', '--iodepth=%d' % RANDOM_DEPTH,
             '--time_based', '--runtime=%dms' % (RANDOM_SECONDS * 500)),)
            * 2),
        ('seq-write', 'write', tuple(
            ('--rw=write', '--bs=1M', '--iodepth=4',
             '--offset=%dM' % (half * IMAGE_MIB // 2),
             '--size=%dM' % (IMAGE_MIB // 2)) for half in (0, 1))),
    )


def _cpu_file(scratch: str, job: str, when: str) -> float:
    """The daemon's CPU seconds fio's exec_prerun/postrun recorded."""
    with open(os.path.join(scratch, '%s.%s.txt' % (job, when))) as handle:
        fields = handle.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def measure_pair(first: Served, second: Served, scratch: str) -> None:
    """Every job on both daemons, in one fio run, in halves ordered
    first, second, second, first: what one leaves behind for the next
    (page cache, memory to allocate) falls on both alike.  The daemon's
    CPU time around each job is read by fio itself (exec_prerun and
    exec_postrun write ``/proc/PID/stat`` to ``JOB.prerun.txt``).
    """
    argv = [FIO, '--ioengine=nbd', '--size=%dM' % IMAGE_MIB,
            '--output-format=json', '--output=fio.json']
    names = []
    for job, _, halves in fio_jobs():
        for half, served in ((0, first), (0, second), (1, second),
                             (1, first)):
            name = '%s-%s-%d' % (served.name, job, half)
            names.append(name)
            stat = 'cat /proc/%d/stat' % served.pid
            argv += ['--name=' + name, '--uri=' + served.uri, '--stonewall',
                     '--exec_prerun=' + stat, '--exec_postrun=' + stat]
            argv += list(halves[half])
    subprocess.run(argv, cwd=scratch, check=True, capture_output=True,
                   timeout=120)
    with open(os.path.join(scratch, 'fio.json')) as handle:
        jobs = {job['jobname']: job for job in json.load(handle)['jobs']}
    for name in names:
        if jobs[name]['error']:
            raise RuntimeError('fio job %s failed: error %d'
                               % (name, jobs[name]['error']))
    for served in (first, second):
        for job, direction, _ in fio_jobs():
            done = [jobs['%s-%s-%d' % (served.name, job, half)][direction]
                    for half in (0, 1)]
            seconds = sum(part['runtime'] for part in done) / 1e3
            cpu = sum(_cpu_file(scratch, '%s-%s-%d' % (served.name, job,
                                                       half), 'postrun')
                      - _cpu_file(scratch, '%s-%s-%d' % (served.name, job,
                                                         half), 'prerun')
                      for half in (0, 1))
            ios = sum(part['total_ios'] for part in done)
            data = sum(part['io_bytes'] for part in done)
            if job == 'rand-read':
                served.figures['rand_read_iops'] = ios / seconds
                served.figures['rand_read_cpu_us_per_io'] = cpu * 1e6 / ios
            else:
                key = job.replace('-', '_')
                served.figures[key + '_mib_s'] = data / 2 ** 20 / seconds
                served.figures[key + '_cpu_s_per_gib'] = cpu / (
                    data / 2 ** 30)


class Images:
    """Nova's layout: ``_base/HASH`` (raw, with data, 0644) and per
    instance ``UUID/disk``, a qcow2 overlay made afresh for every run.
    """

    def __init__(self, root: str):
        self.root = root
        self.base = os.path.join(root, '_base', 'bench-base')
        os.makedirs(os.path.dirname(self.base))
        chunk = os.urandom(1 << 20)
        with open(self.base, 'wb') as handle:
            for _ in range(IMAGE_MIB):
                handle.write(chunk)
        os.chmod(self.base, 0o644)

    def fresh_overlay(self, instance: str) -> str:
        overlay = os.path.join(self.root, instance, 'disk')
        os.makedirs(os.path.dirname(overlay), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(overlay)
        subprocess.run([QEMU_IMG, 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                        '-b', self.base, overlay], check=True, timeout=30)
        return overlay


@contextlib.contextmanager
def unrestricted(settings, chain, scratch: str
                 ) -> typing.Iterator[Served]:
    """The daemon as root, as qdisk would serve the disk.

    In a session of its own, as the restricted one (and as libxl starts
    its device models, ``libxl__spawn_local_dm``): with the kernel's
    autogroups a session is a scheduling group, and a daemon sharing
    fio's would wait on the run queue less than the restricted one.
    """
    socket = os.path.join(scratch, 'root.sock')
    proc = subprocess.Popen(
        daemon.argv(settings.storage_daemon_binary, chain, socket),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + daemon.START_TIMEOUT
        while not os.path.exists(socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('the daemon as root did not start: %s'
                                   % proc.communicate(timeout=10)[1])
            time.sleep(0.01)
        yield Served('root', socket, proc.pid)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket)


@contextlib.contextmanager
def restricted(settings, instance: str, uid: int, chain
               ) -> typing.Iterator[Served]:
    """The daemon as the storage service starts it for the guest."""
    served = daemon.start(settings, instance, TARGET, uid, uid, chain)
    try:
        yield Served('restricted', served.socket, served.pid)
    finally:
        daemon.stop_disk(settings, daemon.disk_dir(settings.storage_dir,
                                                   instance, TARGET))


class NotAsClaimed(Exception):
    """A daemon of the step is not restricted, or not unrestricted, as
    the figures would claim.
    """


def check(ours: Served, root: Served, uid: int, settings) -> str:
    """In ``/proc``, while both serve: the restricted daemon runs as the
    instance's uid in its own mount namespace, cgroup and seccomp filter;
    the other as root with none of them.

    :returns: what was checked.
    :raises NotAsClaimed: either is not as its figures would claim.
    """
    def fail(what: str) -> typing.NoReturn:
        raise NotAsClaimed(what)

    own_mounts = os.readlink('/proc/self/ns/mnt')
    if set(common.proc_status('Uid', ours.pid).split()) != {str(uid)}:
        fail('the restricted daemon does not run as uid %d' % uid)
    if os.readlink('/proc/%d/ns/mnt' % ours.pid) == own_mounts:
        fail('the restricted daemon shares dom0\'s mounts')
    checked = ['restricted: uid %d, own mount namespace' % uid]
    if settings.cgroup_limits == constants.CGROUPS_REQUIRED:
        with open('/proc/%d/cgroup' % ours.pid) as handle:
            group = '%s/dm-%d' % (daemon.cgroup_parent(settings, TARGET),
                                  uid)
            if '/%s\n' % group not in handle.read():
                fail('the restricted daemon is not in its cgroup')
        checked.append('cgroup %s' % group)
    if settings.launcher_seccomp:
        if common.proc_status('Seccomp', ours.pid) != '2':
            fail('the restricted daemon runs without its seccomp filter')
        checked.append('Seccomp 2')
    if common.proc_status('Uid', root.pid).split()[0] != '0' or \
            common.proc_status('Seccomp', root.pid) != '0' or \
            os.readlink('/proc/%d/ns/mnt' % root.pid) != own_mounts:
        fail('the daemon as root is not unrestricted')
    return '; '.join([', '.join(checked),
                      'root: uid 0, Seccomp 0, dom0\'s mounts'])


def summarise(pairs: typing.List[typing.Tuple[dict, dict]]
              ) -> typing.Dict[str, typing.Any]:
    """Medians of each side over the runs, and the median of the runs'
    own ratios (restricted / root).
    """
    out: typing.Dict[str, typing.Any] = {}
    for index, side in enumerate(('restricted', 'unrestricted')):
        out[side] = {metric: statistics.median(pair[index][metric]
                                               for pair in pairs)
                     for metric in METRICS}
        out[side]['runs'] = [pair[index] for pair in pairs]
    out['ratio'] = {metric: statistics.median(
        pair[0][metric] / pair[1][metric] for pair in pairs)
        for metric in METRICS}
    return out


def image_parent(workdir: str) -> str:
    """Where the images go: a tmpfs when there is room (``/dev/shm``),
    so that no disk, journal or writeback of other work on the machine
    shows in the figures, else ``workdir``.
    """
    shm = '/dev/shm'
    try:
        room = os.statvfs(shm)
    except OSError:
        return workdir
    if common.filesystem(shm) == 'tmpfs' and \
            room.f_bavail * room.f_frsize > 4 * IMAGE_MIB << 20:
        return shm
    return workdir


def _restrictions(settings) -> str:
    applied = ['uid', 'own mount namespace (the chain only)']
    if settings.cgroup_limits == constants.CGROUPS_REQUIRED:
        applied.append('cgroup (memory %d MiB, %d processes)' % (
            settings.device_model_memory_mib,
            settings.device_model_max_processes))
    if settings.launcher_seccomp:
        applied.append('seccomp filter')
    return ', '.join(applied)


def _settings(env: hostenv.HostEnv, instances: str, storage: str,
              binary: str) -> typing.Tuple[typing.Any, typing.List[str]]:
    """The host's settings as the hook loads them; what the machine
    lacks is left out and noted.
    """
    env.write_config(
        allowed_host_paths='%s/{instance},%s/_base' % (instances, instances),
        storage_daemon='enabled', storage_dir=storage,
        storage_daemon_binary=binary)
    settings = env.settings()
    notes = []
    missing = cgroup.available()
    if missing:
        notes.append('restricted without a cgroup: %s' % missing)
        settings = dataclasses.replace(
            settings, cgroup_limits=constants.CGROUPS_OFF)
    missing = seccomp.available()
    if missing:
        notes.append('restricted without seccomp: %s' % missing)
        settings = dataclasses.replace(settings, launcher_seccomp=False)
    return settings, notes


def run(workdir: str, runs: int = 5, toggles: bool = False
        ) -> typing.Dict[str, typing.Any]:
    """Paired runs of the restricted daemon and the daemon as root
    (and, with ``toggles``, of the restricted one less a restriction).
    """
    binary = settings_mod.Settings.storage_daemon_binary
    reason = skip_reason(binary)
    if reason:
        return {'skipped': reason}
    scratch = tempfile.mkdtemp(prefix='disk-', dir=workdir)
    images_dir = tempfile.mkdtemp(prefix='xdr-bench-disk-',
                                  dir=image_parent(workdir))
    # A unix socket path must stay under 108 bytes.
    storage = tempfile.mkdtemp(prefix='xdr-bench-')
    guest, other = str(uuid_mod.uuid4()), str(uuid_mod.uuid4())
    env = hostenv.HostEnv(scratch, hostenv.free_block())
    uid = env.first
    filesystem = common.filesystem(images_dir)
    load = os.getloadavg()
    kinds = [RESTRICTED] + (list(TOGGLES) if toggles else [])
    pairs: typing.Dict[str, list] = {kind: [] for kind in kinds}
    try:
        env.add_user(hostenv.unique_name('xdr-bench-'), uid)
        instances = os.path.join(images_dir, 'instances')
        settings, notes = _settings(env, instances, storage, binary)
        images = Images(instances)

        def chain(instance: str):
            """A fresh overlay's chain, checked as the service checks it.
            """
            return disks.chain_for(images.fresh_overlay(instance), settings,
                                   pathscope.Scope(TENANT, instance))

        # First, while both serve, that they are what the figures claim.
        with restricted(settings, guest, uid, chain(guest)) as ours, \
                unrestricted(settings, chain(other), scratch) as root:
            verified = check(ours, root, uid, settings)
        for index in range(runs):
            for kind in kinds:
                changed = dataclasses.replace(settings,
                                              **TOGGLES.get(kind, {}))
                with restricted(changed, guest, uid, chain(guest)) as ours, \
                        unrestricted(settings, chain(other),
                                     scratch) as root:
                    measure_pair(*((root, ours) if index % 2 else
                                   (ours, root)), scratch)
                pairs[kind].append((ours.figures, root.figures))
    except NotAsClaimed as err:
        return {'failed': str(err)}
    except daemon.StorageError as err:
        return {'failed': 'the storage daemon did not start: %s' % err}
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        return {'skipped': 'the step could not run here: %s' % err}
    finally:
        hostenv.kill_uid(uid)
        env.remove_users()
        hostenv.remove_cgroup_parent(env.cgroup_parent)
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(images_dir, ignore_errors=True)
    result: typing.Dict[str, typing.Any] = {
        'binary': binary,
        'version': subprocess.run([binary, '--version'], capture_output=True,
                                  text=True).stdout.split('\n')[0],
        'client': subprocess.run([FIO, '--version'], capture_output=True,
                                 text=True).stdout.strip() + ' nbd engine',
        'image': '%d MiB raw _base file with data, qcow2 overlay, on %s'
                 % (IMAGE_MIB, filesystem),
        'restrictions': _restrictions(settings), 'notes': notes,
        'verified': verified, 'uid': uid,
        'random_depth': RANDOM_DEPTH,
        'runs': runs, 'load_before': load, 'load_after': os.getloadavg()}
    result.update(summarise(pairs[RESTRICTED]))
    if toggles:
        result['toggles'] = {kind: summarise(pairs[kind])
                             for kind in TOGGLES}
    return result
