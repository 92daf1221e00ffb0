"""The per-uid chroot directory a restricted device model is locked into.

QEMU's ``-chroot`` (or ``-run-with chroot=``) only calls chroot(2); the
directory must already exist, be empty and be owned by root with mode
0000, so that a compromised QEMU finds nothing in it and cannot write to
it.  libxl creates its own for dm_restrict, but the arguments here reach
QEMU through ``<xen:commandline>``, which libxl does not understand, so
the libvirt hook and the launcher create it.  Both run as root, so this
module only ever creates or touches ``BASE/qemu-root-UID`` inside
``[dm_restrict] chroot_base_dir``, opens it relative to the base without
following symlinks, and refuses rather than empties a directory that is
not empty: something put files where no process should be able to.
"""

from __future__ import annotations

import os
import stat

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin import exception

# On the launcher's start-up path, which reads its settings without
# oslo.config (see launch_settings); the hook logs the outcome.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from xen_dm_restrict_plugin.core import settings as settings_mod

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def unsafe_reason(st: os.stat_result) -> str:
    """Why a directory is not a safe chroot base, or '' when it is.

    :param st: the ``lstat`` of the directory.
    """
    if not stat.S_ISDIR(st.st_mode):
        return 'it is not a directory'
    if st.st_uid != 0:
        return 'it is owned by uid %d, not root' % st.st_uid
    if st.st_mode & 0o022:
        return 'it is writable by group or others (mode %04o)' % (
            stat.S_IMODE(st.st_mode))
    return ''


def _open_base(settings: settings_mod.Settings) -> int:
    base = settings.chroot_base_dir
    os.makedirs(base, mode=0o755, exist_ok=True)
    fd = os.open(base, _DIR_FLAGS)
    reason = unsafe_reason(os.fstat(fd))
    if reason:
        os.close(fd)
        raise exception.CapabilityMissing(
            'chroot_base_dir %s' % base, reason,
            'make it a directory owned by root with mode 0755 (chown '
            'root:root; chmod 0755)')
    return fd


def _remove_console_socket(dir_fd: int) -> None:
    """A VNC socket a killed device model left (QEMU made it as root)."""
    try:
        info = os.stat(constants.VNC_SOCKET, dir_fd=dir_fd,
                       follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(info.st_mode):
        os.unlink(constants.VNC_SOCKET, dir_fd=dir_fd)


def prepare(settings: settings_mod.Settings, uid: int) -> str:
    """Create (or check) the empty, root-owned, mode 0000 chroot of ``uid``.

    :param settings: gives ``chroot_base_dir``.
    :param uid: the device model's uid; the directory is
        ``settings.chroot_dir(uid)``.
    :returns: the directory's path.
    :raises CapabilityMissing: the base directory is unsafe, or the chroot
        exists and is a symlink, not a directory, or not empty.
    """
    path = settings.chroot_dir(uid)
    name = os.path.basename(path)
    try:
        base_fd = _open_base(settings)
    except OSError as err:
        raise exception.CapabilityMissing(
            'chroot_base_dir %s' % settings.chroot_base_dir,
            'it cannot be created or opened: %s' % (err.strerror or err),
            'create it as a root-owned directory, mode 0755') from None
    try:
        try:
            os.mkdir(name, 0o000, dir_fd=base_fd)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=base_fd)
        except OSError as err:
            raise exception.CapabilityMissing(
                'chroot directory %s' % path,
                'it is not a plain directory (%s)' % (err.strerror or err),
                'remove it; it is recreated on the next start') from None
        try:
            _remove_console_socket(fd)
            left = os.listdir(fd)
            if left:
                raise exception.CapabilityMissing(
                    'chroot directory %s' % path,
                    'it is not empty (%s), though no process may write '
                    'there' % ', '.join(sorted(left)[:5]),
                    'find out who put the files there, then remove the '
                    'directory; it is recreated on the next start')
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o000)
        finally:
            os.close(fd)
    finally:
        os.close(base_fd)
    return path
