"""What a disk image is, from its first bytes; a qcow2 backing chain.

A file's format is decided from its header, never from the domain's
``<driver type>`` alone: a file declared raw that starts with the header
of a format QEMU would probe (qcow, qcow2, QED, VMDK, VHD, VHDX, VDI,
LUKS, Parallels, Bochs, cloop, DMG) is refused, so no later reading of it
(an orchestrator's, or QEMU's if a format is ever left to probing) can
follow a backing-file name the guest wrote into its own disk.

For qcow2 only the fixed header is read (magic, version, backing-file
name, encryption, incompatible features, header extensions): root reads
these few hundred bytes and nothing else of the image; everything past
the header is read by the deprivileged storage daemon
(:mod:`xen_dm_restrict_plugin.storage`), to which the chain is handed
explicitly so that it never opens a file by a name found in an image.
"""

import dataclasses
import errno
import os
import stat
import struct
import typing

#: How much of a file the format sniff reads.
SNIFF_BYTES = 1024
#: A backing chain deeper than this is refused.
MAX_CHAIN = 16
#: qcow2's limit on the backing-file name (QEMU: 1023 bytes).
MAX_BACKING_NAME = 1023

RAW = 'raw'
QCOW2 = 'qcow2'

_QCOW_MAGIC = b'QFI\xfb'
#: Magic bytes at an offset, for the formats QEMU's probes recognise.
_SIGNATURES = (
    (0, b'QED\x00', 'qed'),
    (0, b'KDMV', 'vmdk'),
    (0, b'COWD', 'vmdk'),
    (0, b'# Disk DescriptorFile', 'vmdk'),
    (0, b'conectix', 'vpc'),
    (0, b'vhdxfile', 'vhdx'),
    (0x40, b'\x7f\x10\xda\xbe', 'vdi'),
    (0, b'<<< ', 'vdi'),
    (0, b'LUKS\xba\xbe', 'luks'),
    (0, b'WithoutFreeSpace', 'parallels'),
    (0, b'WithouFreSpacExt', 'parallels'),
    (0, b'Bochs Virtual HD Image', 'bochs'),
    (0, b'#!/bin/sh\n#V2.0 Format\nmodprobe cloop', 'cloop'),
)

# qcow2 header fields (big endian), QEMU docs/interop/qcow2.txt.
_EXT_END = 0
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_DATA_FILE = 0x44415441
_EXT_CRYPTO = 0x0537BE77
_INCOMPAT_DATA_FILE = 1 << 2


class ImageProblem(Exception):
    """Why an image or its chain may not be served."""


def open_regular(path: str, resolved: bool = False) -> int:
    """A read-only descriptor of the regular file ``path`` resolves to.

    Only a regular file is opened: the resolved path is examined first
    (a device is never opened: opening one may act), then opened without
    following a symlink swapped in since and without blocking, and
    examined again through the descriptor; a file of procfs or sysfs
    (``/proc/kmsg``, whose reads block and consume dom0's kernel log) is
    closed again unread.

    :param resolved: ``path`` is already resolved (by the check that
        allowed it), and is not resolved again.
    :raises OSError: it cannot be opened, or is not a regular file.
    """
    return _open_regular(path, resolved)[0]


def _open_regular(path: str, resolved: bool
                  ) -> typing.Tuple[int, os.stat_result]:
    """:func:`open_regular`, and what ``fstat`` says of the descriptor."""
    real = path if resolved else os.path.realpath(path)
    if not stat.S_ISREG(os.lstat(real).st_mode):
        # Opening a device may act (a tape rewinds on close): not even that.
        raise OSError(errno.EINVAL, 'not a regular file', path)
    fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
                 | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or _is_pseudo(info.st_dev):
            raise OSError(errno.EINVAL, 'not a regular file', path)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _is_pseudo(dev: int) -> bool:
    """Whether device ``dev`` is procfs or sysfs, whose "regular" files
    (``/proc/kmsg``) are the kernel's, not images.
    """
    for mount in ('/proc', '/sys'):
        try:
            if os.stat(mount).st_dev == dev:
                return True
        except OSError:
            continue
    return False


def sniff(path: str, resolved: bool = False) -> str:
    """The format of the regular file at ``path`` from its first bytes:
    ``raw`` unless it carries a header QEMU would recognise.

    :param resolved: as for :func:`open_regular`.
    :raises OSError: it cannot be read, or is not a regular file.
    """
    fd, info = _open_regular(path, resolved)
    try:
        head = os.pread(fd, SNIFF_BYTES, 0)
        size = info.st_size
        tail = os.pread(fd, 512, size - 512) if size >= 1024 else b''
    finally:
        os.close(fd)
    return sniff_bytes(head, tail)


def sniff_bytes(head: bytes, tail: bytes = b'') -> str:
    """The format named by a header (and, for DMG, a trailer)."""
    if head.startswith(_QCOW_MAGIC):
        version = struct.unpack('>I', head[4:8])[0] if len(head) >= 8 else 0
        return 'qcow' if version == 1 else QCOW2
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    if tail[:4] == b'koly':
        return 'dmg'
    return RAW


@dataclasses.dataclass(frozen=True)
class Qcow2Header:
    """The parts of a qcow2 header that say which other files it opens."""

    version: int
    backing_name: typing.Optional[str]
    backing_format: typing.Optional[str]


