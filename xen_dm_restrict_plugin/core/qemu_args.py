"""QEMU's command line as QEMU reads it, and which extra arguments may pass.

libvirt's libxl driver hands every ``<xen:commandline>`` value to libxl,
which appends them to the device model's command line (for HVM, PV and
PVH guests alike).  QEMU parses and acts on every option -- opening
files, sockets, programs, devices -- as root, long before ``-runas`` /
``-chroot`` take effect at the end of its start-up.  So extra arguments
are default-deny: an option passes only if the operator listed it in
``[dm_restrict] allowed_qemu_options`` and it is not one of
:data:`NEVER_ALLOWED`, and even then its value may not name a host path,
socket, program, file descriptor or URI.

QEMU reads its arguments left to right: ``-opt`` or ``--opt`` (never
``-opt=value``), followed by its value when the option takes one; any
other argument is a disk image path.  :data:`NO_VALUE` lists the options
that take no value (from QEMU 7.2 and 10.0: ``qemu -version -OPT`` exits
0 only for those).
"""

from __future__ import annotations

import collections
import re

# The launcher imports this module on every device-model start: typing
# and dataclasses (which pulls in inspect) would double its start-up cost.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

#: Options that take no value; every other option takes the next argument.
NO_VALUE = frozenset((
    'S', 'async-teardown', 'audio-help', 'daemonize', 'enable-kvm',
    'enable-sync-profile', 'full-screen', 'h', 'help', 'mem-prealloc',
    'no-acpi', 'no-fd-bootchk', 'no-hpet', 'no-reboot', 'no-shutdown',
    'no-user-config', 'nodefaults', 'nographic', 'old-param',
    'only-migratable', 'portrait', 'preconfig', 's', 'semihosting',
    'singlestep', 'snapshot', 'usb', 'version', 'win2k-hack', 'xen-attach',
    'xen-domid-restrict',
))

_RESTRICTION = 'it sets the device model\'s restriction, which only ' \
    'dm_restrict may set'
_HOST = 'QEMU opens or creates a host file, device or socket it names, ' \
    'as root, before it drops its privileges'
_EXEC = 'QEMU runs a program or loads code it names, as root'

#: The options that carry the restriction this product writes.
RESTRICTION_OPTIONS = frozenset(('runas', 'run-with', 'chroot', 'sandbox',
                                 'xen-domid-restrict'))

