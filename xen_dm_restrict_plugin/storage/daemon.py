"""A deprivileged qemu-storage-daemon serving one qcow2 disk of one guest.

libxl would serve a qcow2 disk with a QEMU qdisk backend in dom0, which
does not work under ``-xen-domid-restrict`` and, for PV guests, runs as
root.  Instead each such disk gets a ``qemu-storage-daemon`` (Debian:
``qemu-system-common``) of its own, started by the daemon hook at
``prepare``:

* as the instance's uid and gid (the device model's lease: never root,
  never another instance's), with no supplementary groups;
* in a mount namespace of its own whose root is an empty tmpfs holding
  only the program and the libraries it links and the files of the
  image's backing chain (bind-mounted at their own paths, backing files
  read-only); nothing else of dom0's file system is reachable;
* in a cgroup of the instance's disk
  (``CGROUP_PARENT/storage/TARGET/dm-UID``) with the
  device model's limits, and under the launcher's seccomp filter;
* handed the whole chain explicitly, one ``--blockdev`` per file in JSON
  with ``backing`` set (``null`` at the bottom), so that it never opens a
  file by a name found in an image; the chain was checked by root reading
  only the fixed qcow2 headers
  (:func:`xen_dm_restrict_plugin.core.disks.chain_for`);
* exporting the top node over NBD on a unix socket that root makes at
  ``STORAGE_DIR/UUID/TARGET.d/nbd.sock`` (a directory only root may
  enter) and hands over as a listening descriptor
  (``--nbd-server addr.type=fd``): the uid never names the path root's
  ``nbd-client`` connects to, so a daemon its image exploited cannot
  replace it with another instance's socket.  Root knows the daemon is
  ready when it answers an NBD handshake on that socket.

The kernel's nbd device is connected to that socket
(:mod:`xen_dm_restrict_plugin.storage.nbd`) and the guest gets it as a
``phy`` disk at the domain's stable path.  Ownership of the top image is
handled as libvirt's DAC driver does on KVM: given to the instance's uid
while the daemon runs, restored when it stops (the original owner, mode
and inode are kept in ``state.json``), both through a descriptor opened
without following a symlink; an image with a second hard link is
refused (it could be someone else's file); backing files are opened
read-only and must be readable by the instance's uid (Nova's ``_base``
files are 0644).  The daemon dies with the domain: the reaper kills
every process of the uid at ``stopped``, and :func:`stop` removes what
is left.
"""

import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket as socket_mod
import stat
import struct
import subprocess
import time
import typing

from xen_dm_restrict_plugin.core import disks
from xen_dm_restrict_plugin.core import imageformat
from xen_dm_restrict_plugin.launcher import cgroup
from xen_dm_restrict_plugin.launcher import seccomp

LOG = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

EXPORT = 'disk'
STATE = 'state.json'
SOCKET = 'nbd.sock'
#: How long the daemon has to open the chain and listen.
START_TIMEOUT = 10.0


class StorageError(Exception):
    """The storage daemon could not be started or stopped."""


@dataclasses.dataclass(frozen=True)
class Served:
    """One running daemon, as recorded in its ``state.json``."""

    instance: str
    target: str
    uid: int
    gid: int
    pid: int
    socket: str
    image: str
    owner: typing.Tuple[int, int, int]
    device: typing.Optional[str] = None
    #: ``(st_dev, st_ino)`` of the image given to the uid.
    inode: typing.Optional[typing.Tuple[int, int]] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def disk_dir(storage_dir: str, instance: str, target: str) -> str:
    """The run directory of one daemon-served disk, root's only.

    :raises ValueError: it would not be a direct child of
        ``STORAGE_DIR/INSTANCE`` (a target that is a path).
    """
    disks.stable_path(storage_dir, instance, target)
    return disks.run_path(storage_dir, instance, target + '.d')


def socket_path(storage_dir: str, instance: str, target: str) -> str:
    """Where root's listening socket for one disk lies."""
    return os.path.join(disk_dir(storage_dir, instance, target), SOCKET)


