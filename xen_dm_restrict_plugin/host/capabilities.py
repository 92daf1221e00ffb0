"""What the host's device model can do, found by probing it.

QEMU spells the restriction differently by version (``-runas`` is gone in
10, ``-chroot`` in 9, ``-run-with`` arrived in 8.1/9.1) and some builds
lack seccomp, while ``-help`` lists options that do not work.  The only
reliable test is to ask QEMU to parse the option: ``QEMU -no-user-config
OPTION... -version`` exits 0 only when every option was accepted, needs
no Xen and has no side effect.  Probes run in parallel and are cached per
binary identity (path, device, inode, size, mtime, ctime), in the process
and, for processes that start anew at every call (libvirtd's hook, the
launcher), in a root-only file beside the settings snapshot
(``/run/xen-dm-restrict/capabilities.marshal``), so a host pays for them
once per QEMU upgrade (on a QEMU without seccomp, every ``prepare begin``
of libvirtd's hook used to probe it).  When QEMU cannot restrict, boots
are refused: Xen would leave the restriction silently ineffective.
"""

import concurrent.futures
import dataclasses
import logging
import marshal
import os
import stat
import subprocess
import tempfile
import threading
import typing

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin.core import settings as settings_mod
from xen_dm_restrict_plugin import exception

LOG = logging.getLogger(__name__)

PROBE_TIMEOUT = 10.0

#: Probe name -> arguments QEMU must accept.
PROBES = {
    # No option at all: a binary failing this does not run (missing
    # library, wrong architecture), whatever the other probes say.
    'version': [],
    'xen-domid-restrict': ['-xen-domid-restrict'],
    'runas': ['-runas', '1:1'],
    'chroot': ['-chroot', '/'],
    'run-with-user': ['-run-with', 'user=1:1'],
    'run-with-chroot': ['-run-with', 'chroot=/'],
    'sandbox': ['-sandbox', restrict.SANDBOX_POLICY],
    # An option no QEMU has: a binary accepting it is not a QEMU at all
    # (``/bin/true`` accepts everything).
    'nonsense': ['-xen-dm-restrict-no-such-option'],
}


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """The outcome of probing one binary: probe name -> supported."""

    binary: str
    supported: typing.Mapping[str, bool]

    def has(self, name: str) -> bool:
        return bool(self.supported.get(name))


_cache: typing.Dict[tuple, Capabilities] = {}
_cache_lock = threading.Lock()


def _identity(binary: str) -> tuple:
    try:
        st = os.stat(binary)
    except OSError as err:
        raise exception.CapabilityMissing(
            'device model %s' % binary,
            'it cannot be probed: %s' % (err.strerror or err),
            'install qemu-xen (e.g. Debian package qemu-system-xen) or set '
            '[dm_restrict] qemu_binary to its path') from None
    return (os.path.realpath(binary), st.st_dev, st.st_ino, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns)


#: The shared cache's name, in the settings snapshot's directory.
SHARED_NAME = 'capabilities.marshal'
#: Binaries the shared cache remembers (a host has one or two QEMUs).
SHARED_ENTRIES = 8


def shared_path() -> str:
    """The probe results kept across processes."""
    from xen_dm_restrict_plugin.launcher import settings as launch_settings

    return os.path.join(os.path.dirname(launch_settings.path()),
                        SHARED_NAME)


def _roots_alone(st: os.stat_result) -> bool:
    return st.st_uid == 0 and not st.st_mode & 0o022


def _read_shared() -> typing.Dict[tuple, typing.Dict[str, bool]]:
    """The shared cache, when it and its directory are root's alone;
    anything else is no cache (the binary is probed again).
    """
    path = shared_path()
    try:
        if not _roots_alone(os.stat(os.path.dirname(path))):
            return {}
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _roots_alone(st):
            return {}
        data = marshal.loads(os.read(fd, 1 << 16))
        return {key: value for key, value in data.items()
                if isinstance(key, tuple) and isinstance(value, dict)
                and set(value) == set(PROBES)
                and all(isinstance(v, bool) for v in value.values())}
    except (OSError, ValueError, EOFError, TypeError, AttributeError):
        return {}
    finally:
        os.close(fd)


