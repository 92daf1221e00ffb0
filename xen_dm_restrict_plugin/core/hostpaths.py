"""Host paths a domain names, checked the way libxl and QEMU will open them.

Disk and CD-ROM sources, kernel, initrd, loader, ACPI tables and
character-device paths are opened by libxl or by QEMU as root, before the
device model drops its privileges.  A path passes only when it lies under
one of the operator's ``[dm_restrict] allowed_host_paths`` prefixes both
as written and once every symlink is resolved (so ``..`` and a symlink
out of the prefix are refused), is of the expected type, and holds only
characters that survive being pasted into a QEMU option string (libxl
writes ``file=PATH,...`` without escaping, so a comma would add options).

Disk sources may also hold a colon, and a block device may be named by a
udev symlink in an allowed directory that resolves to a device node in
``/dev`` (see :mod:`xen_dm_restrict_plugin.core.blockdev`).  An allowed
entry may hold ``{tenant}`` and ``{instance}``
(:mod:`xen_dm_restrict_plugin.core.pathscope` expands them for one
domain; here, without a scope, each stands for one path component).

The check runs at render time and again in the libvirt daemon hook right
before the domain starts, on the host that starts it.  A path swapped for
a symlink between that check and libxl's open stays possible; keep the
allowed prefixes in directories only root can write.
"""

from __future__ import annotations

import enum
import os
import re
import stat

# On the launcher's start-up path: see qemu_args.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

#: What a path may be written with: no comma, colon, whitespace, quote or
#: control character.
_PATH_RE = re.compile(r'^/[A-Za-z0-9_./+@-]*$')
#: Disk sources may also hold a colon (iSCSI by-path names, LVM names):
#: libxl hands the path to the block hotplug script as it is, and QEMU
#: takes a name that starts with "/" as a file name, never as a
#: "protocol:" spec (``path_has_protocol`` stops at the first slash).
_DISK_PATH_RE = re.compile(r'^/[A-Za-z0-9_./+@:-]*$')
#: Where udev puts block device nodes a by-identity symlink may resolve to.
_DEVICE_NODE_RE = re.compile(r'^/dev/(mapper/)?[A-Za-z0-9_.:+-]+$')
#: ``{tenant}`` and ``{instance}`` in an allowed_host_paths entry.
PLACEHOLDER_RE = re.compile(r'\{(tenant|instance)\}')


class Expect(enum.Enum):
    """What the path must be on the host."""

    BLOCK = 'a block device'
    FILE = 'a regular file'
    BLOCK_OR_FILE = 'a block device or a regular file'
    NEW_FILE = 'a regular file or a name to create in an existing directory'
    SOCKET = 'a unix socket or a name to create in an existing directory'
    ANY = 'anything'


def _under(path: str, prefixes: typing.Iterable[str]) -> bool:
    for prefix in prefixes:
        prefix = prefix.rstrip('/') or '/'
        if '{' in prefix and PLACEHOLDER_RE.search(prefix):
            # Not scoped to one instance here (the launcher's check): a
            # placeholder stands for one path component.
            if re.match('^%s(/|$)' % _placeholder_pattern(prefix), path):
                return True
            continue
        if prefix == '/' or path == prefix or path.startswith(prefix + '/'):
            return True
    return False


def _placeholder_pattern(prefix: str) -> str:
    out, last = [], 0
    for match in PLACEHOLDER_RE.finditer(prefix):
        out.append(re.escape(prefix[last:match.start()]))
        out.append('[^/]+')
        last = match.end()
    out.append(re.escape(prefix[last:]))
    return ''.join(out)


def under(path: str, prefixes: typing.Iterable[str]) -> bool:
    """Whether ``path`` is ``prefixes``' entry or lies under one."""
    return _under(path, prefixes)


def problem(path: typing.Optional[str], prefixes: typing.Sequence[str],
            expect: Expect, disk: bool = False) -> typing.Optional[str]:
    """Why ``path`` may not be opened by libxl or QEMU as root, or None.

    :param path: the path as the domain writes it.
    :param prefixes: the allowed directory prefixes.
    :param expect: what the path must be.
    :param disk: it is a disk source: a colon is allowed, and a block
        device may be named by a udev-style symlink in an allowed
        directory (``/dev/VG/LV``, ``/dev/disk/by-path/...``) that
        resolves to a device node in ``/dev`` (which device it is, and
        whether dom0 uses it, is checked by
        :mod:`xen_dm_restrict_plugin.core.blockdev`).
    """
    return resolved_problem(path, prefixes, expect, disk)[0]


def resolved_problem(path: typing.Optional[str],
                     prefixes: typing.Sequence[str], expect: Expect,
                     disk: bool = False
                     ) -> typing.Tuple[typing.Optional[str],
                                       typing.Optional[str]]:
    """:func:`problem`, and ``path`` with every symlink resolved (None
    when it was refused before it was resolved): for a caller that goes
    on with the resolved path, which is then resolved once.
    """
    if not path:
        return 'it names no path', None
    if not (_DISK_PATH_RE if disk else _PATH_RE).match(path):
        return ('%r is not an absolute path of letters, digits and "_./+@-%s" '
                '(libxl pastes paths into QEMU option strings unescaped)'
                % (path, ':' if disk else '')), None
    parts = path.split('/')
    if '..' in parts or '.' in parts or '//' in path:
        return ('%r is not in normal form (it has "." or ".." or "//")'
                % path), None
    if not prefixes:
        return ('no host path is allowed: [dm_restrict] allowed_host_paths '
                'is empty'), None
    if not _under(path, prefixes):
        return '%r is not under [dm_restrict] allowed_host_paths (%s)' % (
            path, ', '.join(prefixes)), None
    real = os.path.realpath(path)
    by_identity = (disk and expect in (Expect.BLOCK, Expect.BLOCK_OR_FILE)
                   and real != path and _DEVICE_NODE_RE.match(real)
                   and _is_block(real))
    if not by_identity and not _under(real, prefixes):
        return ('%r resolves through a symlink to %r, outside '
                '[dm_restrict] allowed_host_paths' % (path, real)), real
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        return '%r cannot be examined: %s' % (path, err.strerror), real
    if mode is None:
        if expect in (Expect.NEW_FILE, Expect.SOCKET) and os.path.isdir(
                os.path.dirname(real)):
            return None, real
        return '%r does not exist' % path, real
    if not _WANTED[expect](mode):
        return '%r is not %s' % (path, expect.value), real
    return None, real


#: Whether a file mode is what each expectation wants.
_WANTED = {
    Expect.BLOCK: stat.S_ISBLK,
    Expect.FILE: stat.S_ISREG,
    Expect.BLOCK_OR_FILE: lambda mode: stat.S_ISBLK(mode) or stat.S_ISREG(
        mode),
    Expect.NEW_FILE: stat.S_ISREG,
    Expect.SOCKET: stat.S_ISSOCK,
    Expect.ANY: lambda mode: True,
}


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