def blockdevs(chain: typing.Sequence[imageformat.Layer],
              top_writable: bool = True) -> typing.List[dict]:
    """The ``--blockdev`` options for ``chain`` (top first), bottom up.

    Every layer is named explicitly: a qcow2 node gets ``backing`` set to
    the node below it (``None`` at the bottom), so QEMU never opens a
    backing file by the name in the image.
    """
    out = []
    below: typing.Optional[str] = None
    for index in reversed(range(len(chain))):
        layer = chain[index]
        read_only = index != 0 or not top_writable
        out.append({'driver': 'file', 'node-name': 'file%d' % index,
                    'filename': layer.path, 'read-only': read_only})
        fmt = {'driver': layer.format, 'node-name': 'fmt%d' % index,
               'file': 'file%d' % index, 'read-only': read_only}
        if layer.format == imageformat.QCOW2:
            fmt['backing'] = below
        out.append(fmt)
        below = 'fmt%d' % index
    return out


def argv(binary: str, chain: typing.Sequence[imageformat.Layer],
         listen: typing.Union[int, str], top_writable: bool = True
         ) -> typing.List[str]:
    """The daemon's command line.

    :param listen: the descriptor of the listening socket root made (how
        :func:`start` runs every daemon), or a socket path the daemon
        makes itself (only for a daemon that runs as root, such as the
        bench's baseline).
    """
    args = [binary]
    for node in blockdevs(chain, top_writable):
        args += ['--blockdev', json.dumps(node, sort_keys=True)]
    address = ('addr.type=fd,addr.str=%d' % listen if isinstance(listen, int)
               else 'addr.type=unix,addr.path=%s' % listen)
    args += ['--nbd-server', address,
             '--export', 'type=nbd,id=export0,node-name=fmt0,name=%s,'
             'writable=%s' % (EXPORT, 'on' if top_writable else 'off')]
    return args


def libraries(binary: str) -> typing.List[str]:
    """The program and the shared objects it links, resolved (ldd)."""
    out = subprocess.run(['ldd', binary], check=True, capture_output=True,
                         text=True, timeout=10).stdout
    found = [os.path.realpath(binary)]
    for line in out.splitlines():
        for word in line.split():
            if word.startswith('/') and os.path.exists(word):
                found.append(word)
                found.append(os.path.realpath(word))
    return sorted(set(found))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _call(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, '%s: %s' % (what, os.strerror(err)))


def _mount(source: typing.Optional[str], target: str,
           fstype: typing.Optional[str], flags: int,
           data: typing.Optional[str] = None) -> None:
    libc = _libc()
    _call(libc.mount(source and source.encode(), target.encode(),
                     fstype and fstype.encode(), ctypes.c_ulong(flags),
                     data and data.encode()), 'mount %s' % target)