#: Options an operator can never allow, with the reason (shown in
#: refusals and in the documentation).
NEVER_ALLOWED: typing.Mapping[str, str] = {
    'runas': _RESTRICTION, 'run-with': _RESTRICTION,
    'chroot': _RESTRICTION, 'sandbox': _RESTRICTION,
    'xen-domid-restrict': _RESTRICTION,
    'xen-domid': 'it chooses the Xen domain the device model serves',
    'xen-attach': 'it attaches the device model to another domain',
    'readconfig': 'it reads a host file as root and can set any option, '
                  'the restriction included',
    'set': 'it can set any option, the restriction included',
    'incoming': 'it loads device state from a URI, file, fd or program '
                '(exec: runs a shell command as root)',
    'daemonize': 'it detaches the device model from libxl',
    'pidfile': _HOST, 'D': _HOST, 'writeconfig': _HOST, 'trace': _HOST,
    'chardev': _HOST, 'serial': _HOST, 'parallel': _HOST,
    'monitor': _HOST, 'qmp': _HOST, 'qmp-pretty': _HOST, 'mon': _HOST,
    'debugcon': _HOST, 'gdb': _HOST, 'virtioconsole': _HOST,
    'drive': _HOST, 'blockdev': _HOST, 'hda': _HOST, 'hdb': _HOST,
    'hdc': _HOST, 'hdd': _HOST, 'cdrom': _HOST, 'fda': _HOST, 'fdb': _HOST,
    'pflash': _HOST, 'mtdblock': _HOST, 'sd': _HOST, 'fsdev': _HOST,
    'virtfs': _HOST, 'fw_cfg': _HOST, 'option-rom': _HOST,
    'acpitable': _HOST, 'smbios': _HOST, 'dtb': _HOST, 'kernel': _HOST,
    'initrd': _HOST, 'bios': _HOST, 'L': _HOST, 'mem-path': _HOST,
    'loadvm': _HOST, 'add-fd': 'it hands QEMU a host file descriptor',
    'netdev': 'it can run a network script or helper as root, or open a '
              'host device or socket',
    'net': 'it can run a network script or helper as root, or open a '
           'host device or socket',
    'nic': 'it can run a network script or helper as root',
    'object': 'it can map host files into guest memory, read secrets and '
              'certificates from host files, or open host devices',
    'device': 'it can pass host devices through (vfio-pci, '
              'xen-pci-passthrough, usb-host) or load host files '
              '(loader, romfile=)',
    'tpmdev': _HOST, 'plugin': _EXEC, 'iscsi': _HOST, 'spice': _HOST,
    'vnc': 'the VNC server is libxl\'s to configure; a unix: or '
           'tls-creds value reaches host files',
    'audiodev': _HOST, 'audio': _HOST,
    'machine': 'libxl sets the machine; a second one changes what the '
               'device model emulates (and memory-backend= maps host '
               'memory)',
    'M': 'libxl sets the machine',
    'accel': 'libxl sets the accelerator (xen)',
    'm': 'libxl sets the memory size', 'snapshot': _HOST,
    'preconfig': 'it stops the device model before libxl can drive it',
    'global': 'it sets any property of any device, including ones that '
              'name host files (romfile=) or chardevs',
    'display': 'libxl sets the display; vnc= and others open listeners',
    'icount': 'record/replay (rr=, rrfile=) reads and writes host files',
    's': 'it opens a gdb server on every host interface (-gdb tcp::1234)',
    'dump-vmstate': _HOST, 'qtest': _HOST, 'qtest-log': _HOST,
    'usbdevice': 'libxl sets the USB devices; some connect to host '
                 'sockets (braille)',
    'k': 'libxl sets the keymap; QEMU loads the file it names',
    'S': 'it freezes the guest until a monitor command arrives',
    'compat': 'it changes how deprecated interfaces behave',
    'action': 'it changes what the device model does on guest events',
    'overcommit': 'it locks guest memory in host RAM',
    'mem-prealloc': 'it preallocates all guest memory in dom0',
    'async-teardown': 'QEMU keeps a root, unchrooted helper process with '
                      'every capability that shares the guest\'s memory '
                      'and that the uid reaper cannot see',
}

#: Option keys whose value names a host path, socket, program, file
#: descriptor or host resource.
DANGEROUS_KEYS = frozenset((
    'file', 'filename', 'path', 'dir', 'script', 'downscript', 'helper',
    'fd', 'fds', 'vhostfd', 'vhostfds', 'mem-path', 'romfile', 'logfile',
    'sock', 'socket', 'socket-path', 'host', 'hostfwd', 'guestfwd',
    'smb', 'tftp', 'bootfile', 'x509-dir', 'tls-creds', 'tls-authz',
    'password-secret', 'secret', 'sysfsdev', 'vhostdev', 'config',
    'memory-backend', 'memdev', 'chardev', 'share', 'device', 'dev',
    'ifname', 'br', 'unix', 'vfio', 'keyfile', 'pidfile', 'addr-file',
    'rrfile', 'rrsnapshot', 'splash', 'rendernode', 'addr', 'firmware',
    'drive', 'netdev', 'property', 'value', 'gl', 'audiodev',
))
#: Values that are URIs or legacy chardev / migration syntax.
_URI_RE = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*:')
#: Option values an allowed option may carry: no path separator, no
#: escaped comma, printable ASCII.
_SAFE_VALUE_RE = re.compile(r'^[A-Za-z0-9_.,=:@+-]*$')


class Item(collections.namedtuple(
        'Item', 'option value index missing_value', defaults=(False,))):
    """One element of a QEMU command line as QEMU reads it.

    :param option: the option name (without dashes), or None for a bare
        argument, which QEMU takes as a disk image path.
    :param value: the option's value, or the bare argument; None for an
        option without value.
    :param index: the position of the option (or bare argument) in argv.
    :param missing_value: the option takes a value but argv ended.
    """

    __slots__ = ()

    def spelled(self) -> str:
        if self.option is None:
            return repr(self.value)
        if self.value is None:
            return '-%s' % self.option
        return '-%s %r' % (self.option, self.value)


