"""Host paths a domain names, checked the way libxl and QEMU will open them.

Disk and CD-ROM sources, kernel, initrd, loader, ACPI tables and
character-device paths are opened by libxl or by QEMU as root, before the
device model drops its privileges.  A path passes only when it lies under
one of the operator's ``[dm_restrict] allowed_host_paths`` prefixes both
as written and once every symlink is resolved (so ``..`` and a symlink
out of the prefix are refused), is of the expected type, and holds only
characters that survive being pasted into a QEMU option string (libxl
writes ``file=PATH,...`` without escaping, so a comma would add options).

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
        if prefix == '/' or path == prefix or path.startswith(prefix + '/'):
            return True
    return False


def problem(path: typing.Optional[str], prefixes: typing.Sequence[str],
            expect: Expect) -> typing.Optional[str]:
    """Why ``path`` may not be opened by libxl or QEMU as root, or None.

    :param path: the path as the domain writes it.
    :param prefixes: the allowed directory prefixes.
    :param expect: what the path must be.
    """
    if not path:
        return 'it names no path'
    if not _PATH_RE.match(path):
        return ('%r is not an absolute path of letters, digits and "_./+@-" '
                '(libxl pastes paths into QEMU option strings unescaped)'
                % path)
    parts = path.split('/')
    if '..' in parts or '.' in parts or '//' in path:
        return '%r is not in normal form (it has "." or ".." or "//")' % path
    if not prefixes:
        return ('no host path is allowed: [dm_restrict] allowed_host_paths '
                'is empty')
    if not _under(path, prefixes):
        return '%r is not under [dm_restrict] allowed_host_paths (%s)' % (
            path, ', '.join(prefixes))
    real = os.path.realpath(path)
    if not _under(real, prefixes):
        return ('%r resolves through a symlink to %r, outside '
                '[dm_restrict] allowed_host_paths' % (path, real))
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        return '%r cannot be examined: %s' % (path, err.strerror)
    if mode is None:
        if expect in (Expect.NEW_FILE, Expect.SOCKET) and os.path.isdir(
                os.path.dirname(real)):
            return None
        return '%r does not exist' % path
    wanted = {
        Expect.BLOCK: stat.S_ISBLK(mode),
        Expect.FILE: stat.S_ISREG(mode),
        Expect.BLOCK_OR_FILE: stat.S_ISBLK(mode) or stat.S_ISREG(mode),
        Expect.NEW_FILE: stat.S_ISREG(mode),
        Expect.SOCKET: stat.S_ISSOCK(mode),
        Expect.ANY: True,
    }[expect]
    if not wanted:
        return '%r is not %s' % (path, expect.value)
    return None