def _bind(root: str, path: str, read_only: bool) -> None:
    inside = root + path
    os.makedirs(os.path.dirname(inside), mode=0o755, exist_ok=True)
    if os.path.isdir(path):
        os.makedirs(inside, mode=0o755, exist_ok=True)
    elif not os.path.exists(inside):
        os.close(os.open(inside, os.O_CREAT | os.O_WRONLY, 0o600))
    _mount(path, inside, None, MS_BIND)
    if read_only:
        _mount(None, inside, None,
               MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def cgroup_parent(settings, target: str) -> str:
    """The cgroup parent of one disk's daemon: each disk of an instance
    has a group of its own (all run as the instance's uid).
    """
    return '%s/storage/%s' % (settings.cgroup_parent, target)


def _child(settings, target: str, served_uid: int, gid: int, root: str,
           files: typing.Sequence[typing.Tuple[str, bool]], listen_fd: int,
           args: typing.Sequence[str], log_fd: int) -> None:
    """In the forked child: namespace, root, cgroup, identity, filter,
    exec.  Never returns.
    """
    try:
        os.setsid()
        libc = _libc()
        _call(libc.unshare(ctypes.c_int(CLONE_NEWNS | CLONE_NEWIPC)),
              'unshare')
        _mount(None, '/', None, MS_REC | MS_PRIVATE)
        _mount('tmpfs', root, 'tmpfs', MS_NOSUID | MS_NODEV,
               'mode=0755,size=1m')
        for path, read_only in files:
            _bind(root, path, read_only)
        _bind(root, '/dev/null', False)
        _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID
               | MS_NODEV)
        if settings.cgroup_limits == 'required':
            cgroup.enter(cgroup_parent(settings, target), served_uid,
                         cgroup.Limits(
                             pids_max=settings.device_model_max_processes,
                             memory_max_bytes=settings.device_model_memory_mib
                             << 20,
                             cpu_weight=settings.device_model_cpu_weight))
        if settings.launcher_seccomp:
            # Loaded while the library is still reachable; the filter is
            # installed once the uid is dropped (it kills setresuid).
            ctypes.CDLL(seccomp.LIBRARY, use_errno=True)
        os.chroot(root)
        os.chdir('/')
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        null = os.open('/dev/null', os.O_RDONLY)
        os.dup2(null, 0)
        # Nothing of root's but the listening socket: an inherited pipe
        # (libvirtd's hook output) would keep libvirtd waiting for the
        # hook to finish as long as the daemon runs.
        os.closerange(3, listen_fd)
        os.closerange(listen_fd + 1, os.sysconf('SC_OPEN_MAX'))
        os.set_inheritable(listen_fd, True)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(served_uid, served_uid, served_uid)
        if settings.launcher_seccomp:
            seccomp.install(served_uid, gid)
        os.execv(args[0], list(args))
    except BaseException as err:  # noqa: B902 - report, then die
        try:
            os.write(2, ('storage daemon set-up failed: %s\n' % err).encode())
        finally:
            os._exit(127)


