"""The VNC console of a device model that has no network: a relay in dom0.

Under ``network_namespace = required`` QEMU runs in a network namespace
of its own, where a TCP listener is out of dom0's reach.  libxl builds
``-vnc ADDR:DISPLAY[,password=on]`` (``libxl__build_device_model_args_
new``; libvirt's ``libxlMakeVfb`` sets DISPLAY to the port it allocated
less 5900); the launcher rewrites it to ``-vnc unix:CHROOT/vnc.sock
[,password=on]``, so QEMU, still root when it sets up its display,
listens on a unix socket inside its own root directory.  The password
libvirt gives libxl still reaches QEMU by QMP (``change-vnc-password``
in ``device_model_postconfig_vnc``), whatever the transport.

libvirtd's hook starts this relay at ``started begin``, when the live
XML holds the address and port libvirt reports for the console: socat
listens there in dom0's namespace and forwards every connection to the
socket.  The relay

- runs as ``[dm_restrict] console_relay_user``, never the device
  model's uid nor root, with no supplementary groups;
- reaches the socket through a descriptor root opened for it
  (``UNIX-CONNECT:/proc/self/fd/N``), because the chroot directory is
  mode 0000: the socket itself is handed to the relay user, nothing else
  of the chroot is reachable;
- runs in a cgroup of its own, ``<cgroup_parent>/console-UID``, with a
  small ``pids.max``, and is reaped with the domain (at ``stopped end``,
  ``release end`` and before the next ``prepare``) by killing that
  cgroup's processes.

QEMU's namespace keeps no route anywhere: the relay only ever connects
to the unix socket.
"""

import errno
import logging
import os
import pwd
import signal
import subprocess
import time
import typing

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import settings as settings_mod
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import cgroup as dm_cgroup

LOG = logging.getLogger(__name__)

SOCAT = 'socat'
GROUP_PREFIX = 'console-'
#: Processes of one relay: socat and a child per client connection.
PIDS_MAX = 16
MAX_CLIENTS = 8
VNC_PORT_BASE = 5900


def socket_path(settings: settings_mod.Settings, uid: int) -> str:
    """Where the device model of ``uid`` listens for VNC clients."""
    return os.path.join(settings.chroot_dir(uid), constants.VNC_SOCKET)


def _groups(settings: settings_mod.Settings, uid: int) -> typing.List[str]:
    found = dm_cgroup.find()
    if found is None:
        return []
    root = found.roots.get('pids')
    return [os.path.join(root, settings.cgroup_parent,
                         GROUP_PREFIX + str(int(uid)))] if root else []


def relay_user(settings: settings_mod.Settings) -> pwd.struct_passwd:
    """The account the relay runs as.

    :raises CapabilityMissing: it does not exist, or is root, the
        reaper, or inside a device-model uid range.
    """
    name = settings.console_relay_user
    try:
        entry = (pwd.getpwuid(int(name)) if name.isdigit()
                 else pwd.getpwnam(name))
    except (KeyError, ValueError):
        raise exception.CapabilityMissing(
            'console_relay_user %s' % name, 'no such user',
            'create it: useradd --system --user-group --no-create-home '
            '--home-dir /nonexistent --shell /usr/sbin/nologin %s'
            % name) from None
    if entry.pw_uid == 0 or entry.pw_gid == 0 or \
            entry.pw_uid == settings.reaper_uid or any(
                entry.pw_uid in rng for rng in settings.all_ranges()):
        raise exception.CapabilityMissing(
            'console_relay_user %s' % name, 'uid %d is root, the reaper\'s '
            'or inside a device-model range' % entry.pw_uid,
            'use a dedicated system user')
    return entry


