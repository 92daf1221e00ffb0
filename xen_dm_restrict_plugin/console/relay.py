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
XML holds the address and port libvirt reports for the console.  Root
binds and listens there in dom0's namespace itself, so a port that
anything else holds (a local user's listener, another domain's console,
a dom0 service) is a refusal and libvirtd destroys the domain; the
listening socket then goes to ``systemd-socket-proxyd`` by socket
activation (socat 1.7.4, Debian 12's, cannot accept on an inherited
socket), which forwards every connection to the unix socket.  The relay

- runs as ``[dm_restrict] console_relay_user``, never the device
  model's uid nor root, with no supplementary groups;
- reaches the socket through a descriptor root opened for it
  (``/proc/self/fd/4``, ``O_PATH`` without following a symbolic link),
  because the chroot directory is mode 0000: the socket itself is handed
  to the relay user, nothing else of the chroot is reachable;
- runs in a cgroup of its own, ``<cgroup_parent>/console-UID``, with a
  small ``pids.max``, and is reaped with the domain (at ``stopped end``,
  ``release end`` and before the next ``prepare``) by killing that
  cgroup's processes.

QEMU's namespace keeps no route anywhere: the relay only ever connects
to the unix socket.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import pwd
import signal
import socket
import stat
import time
import typing

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import settings as settings_mod
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.launcher import cgroup as dm_cgroup

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import subprocess

LOG = logging.getLogger(__name__)

#: systemd's socket proxy (Debian's systemd package), run by socket
#: activation: one process, whatever the number of clients.
PROXYD = '/lib/systemd/systemd-socket-proxyd'
GROUP_PREFIX = 'console-'
#: Processes of one relay: the proxy alone; a margin for the shell.
PIDS_MAX = 4
MAX_CLIENTS = 8
LISTEN_BACKLOG = 8
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
            os.lstat(path)  # whatever it is: _open_socket checks
            return
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise exception.CapabilityMissing(
                'VNC console socket %s' % path, 'the device model did not '
                'create it', 'check the device model\'s log; the launcher '
                'rewrites -vnc to this socket')
        time.sleep(0.02)