def _readable_by(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    return bool(st.st_uid == uid and st.st_mode & stat.S_IRUSR
                or st.st_gid == gid and st.st_mode & stat.S_IRGRP
                or st.st_mode & stat.S_IROTH)


def start(settings, instance: str, target: str, uid: int, gid: int,
          chain: typing.Sequence[imageformat.Layer]) -> Served:
    """Start the daemon for one disk; return once it serves NBD.

    Root makes the listening unix socket, in a directory only root may
    enter, and hands the daemon the descriptor: the instance's uid never
    names, creates or replaces the path root's ``nbd-client`` connects
    to (a daemon exploited by its image cannot point root at another
    instance's socket).

    :raises StorageError: it could not be started (nothing is left).
    :raises ValueError: ``target`` is not a disk target name.
    """
    if uid == 0 or gid == 0:
        raise StorageError('the storage daemon never runs as root')
    for layer in chain[1:]:
        if not _readable_by(layer.path, uid, gid):
            raise StorageError(
                'backing file %s is not readable by uid %d (backing files '
                'are opened read-only by the instance\'s uid; make them '
                'world-readable, as Nova\'s _base files are)'
                % (layer.path, uid))
    directory = disk_dir(settings.storage_dir, instance, target)
    socket = os.path.join(directory, SOCKET)
    if len(socket) >= 108:
        raise StorageError('the socket path under [dm_restrict] storage_dir '
                           '%s is longer than a unix socket path may be; '
                           'use a shorter storage_dir' % settings.storage_dir)
    stop_disk(settings, directory)
    top = chain[0].path
    image_fd = _open_image(top)
    st = os.fstat(image_fd)
    owner = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    served = Served(instance, target, uid, gid, 0, socket, top, owner,
                    inode=(st.st_dev, st.st_ino))
    pid = None
    listener = None
    given = False
    try:
        os.makedirs(os.path.dirname(directory), mode=0o711, exist_ok=True)
        os.mkdir(directory, 0o700)
        root = os.path.join(directory, 'root')
        os.mkdir(root, 0o755)
        listener = socket_mod.socket(socket_mod.AF_UNIX,
                                     socket_mod.SOCK_STREAM)
        listener.bind(socket)
        listener.listen(16)
        files = [(path, True) for path in libraries(
            settings.storage_daemon_binary)]
        files += [(layer.path, index != 0)
                  for index, layer in enumerate(chain)]
        args = argv(settings.storage_daemon_binary, chain,
                    listener.fileno())
        log_fd = os.open(os.path.join(directory, 'daemon.log'),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         0o600)
        # As libvirt's DAC driver does: the image is the instance's while
        # it runs (through the descriptor checked above, never the path).
        given = True
        os.fchown(image_fd, uid, gid)
        os.fchmod(image_fd, 0o600)
        pid = os.fork()
        if pid == 0:
            _child(settings, target, uid, gid, root, files,
                   listener.fileno(), args, log_fd)
        os.close(log_fd)
        # Only the daemon holds the listener now: if it dies, a waiting
        # connection is refused instead of hanging.
        listener.close()
        served = dataclasses.replace(served, pid=pid)
        _write_state(directory, served)
        problem = _wait_serving(socket, pid, time.monotonic() + START_TIMEOUT)
        if problem:
            raise StorageError('the storage daemon for %s of %s did not '
                               'start (%s): %s' % (target, instance, problem,
                                                   _read_log(directory)))
    except BaseException:
        # Whatever failed, nothing is left: no daemon, the image given
        # back, no directory.
        if listener is not None:
            listener.close()
        if pid is not None:
            _kill_child(pid)
        if given:
            _give_back(image_fd, served)
        stop_disk(settings, directory)
        raise
    finally:
        os.close(image_fd)
    LOG.info('instance %s: storage daemon pid %d serves %s (%d layers) as '
             'uid %d on %s', instance, pid, top, len(chain), uid, socket)
    return served


def _kill_child(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _open_image(path: str) -> int:
    """A descriptor of the top image, refused when it is not a regular
    file of its own (a symlink, or a file with another hard link: root
    gives it to the instance's uid, so it must not be someone else's
    file under a second name).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as err:
        raise StorageError('image %s cannot be opened without following a '
                           'symlink: %s' % (path, err.strerror)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise StorageError(
            'image %s is %s; root gives the image to the instance\'s uid '
            'while it runs, so it must be a regular file with a single '
            'name' % (path, 'not a regular file' if not stat.S_ISREG(
                st.st_mode) else 'one of %d hard links to the same file'
                % st.st_nlink))
    return fd


def _wait_serving(socket: str, pid: int, deadline: float
                  ) -> typing.Optional[str]:
    """Wait until the daemon at ``socket`` greets an NBD client (it
    accepts only once every image is open and the export exists); why
    not, or None.
    """
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return 'it did not serve within %d s' % START_TIMEOUT
        try:
            if _greets(socket, remaining):
                return None
        except OSError:
            pass
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return 'it exited'
        time.sleep(0.01)


_NBD_MAGIC = b'NBDMAGICIHAVEOPT'
_NBD_OPT_ABORT = 2


def _greets(socket: str, timeout: float) -> bool:
    """One NBD handshake, given up at once (``NBD_OPT_ABORT``)."""
    with socket_mod.socket(socket_mod.AF_UNIX,
                           socket_mod.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(socket)
        greeting = b''
        while len(greeting) < 18:
            chunk = client.recv(18 - len(greeting))
            if not chunk:
                return False
            greeting += chunk
        if not greeting.startswith(_NBD_MAGIC):
            return False
        flags = struct.unpack('>H', greeting[16:18])[0] & 3
        client.sendall(struct.pack('>I', flags) + _NBD_MAGIC[8:]
                       + struct.pack('>II', _NBD_OPT_ABORT, 0))
        try:
            client.recv(20)
        except OSError:
            pass
        return True


def _read_log(directory: str) -> str:
    try:
        with open(os.path.join(directory, 'daemon.log'), errors='replace'
                  ) as handle:
            return handle.read()[-2000:].strip() or 'no output'
    except OSError:
        return 'no log'


def _write_state(directory: str, served: Served) -> None:
    tmp = os.path.join(directory, STATE + '.tmp')
    with open(tmp, 'w', encoding='utf-8') as handle:
        json.dump(served.to_dict(), handle)
    os.replace(tmp, os.path.join(directory, STATE))


def read_state(directory: str) -> typing.Optional[Served]:
    try:
        with open(os.path.join(directory, STATE), encoding='utf-8') as handle:
            data = json.load(handle)
        data['owner'] = tuple(data['owner'])
        if data.get('inode') is not None:
            data['inode'] = tuple(data['inode'])
        return Served(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def set_device(directory: str, device: str) -> None:
    served = read_state(directory)
    if served is not None:
        _write_state(directory, dataclasses.replace(served, device=device))


def _task_states(pid: int) -> typing.List[str]:
    """The scheduler state letter of every thread of ``pid``."""
    states = []
    try:
        tids = os.listdir('/proc/%d/task' % pid)
    except OSError:
        return states
    for tid in tids:
        try:
            with open('/proc/%d/task/%s/stat' % (pid, tid)) as handle:
                states.append(handle.read().rsplit(')', 1)[1].split()[0])
        except (OSError, IndexError):
            pass
    return states


def _is_ours(pid: int, uid: int) -> bool:
    """Whether ``pid`` is a process of ``uid`` that has not exited.

    A zombie whose threads have all exited has (only its parent can
    reap it: the process that started the daemon, while that runs); a
    zombie main thread whose other threads still run has not.
    """
    try:
        with open('/proc/%d/status' % pid) as handle:
            for line in handle:
                if line.startswith('Uid:'):
                    if int(line.split()[1]) != uid:
                        return False
                    break
            else:
                return False
    except OSError:
        return False
    return any(state not in ('Z', 'X') for state in _task_states(pid))


def _reap(pid: int, deadline: float) -> None:
    """Reap ``pid`` if it is a child of this process (the caller started
    the daemon and stops it); others are init's to reap.
    """
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def stop_disk(settings, directory: str) -> None:
    """Stop one daemon (if it runs), give the image back, remove its
    directory.
    """
    served = read_state(directory)
    if served is not None:
        deadline = time.monotonic() + 5
        signalled = _is_ours(served.pid, served.uid)
        if signalled:
            try:
                os.kill(served.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            while _is_ours(served.pid, served.uid) and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            if _is_ours(served.pid, served.uid):
                os.kill(served.pid, signal.SIGKILL)
        _reap(served.pid, deadline + 5 if signalled else 0)
        _restore(served)
        try:
            cgroup.remove(cgroup_parent(settings, served.target),
                          served.uid)
        except OSError as err:
            LOG.warning('instance %s: storage cgroup of uid %d not removed: '
                        '%s', served.instance, served.uid, err)
    if os.path.isdir(directory):
        root = os.path.join(directory, 'root')
        if os.path.isdir(root) and os.listdir(root):
            LOG.warning('storage root %s is not empty; leaving it', root)
            return
        shutil.rmtree(directory, ignore_errors=True)


def _restore(served: Served) -> None:
    """Give the image back to its owner, through a descriptor of the
    very file that was given away.
    """
    try:
        fd = os.open(served.image, os.O_RDONLY | os.O_NOFOLLOW
                     | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        _give_back(fd, served)
    finally:
        os.close(fd)


def _give_back(fd: int, served: Served) -> None:
    st = os.fstat(fd)
    if served.inode is not None and (st.st_dev, st.st_ino) != tuple(
            served.inode):
        LOG.warning('instance %s: %s is no longer the file given to uid %d; '
                    'its owner is left alone', served.instance,
                    served.image, served.uid)
        return
    if not stat.S_ISREG(st.st_mode) or st.st_uid != served.uid:
        return
    uid, gid, mode = served.owner
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)
    LOG.info('instance %s: %s given back to %d:%d mode %o',
             served.instance, served.image, uid, gid, mode)


def instance_dirs(storage_dir: str, instance: str) -> typing.List[str]:
    base = os.path.join(storage_dir, instance)
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    return [os.path.join(base, name) for name in names
            if name.endswith('.d')]


def running(storage_dir: str) -> typing.List[Served]:
    """Every daemon recorded under ``storage_dir`` (for reconcile)."""
    found = []
    try:
        instances = sorted(os.listdir(storage_dir))
    except OSError:
        return found
    for instance in instances:
        for directory in instance_dirs(storage_dir, instance):
            served = read_state(directory)
            if served is not None:
                found.append(served)
    return found


def alive(served: Served) -> bool:
    return _is_ours(served.pid, served.uid)