def option_name(arg: str) -> typing.Optional[str]:
    """The option an argument names, or None when QEMU takes it as a path.
    """
    if len(arg) < 2 or not arg.startswith('-'):
        return None
    name = arg[2:] if arg.startswith('--') else arg[1:]
    return name or None


def split(args: typing.Sequence[str]) -> typing.List[Item]:
    """Group a QEMU argv into options with their values, as QEMU does."""
    items = []
    index = 0
    while index < len(args):
        name = option_name(args[index])
        if name is None:
            items.append(Item(None, args[index], index))
        elif name in NO_VALUE:
            items.append(Item(name, None, index))
        elif index + 1 >= len(args):
            items.append(Item(name, None, index, missing_value=True))
        else:
            items.append(Item(name, args[index + 1], index))
            index += 1
        index += 1
    return items


def split_keyvals(value: str) -> typing.List[typing.Tuple[str, str]]:
    """Split a QEMU ``key=value,key=value`` option string.

    A part without ``=`` is returned with an empty key (QEMU's implied
    key, such as ``-name guest`` or ``-vnc none``).
    """
    found = []
    for part in value.split(','):
        key, sep, val = part.partition('=')
        found.append((key, val) if sep else ('', key))
    return found


def value_problem(value: str) -> typing.Optional[str]:
    """Why an allowed option's value is unsafe, or None.

    Refused: anything with a path separator, an escaped comma (``,,``,
    which hides a key inside a value), a URI or legacy ``scheme:``
    syntax, a key that names a host resource (:data:`DANGEROUS_KEYS`), or
    characters outside printable ASCII letters, digits and ``_.,=:@+-``.
    """
    if not _SAFE_VALUE_RE.match(value):
        return ('its value %r holds a character QEMU may read as a path, '
                'a quote or an escape' % value)
    if ',,' in value:
        return 'its value %r holds an escaped comma' % value
    for key, val in split_keyvals(value):
        # -global's driver.property=value form names the property last.
        key = key.rsplit('.', 1)[-1]
        if key in DANGEROUS_KEYS:
            return ('its value sets %s=, which names a host path, socket, '
                    'program, file descriptor or device' % key)
        if _URI_RE.match(val) or _URI_RE.match(key):
            return ('its value %r is a URI or scheme:target, which QEMU '
                    'resolves on the host' % value)
    return None


class ArgProblem(collections.namedtuple(
        'ArgProblem', 'item reason remedy')):
    """One refused extra argument: what it is and why."""

    __slots__ = ()


def check_extra(args: typing.Sequence[str],
                allowed: typing.Collection[str]
                ) -> typing.List[ArgProblem]:
    """Check extra device-model arguments against the operator allowlist.

    :param args: the ``<xen:commandline>`` values that are not ours.
    :param allowed: ``[dm_restrict] allowed_qemu_options``.
    :returns: every refused argument (empty when all pass).
    """
    problems = []
    for item in split(args):
        if item.option is None:
            problems.append(ArgProblem(
                item, 'QEMU takes a bare argument as a disk image and '
                'opens it read-write as root',
                'remove it from <xen:commandline>'))
            continue
        if item.missing_value:
            problems.append(ArgProblem(
                item, 'it takes a value but is the last extra argument, so '
                'QEMU would take the next argument libxl adds as its value',
                'give it its value, or remove it'))
            continue
        never = NEVER_ALLOWED.get(item.option)
        if never is not None:
            problems.append(ArgProblem(
                item, never, 'remove it from <xen:commandline>; it cannot '
                'be allowed under dm_restrict'))
            continue
        if item.option not in allowed:
            problems.append(ArgProblem(
                item, 'extra device-model options are refused unless the '
                'operator allows them, because QEMU acts on them as root '
                'before it drops its privileges',
                'remove it from <xen:commandline>, or ask the operator to '
                'add %r to [dm_restrict] allowed_qemu_options'
                % item.option))
            continue
        if item.value is not None:
            reason = value_problem(item.value)
            if reason is not None:
                problems.append(ArgProblem(
                    item, reason, 'pass a value that names nothing on the '
                    'host, or remove it'))
    return problems
