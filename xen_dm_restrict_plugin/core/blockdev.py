"""Block devices a guest may have: by identity, and never one dom0 uses.

On a real host an LVM volume is ``/dev/VG/LV`` and an iSCSI LUN is
``/dev/disk/by-path/ip-...:3260-iscsi-...-lun-N``: udev symlinks to
``/dev/dm-N`` and ``/dev/sdX``.  :func:`hostpaths.problem` lets such a
symlink in an allowed directory resolve to a device node in ``/dev``;
this module says whether the device it reaches may be given to a guest:
an LVM name must reach the device-mapper device of that very name, and
the device must not be in dom0's use -- mounted (itself or a partition),
active swap, or held by another device (a PV whose LVs are active, an md
or dm-crypt member) -- and not already served to a running guest by the
kernel's block backend (blkback opens the device without registering as
a holder, so only its own sysfs attribute shows it).  It reads ``/proc``
and ``/sys`` only (the roots can be changed for tests).

:func:`problem` is the one check every block device a domain names goes
through, whatever the disk kind (disk, CD-ROM, a character device's
path).

What this cannot tell: whose a device is.  An LV of a shared volume
group, a LUN in a shared ``/dev/disk/by-path`` or an image in a shared
``/dev/rbd`` directory may be named by any instance the operator lets
write there; a device another guest uses *right now* is refused, one
attached for a stopped instance is not.  Where that matters, scope the
directory per instance (a udev rule or the orchestrator's own links under
e.g. ``/dev/disk/by-instance/{instance}``); see the storage page.
"""

import os
import re
import typing

#: ``/dev/VG/LV``: LVM's own symlink (not /dev/disk, /dev/mapper, ...).
_LVM_NAME_RE = re.compile(r'^/dev/([A-Za-z0-9+_.][A-Za-z0-9+_.-]*)/'
                          r'([A-Za-z0-9+_.][A-Za-z0-9+_.-]*)$')
_NOT_VGS = frozenset(('disk', 'mapper', 'block', 'char', 'rbd', 'bus',
                      'cpu', 'fd', 'hugepages', 'input', 'mqueue', 'net',
                      'pts', 'shm', 'snd', 'vfio', 'xen'))


def _read(path: str) -> typing.Optional[str]:
    try:
        with open(path, encoding='utf-8', errors='replace') as handle:
            return handle.read()
    except OSError:
        return None


def _devnum(path: str) -> typing.Tuple[int, int]:
    rdev = os.stat(path).st_rdev
    return os.major(rdev), os.minor(rdev)


def _sys_dir(sys_root: str, devnum: typing.Tuple[int, int]) -> str:
    return os.path.join(sys_root, 'dev/block/%d:%d' % devnum)


def _partitions(sys_dir: str) -> typing.List[typing.Tuple[int, int]]:
    found = []
    try:
        names = os.listdir(sys_dir)
    except OSError:
        return found
    for name in names:
        text = _read(os.path.join(sys_dir, name, 'dev'))
        if text and os.path.exists(os.path.join(sys_dir, name, 'partition')):
            major, minor = text.strip().split(':')
            found.append((int(major), int(minor)))
    return found


def _mounted(proc_root: str) -> typing.Set[typing.Tuple[int, int]]:
    found = set()
    for line in (_read(os.path.join(proc_root, 'self/mountinfo')) or ''
                 ).splitlines():
        fields = line.split()
        if len(fields) > 2 and ':' in fields[2]:
            major, minor = fields[2].split(':', 1)
            found.add((int(major), int(minor)))
    return found


def _swaps(proc_root: str) -> typing.Set[typing.Tuple[int, int]]:
    found = set()
    for line in (_read(os.path.join(proc_root, 'swaps')) or ''
                 ).splitlines()[1:]:
        fields = line.split()
        if fields and fields[1:2] == ['partition']:
            try:
                found.add(_devnum(fields[0]))
            except OSError:
                continue
    return found