def read_qcow2_header(path: str) -> Qcow2Header:
    """Read the fixed header of the qcow2 image at ``path``.

    :raises ImageProblem: it is not a qcow2 image this product serves
        (encrypted, an external data file, a malformed header).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 4096, 0)
        if len(head) < 72 or not head.startswith(_QCOW_MAGIC):
            raise ImageProblem('%r is not a qcow2 image' % path)
        version, backing_offset, backing_size = struct.unpack(
            '>IQI', head[4:20])
        crypt_method = struct.unpack('>I', head[32:36])[0]
        if version not in (2, 3):
            raise ImageProblem('%r is qcow2 version %d; only 2 and 3 are '
                               'served' % (path, version))
        if crypt_method:
            raise ImageProblem('%r is encrypted; encrypted images need a '
                               'secret this product does not hand out'
                               % path)
        header_length = 72
        if version == 3:
            if len(head) < 104:
                raise ImageProblem('%r has a truncated header' % path)
            incompatible = struct.unpack('>Q', head[72:80])[0]
            if incompatible & _INCOMPAT_DATA_FILE:
                raise ImageProblem('%r keeps its data in an external data '
                                   'file, another host file QEMU would open'
                                   % path)
            header_length = struct.unpack('>I', head[100:104])[0]
        backing_format = None
        offset = header_length
        while offset + 8 <= len(head):
            kind, length = struct.unpack('>II', head[offset:offset + 8])
            if kind == _EXT_END:
                break
            data = head[offset + 8:offset + 8 + length]
            if kind == _EXT_BACKING_FORMAT:
                backing_format = data.decode('ascii', 'replace')
            elif kind == _EXT_DATA_FILE:
                raise ImageProblem('%r names an external data file' % path)
            elif kind == _EXT_CRYPTO:
                raise ImageProblem('%r is encrypted' % path)
            offset += 8 + (length + 7) // 8 * 8
        backing_name = None
        if backing_offset:
            if backing_size > MAX_BACKING_NAME:
                raise ImageProblem('%r has a backing-file name longer than '
                                   'QEMU allows' % path)
            # Offsets come from the image: bounded by the file before
            # they reach pread (2**63 and more overflow it).
            if backing_offset > size or backing_size > size - backing_offset:
                raise ImageProblem('%r places its backing-file name at '
                                   'offset %d, length %d, past its end (%d '
                                   'bytes)' % (path, backing_offset,
                                               backing_size, size))
            raw = os.pread(fd, backing_size, backing_offset)
            if len(raw) != backing_size:
                raise ImageProblem('%r has a truncated backing-file name'
                                   % path)
            try:
                backing_name = raw.decode('utf-8')
            except UnicodeDecodeError:
                raise ImageProblem('%r has a backing-file name that is not '
                                   'UTF-8' % path) from None
    finally:
        os.close(fd)
    return Qcow2Header(version, backing_name, backing_format)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One file of a backing chain, top first."""

    path: str
    format: str


def backing_path(image: str, name: str) -> str:
    """The host path QEMU would open for backing-file ``name`` of
    ``image``, or :class:`ImageProblem` if it is not a plain file name.

    QEMU takes a name with a ``protocol:`` prefix or ``json:`` as a
    protocol spec, and a relative name relative to the image's directory.
    Any colon, a control character or an empty name is refused.
    """
    if not name or ':' in name or any(ord(c) < 32 for c in name):
        raise ImageProblem('%r names the backing file %r, which is not a '
                           'plain file name (a json: or protocol spec, a '
                           'colon, or a control character)' % (image, name))
    if not name.startswith('/'):
        name = os.path.join(os.path.dirname(image), name)
    return os.path.normpath(name)


def chain(path: str,
          allowed: typing.Callable[[str, bool], typing.Optional[str]],
          declared: typing.Optional[str] = QCOW2) -> typing.List[Layer]:
    """The backing chain of the image at ``path``, top first, checked.

    :param path: the image the domain names.
    :param allowed: ``allowed(path, writable)`` gives why a file may not be
        used (None when it may): the top layer is used writable, backing
        files read-only.
    :param declared: the format the domain declares for the top layer.
    :raises ImageProblem: a file is outside what ``allowed`` allows, not
        a regular file, of a format other than declared (or than its
        parent's backing format), a loop, or the chain is too deep.
    """
    layers: typing.List[Layer] = []
    seen: typing.Set[typing.Tuple[int, int]] = set()
    current, fmt, writable = path, declared, True
    while True:
        reason = allowed(current, writable)
        if reason:
            raise ImageProblem(reason)
        st = os.stat(current)
        if (st.st_dev, st.st_ino) in seen:
            raise ImageProblem('the backing chain of %r loops back to %r'
                               % (path, current))
        seen.add((st.st_dev, st.st_ino))
        found = sniff(current)
        if fmt is not None and found != fmt:
            raise ImageProblem('%r is declared %s but its header says %s'
                               % (current, fmt, found))
        if found not in (RAW, QCOW2):
            raise ImageProblem('%r is a %s image; only raw and qcow2 are '
                               'served' % (current, found))
        layers.append(Layer(os.path.realpath(current), found))
        if found == RAW:
            return layers
        header = read_qcow2_header(current)
        if header.backing_name is None:
            return layers
        if len(layers) >= MAX_CHAIN:
            raise ImageProblem('the backing chain of %r is deeper than %d'
                               % (path, MAX_CHAIN))
        if header.backing_format not in (None, RAW, QCOW2):
            raise ImageProblem('%r declares backing format %r; only raw and '
                               'qcow2 are served'
                               % (current, header.backing_format))
        current = backing_path(current, header.backing_name)
        fmt, writable = header.backing_format, False
