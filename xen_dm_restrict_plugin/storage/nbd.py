"""The kernel's nbd device between a storage daemon and the guest.

``nbd-client`` (Debian: nbd-client) does the NBD handshake with the
daemon's unix socket and hands the socket to the kernel; from then on the
kernel's nbd driver speaks to the daemon and the guest gets
``/dev/nbdN`` through the kernel backend (``phy``) at the domain's stable
path, a symlink :func:`link` points at it.  A free device is one the
kernel reports no server for (``/sys/block/nbdN/pid`` absent); picking
one is serialised with an flock.
"""

import fcntl
import logging
import os
import subprocess
import typing

LOG = logging.getLogger(__name__)

NBD_CLIENT = 'nbd-client'
SYS_BLOCK = '/sys/block'
LOCK = '.nbd.lock'


class NbdError(Exception):
    """The kernel's nbd device could not be connected or found."""


def module_loaded(sys_block: str = SYS_BLOCK) -> bool:
    """Whether the kernel has nbd devices (the nbd module is loaded)."""
    return os.path.exists(os.path.join(sys_block, 'nbd0'))


def free_devices(sys_block: str = SYS_BLOCK) -> typing.List[str]:
    """``/dev/nbdN`` with no server, in order."""
    try:
        names = os.listdir(sys_block)
    except OSError:
        return []
    found = []
    for name in names:
        if name.startswith('nbd') and name[3:].isdigit() and not \
                os.path.exists(os.path.join(sys_block, name, 'pid')):
            found.append((int(name[3:]), '/dev/' + name))
    return [path for _, path in sorted(found)]


def connect(storage_dir: str, socket: str, export: str) -> str:
    """Connect a free nbd device to the daemon at ``socket``.

    :returns: the device path.
    :raises NbdError: no module, no free device, or nbd-client failed.
    """
    if not module_loaded():
        raise NbdError('the kernel has no nbd devices (modprobe nbd)')
    os.makedirs(storage_dir, mode=0o711, exist_ok=True)
    with open(os.path.join(storage_dir, LOCK), 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for device in free_devices():
            result = subprocess.run(
                [NBD_CLIENT, '-unix', socket, device, '-N', export],
                capture_output=True, text=True, timeout=30)
            if result.returncode == 0:
                LOG.info('nbd device %s connected to %s', device, socket)
                return device
            LOG.warning('nbd-client %s failed: %s', device,
                        result.stderr.strip())
    raise NbdError('no nbd device could be connected to %s' % socket)


def disconnect(device: str) -> None:
    result = subprocess.run([NBD_CLIENT, '-d', device], capture_output=True,
                            text=True, timeout=30)
    if result.returncode != 0:
        LOG.warning('nbd-client -d %s failed: %s', device,
                    result.stderr.strip())


def link(path: str, device: str) -> None:
    """Point the domain's stable path at ``device`` (atomically)."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    tmp = path + '.new'
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(device, tmp)
    os.replace(tmp, path)


def unlink(path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)