def identity_problem(written: str, real: str,
                     sys_root: str = '/sys') -> typing.Optional[str]:
    """Why the device ``written`` resolves to is not the one its name
    says, or None.  ``/dev/VG/LV`` must reach the device-mapper device
    LVM names ``VG-LV`` (dashes doubled); ``/dev/mapper/NAME`` the one
    named NAME.
    """
    expected = None
    match = _LVM_NAME_RE.match(written)
    if match and match.group(1) not in _NOT_VGS:
        expected = '%s-%s' % tuple(part.replace('-', '--')
                                   for part in match.groups())
    elif written.startswith('/dev/mapper/'):
        expected = written[len('/dev/mapper/'):]
    if expected is None:
        return None
    name = _read(os.path.join(_sys_dir(sys_root, _devnum(real)), 'dm/name'))
    if name is None or name.strip() != expected:
        return ('%r resolves to %r, which is not the device-mapper device '
                '%r' % (written, real, expected))
    return None


def _backend_users(devnum: typing.Tuple[int, int], sys_root: str
                   ) -> typing.List[str]:
    """The Xen block backends (``vbd-DOMID-DEVID``) serving ``devnum``.

    Linux's xen-blkback shows the device it serves as the sysfs attribute
    ``physical_device`` of its xenbus device, as ``"%x:%x"`` of major and
    minor (``VBD_SHOW(physical_device, ...)`` in
    drivers/block/xen-blkback/xenbus.c); a file disk is served through a
    loop device, which then shows here.
    """
    found = []
    devices = os.path.join(sys_root, 'bus/xen-backend/devices')
    try:
        names = sorted(os.listdir(devices))
    except OSError:
        return found
    for name in names:
        if not name.startswith('vbd'):
            continue
        text = _read(os.path.join(devices, name, 'physical_device'))
        try:
            major, minor = (int(part, 16)
                            for part in (text or '').strip().split(':'))
        except ValueError:
            continue
        if (major, minor) == devnum:
            found.append(name)
    return found


def guest_use(real: str, sys_root: str = '/sys') -> typing.Optional[str]:
    """Which running guest's block backend already serves ``real``, or
    None.  blkback does not register as a holder of the device it serves,
    so :func:`dom0_use` cannot see it.
    """
    users = _backend_users(_devnum(real), sys_root)
    if users:
        return ('%s is already served to a running guest by the Xen block '
                'backend (%s; vbd-DOMID-DEVICE)' % (real, ', '.join(users)))
    return None


def problem(written: str, real: str, proc_root: str = '/proc',
            sys_root: str = '/sys') -> typing.Optional[str]:
    """Why the block device ``real`` (named ``written`` by a domain) may
    not be given to a guest, or None: its name does not say which device
    it is, dom0 uses it, or a running guest already has it.
    """
    return (identity_problem(written, real, sys_root)
            or dom0_use(real, proc_root, sys_root)
            or guest_use(real, sys_root))


def dom0_use(real: str, proc_root: str = '/proc',
             sys_root: str = '/sys') -> typing.Optional[str]:
    """How dom0 uses the block device ``real``, or None.

    :param real: the device node, every symlink resolved.
    """
    devnum = _devnum(real)
    sys_dir = _sys_dir(sys_root, devnum)
    parts = _partitions(sys_dir)
    mounted = _mounted(proc_root)
    swaps = _swaps(proc_root)
    for num, what in [(devnum, real)] + [
            (part, 'its partition %d:%d' % part) for part in parts]:
        if num in mounted:
            return '%s is mounted in dom0' % what
        if num in swaps:
            return '%s is dom0\'s swap' % what
        holders_dir = os.path.join(_sys_dir(sys_root, num), 'holders')
        try:
            holders = sorted(os.listdir(holders_dir))
        except OSError:
            holders = []
        if holders:
            return ('%s is held by %s in dom0 (an LVM physical volume with '
                    'active volumes, an md or dm-crypt member, ...)'
                    % (what, ', '.join(holders)))
    return None