def _write_shared(key: tuple, supported: typing.Dict[str, bool]) -> None:
    """Remember a probe's results for other processes (root only, in a
    directory that is root's alone; else nothing is written).
    """
    path = shared_path()
    directory = os.path.dirname(path)
    try:
        if os.geteuid() != 0 or not _roots_alone(os.stat(directory)):
            return
        entries = _read_shared()
        entries.pop(key, None)
        entries[key] = supported
        while len(entries) > SHARED_ENTRIES:
            entries.pop(next(iter(entries)))
        fd, temporary = tempfile.mkstemp(prefix='.capabilities-',
                                         dir=directory)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, marshal.dumps(entries))
            os.rename(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
        finally:
            os.close(fd)
    except OSError as err:
        LOG.debug('probe results of %s not kept in %s: %s', key[0], path,
                  err)


def _run_probe(binary: str, args: typing.Sequence[str]
               ) -> typing.Optional[bool]:
    """Whether QEMU accepts ``args``; None when it gave no answer."""
    try:
        proc = subprocess.run(
            [binary, '-no-user-config'] + list(args) + ['-version'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, timeout=PROBE_TIMEOUT,
            close_fds=True)
    except OSError as err:
        LOG.warning('probe of %s %s failed: %s', binary, ' '.join(args), err)
        return False
    except subprocess.TimeoutExpired as err:
        LOG.warning('probe of %s %s failed: %s', binary, ' '.join(args), err)
        return None
    return proc.returncode == 0


def probe(binary: str) -> Capabilities:
    """Probe ``binary`` (cached by identity), as many probes at once as
    there are CPUs.

    :raises CapabilityMissing: the binary cannot be stat'ed.
    """
    key = _identity(binary)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    shared = _read_shared().get(key)
    if shared is not None:
        caps = Capabilities(binary, shared)
        with _cache_lock:
            _cache[key] = caps
        return caps
    # No more probes at once than CPUs: each has its own timeout, which
    # more QEMU starts than CPUs would share out (a loaded or slow host).
    workers = min(len(PROBES), max(2, os.cpu_count() or 2))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(_run_probe, binary, args)
                   for name, args in PROBES.items()}
        answers = {name: fut.result() for name, fut in futures.items()}
    unanswered = sorted(name for name, answer in answers.items()
                        if answer is None)
    if unanswered:
        # Not an answer about the binary (a loaded host, a transient
        # failure): refuse this time and probe again the next time.
        raise exception.CapabilityMissing(
            'device model %s' % binary, 'its probes (%s) did not complete '
            'within %.0f s' % (', '.join(unanswered), PROBE_TIMEOUT),
            'try again; if it persists, run "%s -no-user-config -version" '
            'to see why it hangs or fails to start' % binary)
    supported = {name: bool(answer) for name, answer in answers.items()}
    caps = Capabilities(binary, supported)
    LOG.info('probed device model %s: %s', binary, ', '.join(
        '%s=%s' % (k, 'yes' if v else 'no')
        for k, v in sorted(supported.items())))
    with _cache_lock:
        _cache[key] = caps
    _write_shared(key, supported)
    return caps


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _missing(binary: str, what: str, remedy: str):
    return exception.CapabilityMissing(
        'device model %s' % binary, 'it does not support %s' % what, remedy)


def syntax_from_capabilities(caps: Capabilities,
                             sandbox_policy: str
                             ) -> restrict.DeviceModelSyntax:
    """Choose the argument syntax, or refuse when QEMU cannot restrict.

    :raises CapabilityMissing: naming the binary and the missing option.
    """
    upgrade = ('use qemu-xen 3.0 or later built with Xen support, on '
               'Linux 4.11 or later')
    if not caps.has('version'):
        raise exception.CapabilityMissing(
            'device model %s' % caps.binary,
            'it does not run: "%s -no-user-config -version" fails'
            % caps.binary, 'run that command to see why, and repair or '
            'reinstall the device model')
    if caps.has('nonsense'):
        raise exception.CapabilityMissing(
            'device model %s' % caps.binary,
            'it accepts an option no QEMU has, so it is not a QEMU and '
            'cannot be probed', 'point <emulator> or [dm_restrict] '
            'qemu_binary at the real qemu-xen binary')
    if not caps.has('xen-domid-restrict'):
        raise _missing(caps.binary, '-xen-domid-restrict', upgrade)
    if caps.has('run-with-user'):
        user_form = restrict.FORM_RUN_WITH
    elif caps.has('runas'):
        user_form = restrict.FORM_LEGACY
    else:
        raise _missing(caps.binary, '-runas or -run-with user=', upgrade)
    if caps.has('run-with-chroot'):
        chroot_form = restrict.FORM_RUN_WITH
    elif caps.has('chroot'):
        chroot_form = restrict.FORM_LEGACY
    else:
        raise _missing(caps.binary, '-chroot or -run-with chroot=', upgrade)
    sandbox = False
    if sandbox_policy != constants.SANDBOX_OFF:
        sandbox = caps.has('sandbox')
        if not sandbox and sandbox_policy == constants.SANDBOX_REQUIRED:
            raise _missing(
                caps.binary, '-sandbox (seccomp)',
                'use a QEMU built with seccomp, or set [dm_restrict] '
                'sandbox = when-supported')
        if not sandbox:
            LOG.warning('device model %s has no seccomp support; running '
                        'it without -sandbox', caps.binary)
    return restrict.DeviceModelSyntax(user_form, chroot_form, sandbox)


def device_model_binary(settings: settings_mod.Settings,
                        emulator: typing.Optional[str]) -> str:
    """The QEMU that will really run for a domain with this emulator."""
    if settings.launcher or not emulator:
        return settings.qemu_binary
    return emulator


def syntax_for(settings: settings_mod.Settings,
               emulator: typing.Optional[str]
               ) -> restrict.DeviceModelSyntax:
    """The syntax for a domain, from configuration or by probing.

    :raises CapabilityMissing: the device model cannot restrict.
    """
    sandbox = settings.sandbox != constants.SANDBOX_OFF
    if settings.syntax == constants.SYNTAX_RUNAS:
        return restrict.DeviceModelSyntax(
            restrict.FORM_LEGACY, restrict.FORM_LEGACY, sandbox)
    if settings.syntax == constants.SYNTAX_RUN_WITH:
        return restrict.DeviceModelSyntax(
            restrict.FORM_RUN_WITH, restrict.FORM_RUN_WITH, sandbox)
    caps = probe(device_model_binary(settings, emulator))
    return syntax_from_capabilities(caps, settings.sandbox)