def _wait_for_socket(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.stat(path).st_mode & 0o170000 == 0o140000:
                return
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise exception.CapabilityMissing(
                'VNC console socket %s' % path, 'the device model did not '
                'create it', 'check the device model\'s log; the launcher '
                'rewrites -vnc to this socket')
        time.sleep(0.02)


def start(settings: settings_mod.Settings, uid: int, address: str,
          port: int, context: str = '', timeout: float = 10.0) -> int:
    """Relay ``address:port`` in dom0 to the VNC socket of ``uid``'s
    device model; root only.

    :returns: the relay's pid.
    :raises CapabilityMissing: no relay user, no socket, no cgroup, no
        socat, or socat could not listen there.
    """
    stop(settings, uid, context)
    user = relay_user(settings)
    path = socket_path(settings, uid)
    _wait_for_socket(path, timeout)
    os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    os.chmod(path, 0o600)
    groups = _groups(settings, uid)
    if not groups:
        raise exception.CapabilityMissing(
            'VNC console relay', 'no cgroup hierarchy with the pids '
            'controller is mounted', 'mount cgroup v2')
    group = groups[0]
    for above in (os.path.dirname(group), group):
        try:
            os.mkdir(above, 0o755)
        except FileExistsError:
            pass
    with open(os.path.join(group, 'pids.max'), 'w') as handle:
        handle.write(str(PIDS_MAX))
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    procs = os.path.join(group, 'cgroup.procs')

    def become_relay() -> None:  # pragma: no cover - in the child
        with open(procs, 'w') as handle:
            handle.write(str(os.getpid()))
        os.setgroups([])
        os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
        os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)

    argv = [SOCAT, '-lf', '/dev/null',
            'TCP-LISTEN:%d,bind=%s,reuseaddr,fork,max-children=%d'
            % (port, address, MAX_CLIENTS),
            'UNIX-CONNECT:/proc/self/fd/%d' % fd]
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(fd,), close_fds=True,
            preexec_fn=become_relay, start_new_session=True)
    except OSError as err:
        raise exception.CapabilityMissing(
            'VNC console relay', 'socat cannot run: %s' % (
                err.strerror or err), 'install socat') from None
    finally:
        os.close(fd)
    if not _listening(address, port, proc, timeout):
        stop(settings, uid, context)
        raise exception.CapabilityMissing(
            'VNC console relay on %s:%d' % (address, port),
            'socat could not listen there', 'check that nothing else '
            'holds the port libvirt allocated')
    LOG.info('VNC console of uid %d%s relayed from %s:%d to %s by pid %d '
             'as uid %d in cgroup %s', uid, ' (%s)' % context if context
             else '', address, port, path, proc.pid, user.pw_uid, group)
    return proc.pid


def _listening(address: str, port: int, proc: subprocess.Popen,
               timeout: float) -> bool:
    # /proc/net/tcp: the relay's listener, state 0A, on address:port.
    import ipaddress
    import struct

    packed = struct.unpack('<I', ipaddress.IPv4Address(address).packed)[0]
    wanted = '%08X:%04X' % (packed, port)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        with open('/proc/net/tcp') as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[1] == wanted and fields[3] == '0A':
                    return True
        time.sleep(0.02)
    return False


def stop(settings: settings_mod.Settings, uid: int,
         context: str = '') -> int:
    """Kill every process of the relay of ``uid`` and remove its cgroup.

    :returns: how many processes were killed.
    """
    killed = 0
    for group in _groups(settings, uid):
        if not os.path.isdir(group):
            continue
        for _ in range(100):
            try:
                with open(os.path.join(group, 'cgroup.procs')) as handle:
                    pids = [int(pid) for pid in handle.read().split()]
            except FileNotFoundError:
                break
            if not pids:
                try:
                    os.rmdir(group)
                    break
                except OSError as err:
                    if err.errno != errno.EBUSY:
                        raise
            kill = os.path.join(group, 'cgroup.kill')
            if os.path.exists(kill):
                with open(kill, 'w') as handle:
                    handle.write('1')
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
    if killed:
        LOG.info('VNC console relay of uid %d%s stopped (%d processes)',
                 uid, ' (%s)' % context if context else '', killed)
    return killed


def display(dom_root) -> typing.Optional[typing.Tuple[str, int]]:
    """The address and port libvirt reports for a live domain's VNC
    console (``<graphics type='vnc' port=... listen=...>``), if any.
    """
    node = dom_root.find("devices/graphics[@type='vnc']")
    if node is None:
        return None
    port = node.get('port')
    if port is None or not port.isdigit() or int(port) < VNC_PORT_BASE:
        return None
    listen = node.find("listen[@type='address']")
    address = node.get('listen') or (
        listen.get('address') if listen is not None else None) or \
        '127.0.0.1'
    return address, int(port)