def _open_socket(path: str) -> int:
    """An ``O_PATH`` descriptor of the unix socket itself, never of what a
    symbolic link in its place names.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        os.close(fd)
        raise exception.CapabilityMissing(
            'VNC console socket %s' % path, 'it is not a unix socket (a '
            'symbolic link or another file took its place)',
            'destroy the domain; its chroot is recreated at the next '
            'start')
    return fd


def listen(address: str, port: int, context: str = '') -> socket.socket:
    """Bind and listen on ``address:port`` as root, for the relay.

    Nothing else may hold the port: libvirt reports it as this domain's
    console, so a listener there that is not this relay (a local user's,
    another domain's relay, a dom0 service) would get the console's
    clients.  ``SO_REUSEADDR`` only lets the bind reuse connections of an
    earlier relay in ``TIME_WAIT``; Linux still refuses it while any
    socket listens on the port, and no ``SO_REUSEPORT`` is set.

    :raises CapabilityMissing: the port is taken, or the address is not
        one of dom0's.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as err:
        sock.close()
        LOG.error('VNC console%s cannot listen on %s:%d: %s',
                  ' of %s' % context if context else '', address, port,
                  err.strerror or err)
        if err.errno == errno.EADDRINUSE:
            raise exception.CapabilityMissing(
                'VNC console on %s:%d' % (address, port), 'another process '
                'already listens on that port, and it would get the '
                'console\'s clients', 'use autoport="yes" (libvirt then '
                'picks a free port), or stop what holds the port (ss '
                '-ltnp sport = %d)' % port) from None
        raise exception.CapabilityMissing(
            'VNC console on %s:%d' % (address, port), 'cannot listen '
            'there: %s' % (err.strerror or err), 'listen on an address '
            'of dom0, e.g. 127.0.0.1') from None
    return sock


def start(settings: settings_mod.Settings, uid: int, address: str,
          port: int, context: str = '', timeout: float = 10.0) -> int:
    """Relay ``address:port`` in dom0 to the VNC socket of ``uid``'s
    device model; root only.

    Root binds and listens (:func:`listen`), so a port someone else
    holds is a refusal here, and hands the listening socket to
    ``systemd-socket-proxyd`` by socket activation (``LISTEN_FDS``, the
    socket as descriptor 3): the relay never binds anything itself.

    :returns: the relay's pid.
    :raises CapabilityMissing: no relay user, no socket, no cgroup, no
        systemd-socket-proxyd, or the port is taken.
    """
    stop(settings, uid, context)
    user = relay_user(settings)
    if not os.access(PROXYD, os.X_OK):
        raise exception.CapabilityMissing(
            'VNC console relay', '%s is missing' % PROXYD,
            'install systemd (Debian\'s package ships it)')
    # First, so that a port someone else holds is refused before
    # anything changes.
    listener = listen(address, port, context)
    try:
        path = socket_path(settings, uid)
        _wait_for_socket(path, timeout)
        groups = _groups(settings, uid)
        if not groups:
            raise exception.CapabilityMissing(
                'VNC console relay', 'no cgroup hierarchy with the pids '
                'controller is mounted', 'mount cgroup v2')
        group = groups[0]
        unix_fd = _open_socket(path)
        try:
            # Through the descriptor: the inode just checked, not the path.
            inode = '/proc/self/fd/%d' % unix_fd
            os.chown(inode, user.pw_uid, user.pw_gid)
            os.chmod(inode, 0o600)
            proc = _spawn(group, user, listener, unix_fd)
            ready = _taken(listener, proc, timeout)
        finally:
            os.close(unix_fd)
    except exception.CapabilityMissing:
        stop(settings, uid, context)
        raise
    finally:
        listener.close()
    if not ready:
        stop(settings, uid, context)
        raise exception.CapabilityMissing(
            'VNC console relay on %s:%d' % (address, port),
            '%s did not take the listening socket' % PROXYD,
            'run it by hand to see why')
    LOG.info('VNC console of uid %d%s relayed from %s:%d to %s by pid %d '
             'as uid %d in cgroup %s', uid, ' (%s)' % context if context
             else '', address, port, path, proc.pid, user.pw_uid, group)
    return proc.pid


def _spawn(group: str, user: pwd.struct_passwd, listener: socket.socket,
           unix_fd: int) -> subprocess.Popen:
    for above in (os.path.dirname(group), group):
        try:
            os.mkdir(above, 0o755)
        except FileExistsError:
            pass
    with open(os.path.join(group, 'pids.max'), 'w') as handle:
        handle.write(str(PIDS_MAX))
    procs = os.path.join(group, 'cgroup.procs')

    def become_relay() -> None:  # pragma: no cover - in the child
        with open(procs, 'w') as handle:
            handle.write(str(os.getpid()))
        os.setgroups([])
        os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
        os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)

    # Standard input and output carry the listening socket and the unix
    # socket into the child (the only descriptors subprocess places at a
    # fixed number); the shell moves them to 3 (sd_listen_fds(3)) and 4,
    # sets LISTEN_PID to its own pid, which exec keeps, and execs.
    argv = ['/bin/sh', '-c', _TRAMPOLINE, PROXYD,
            '--connections-max=%d' % MAX_CLIENTS, '/proc/self/fd/4']
    # Only a start with a relayed console pays for it (libvirtd's hook
    # imports this module at every start).
    import subprocess

    try:
        return subprocess.Popen(
            argv, stdin=listener.fileno(), stdout=unix_fd,
            stderr=subprocess.DEVNULL, close_fds=True,
            env={'PATH': '/usr/sbin:/usr/bin:/sbin:/bin'},
            preexec_fn=become_relay, start_new_session=True)
    except (OSError, subprocess.SubprocessError) as err:
        raise exception.CapabilityMissing(
            'VNC console relay', 'it cannot run: %s' % err,
            'check %s and the cgroup %s' % (PROXYD, group)) from None


_TRAMPOLINE = ('exec 3<&0 4<&1 0</dev/null 1>/dev/null; '
               'LISTEN_PID=$$; LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; '
               'exec "$0" "$@"')


def _taken(listener: socket.socket, proc: subprocess.Popen,
           timeout: float) -> bool:
    # The relay shares the listening socket's open file description, and
    # systemd-socket-proxyd makes it non-blocking before it polls it.
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        flags = fcntl.fcntl(listener.fileno(), fcntl.F_GETFL)
        if flags & os.O_NONBLOCK:
            return True
        time.sleep(0.01)
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
