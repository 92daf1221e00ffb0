"""Cut a device model off dom0's network, keeping its emulated NICs.

Xen's design lists connections on the management network among what a
compromised, restricted device model can still make: QEMU runs in dom0's
network namespace.  The launcher moves it into a namespace of its own,
which has nothing but a loopback device that is down.

The emulated NICs still need their tap devices in dom0, where libxl's
hotplug script puts them on the bridge.  libxl asks QEMU to create them
by name (``-netdev type=tap,id=netN,ifname=vifD.N-emu,...,script=no,
downscript=no``); the launcher opens the same devices itself in the host
namespace, exactly as QEMU's ``tap_open`` would (``IFF_TAP | IFF_NO_PI``,
with ``IFF_VNET_HDR`` when the kernel offers it), and rewrites each
``-netdev`` to hand QEMU the descriptor (``fd=N``).  A tap descriptor
keeps working whatever namespace its holder moves to.  Unlike QEMU, it
asks for a new device (``IFF_TUN_EXCL``): a tap of that name that
already exists, such as another user's persistent one, is not attached
to this domain; the start fails instead.

The launcher records the taps it opened for a uid (their interface
index, which survives the hotplug script's rename, and name) in
``<chroot_base_dir>/qemu-taps-UID``; the reap of the uid removes any of
them that outlived the device model (:func:`remove_leftover_taps`): a
tap made persistent would otherwise stay on dom0's bridge.

Only the ``-netdev`` shape libxl writes is rewritten; the launcher has
already refused any other.  A VNC display would be a TCP socket QEMU
listens on in its own namespace, unreachable from dom0: libxl's
``-vnc ADDR:DISPLAY[,password=on][,to=99]`` becomes ``-vnc unix:
CHROOT/vnc.sock[,password=on]`` (:func:`vnc_to_unix`), which libvirtd's
hook relays from dom0 (:mod:`xen_dm_restrict_plugin.console.relay`).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from xen_dm_restrict_plugin.core import libxl_argv
from xen_dm_restrict_plugin.core import qemu_args

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

TUN_DEVICE = '/dev/net/tun'
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000
TUNSETIFF = 0x400454ca
TUNSETPERSIST = 0x400454cb
TUNGETFEATURES = 0x800454cf
IFNAMSIZ = 16


class Tap:
    """A tap device the launcher opened for QEMU.

    :param netdev: the ``-netdev`` id.
    :param ifname: the device's name in dom0.
    :param fd: the open descriptor QEMU inherits.
    """

    __slots__ = ('netdev', 'ifname', 'fd')

    def __init__(self, netdev: str, ifname: str, fd: int):
        self.netdev = netdev
        self.ifname = ifname
        self.fd = fd


def tap_netdevs(args: typing.Sequence[str]
                ) -> typing.List[typing.Tuple[int, str, str]]:
    """The ``-netdev`` values libxl wrote for tap devices.

    :returns: (index of the value in ``args``, netdev id, ifname) each.
    """
    found = []
    for item in qemu_args.split(args):
        if item.option == 'netdev' and item.value is not None:
            match = libxl_argv.TAP_NETDEV_RE.match(item.value)
            if match:
                found.append((item.index + 1, match.group('netdev'),
                              match.group('ifname')))
    return found


def vnc_listens(args: typing.Sequence[str]) -> bool:
    """Whether QEMU would listen for VNC clients on a TCP socket."""
    return any(item.option == 'vnc' and item.value is not None
               and item.value.split(',', 1)[0] != 'none'
               for item in qemu_args.split(args))


def vnc_to_unix(args: typing.Sequence[str], path: str) -> typing.List[str]:
    """Rewrite libxl's TCP ``-vnc`` to a unix socket at ``path``,
    keeping ``password=on`` (libxl sets the password by QMP).

    :raises ValueError: ``path`` holds a comma (QEMU would read options).
    """
    if ',' in path:
        raise ValueError('the VNC socket path %r holds a comma' % path)
    new_args = list(args)
    for item in qemu_args.split(args):
        if item.option == 'vnc' and item.value is not None and \
                item.value.split(',', 1)[0] != 'none':
            options = item.value.split(',')[1:]
            kept = [opt for opt in options if opt == 'password=on']
            new_args[item.index + 1] = ','.join(['unix:%s' % path] + kept)
    return new_args


def open_tap(ifname: str) -> int:
    """Create the tap device ``ifname``, as QEMU's ``tap_open`` does,
    and return it as an inheritable descriptor.

    :raises OSError: the tun driver is missing or refuses the name, or
        a device of that name exists (EBUSY).
    """
    fd = os.open(TUN_DEVICE, os.O_RDWR)
    try:
        flags = IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL
        features = bytearray(4)
        try:
            fcntl.ioctl(fd, TUNGETFEATURES, features)
            if struct.unpack('I', features)[0] & IFF_VNET_HDR:
                flags |= IFF_VNET_HDR
        except OSError:
            pass
        request = struct.pack('%dsH22x' % IFNAMSIZ, ifname.encode(), flags)
        fcntl.ioctl(fd, TUNSETIFF, request)
        os.set_inheritable(fd, True)
    except OSError as err:
        os.close(fd)
        raise OSError(err.errno, 'cannot open tap device %s: %s'
                      % (ifname, err.strerror)) from None
    return fd


def hand_over(args: typing.Sequence[str]
              ) -> typing.Tuple[typing.List[str], typing.List[Tap]]:
    """Open every tap device of ``args`` and rewrite its ``-netdev``.

    :returns: the new arguments and the taps opened (close them if the
        start is abandoned).
    :raises OSError: a device cannot be opened; none stays open.
    """
    new_args = list(args)
    taps: typing.List[Tap] = []
    try:
        for index, netdev, ifname in tap_netdevs(args):
            fd = open_tap(ifname)
            taps.append(Tap(netdev, ifname, fd))
            new_args[index] = 'type=tap,id=%s,fd=%d' % (netdev, fd)
    except OSError:
        for tap in taps:
            os.close(tap.fd)
        raise
    return new_args, taps


def tap_record(chroot_base_dir: str, uid: int) -> str:
    """The file listing the taps the launcher opened for ``uid``."""
    return '%s/qemu-taps-%d' % (chroot_base_dir.rstrip('/'), uid)


def record_taps(chroot_base_dir: str, uid: int,
                taps: typing.Sequence[Tap]) -> None:
    """Write "INDEX NAME" of each tap to the uid's record (root's, 0600).

    :raises OSError: the record cannot be written.
    """
    path = tap_record(chroot_base_dir, uid)
    if not taps:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    lines = ''.join('%d %s\n' % (socket.if_nametoindex(tap.ifname),
                                 tap.ifname) for tap in taps)
    fd = os.open(path + '.new', os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                 | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)
    os.rename(path + '.new', path)


def _is_tap(name: str) -> bool:
    return os.path.exists('/sys/class/net/%s/tun_flags' % name)


def remove_leftover_taps(chroot_base_dir: str, uid: int
                         ) -> typing.List[str]:
    """Remove the uid's recorded taps that no process holds any more.

    Call once every process of the uid is gone.  A tap still held
    (another domain's, at an index reused since) is left alone: the
    kernel refuses to attach a second descriptor to it.

    :returns: the names of the taps removed.
    """
    path = tap_record(chroot_base_dir, uid)
    try:
        with open(path) as handle:
            entries = [line.split(None, 1) for line in handle]
    except FileNotFoundError:
        return []
    removed = []
    for index, name in entries:
        name = name.strip()
        try:
            now = socket.if_indextoname(int(index))
        except (OSError, ValueError):
            continue  # gone with its device model, as it should
        if not _is_tap(now) or not (now == name or now.endswith('-emu')):
            continue
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack(
                '%dsH22x' % IFNAMSIZ, now.encode(), IFF_TAP | IFF_NO_PI))
            fcntl.ioctl(fd, TUNSETPERSIST, 0)
        except OSError:
            continue
        finally:
            os.close(fd)
        removed.append(now)
    os.unlink(path)
    return removed
