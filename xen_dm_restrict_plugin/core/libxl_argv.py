"""The device-model command lines libxl builds, and nothing else.

The launcher is the last place where a command line can be refused
before QEMU, as root, opens what it names.  It accepts only the options
libxl's ``libxl__build_device_model_args_new`` (Xen 4.17 and later)
writes for an HVM guest that passed the policy, each with a value of the
shape libxl gives it, plus the restriction the dm_restrict hook wrote and
the extra options the operator allowed (``allowed_qemu_options``, with
safe values).  Host paths in the command line (disks, kernel, initrd,
character devices) are checked against ``allowed_host_paths`` again.
"""

from __future__ import annotations

import re

from xen_dm_restrict_plugin.core import hostpaths
from xen_dm_restrict_plugin.core import qemu_args

# On the launcher's start-up path: see qemu_args.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import typing

    from xen_dm_restrict_plugin.core import settings as settings_mod

_RUN_DIR = r'/(?:var/)?run/xen'
_ID = r'[0-9]+'
_MAC = r'(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}'
_IFNAME = r'[A-Za-z0-9_.-]{1,15}'
#: Value shapes the policy holds the domain to, so that what libxl
#: writes from them has the shape this module accepts.
IFNAME_RE = re.compile(r'^%s\Z' % _IFNAME)
#: Domain names: libxl passes the name to QEMU as -name (a comma adds
#: options) and writes it to xenstore, from where Xen's vif-openvswitch
#: puts it unquoted on ovs-vsctl's command line (a space or a quote adds
#: commands). virt-manager's and Nova's names fit.
NAME_RE = re.compile(r'^[A-Za-z0-9_.+:@-]{1,64}\Z')
KEYMAP_RE = re.compile(r'^[a-z]{2}(?:-[a-z]{2,3})?\Z')
#: NIC models libxl passes to QEMU as -device names.
EMULATED_NIC_MODELS = ('e1000', 'rtl8139', 'ne2k_pci', 'pcnet')
_SERVER = r'(?:server=on,wait=off|server,nowait)'
#: The tap name libxl gives QEMU for an emulated NIC, whatever the
#: domain's <target dev> (libxl__device_nic_devname: vifDOMID.DEVID-emu;
#: the hotplug script renames it afterwards).
TAP_IFNAME = r'vif(?P<domid>[0-9]+)\.(?P<devid>[0-9]+)-emu'
#: The -netdev libxl writes for an emulated NIC: groups netdev id, ifname.
TAP_NETDEV_RE = re.compile(
    r'^type=tap,id=(?P<netdev>net(?P<netid>%s)),ifname=(?P<ifname>%s),'
    r'(?:br=%s,)?'
    r'script=no,downscript=no\Z' % (_ID, TAP_IFNAME, _IFNAME))

_CHARDEVS = (
    re.compile(r'^socket,id=libxl-cmd,path=%s/qmp-libxl-%s,%s\Z'
               % (_RUN_DIR, _ID, _SERVER)),
    re.compile(r'^socket,id=libxl-cmd,fd=%s,%s\Z' % (_ID, _SERVER)),
    re.compile(r'^socket,id=libxenstat-cmd,path=%s/qmp-libxenstat-%s,%s\Z'
               % (_RUN_DIR, _ID, _SERVER)),
    re.compile(r'^pty,id=libxl-channel%s\Z' % _ID),
)
_UNIX_CHANNEL = re.compile(r'^socket,id=libxl-channel%s,path=([^,]+),%s\Z'
                           % (_ID, _SERVER))
_DEVICES = tuple(re.compile(r'^%s\Z' % pattern) for pattern in (
    r'lsi53c895a', r'ahci,id=ahci0', r'intel-hda', r'hda-duplex',
    r'ac97', r'es1370', r'sb16', r'xen-pvdevice,device-id=0xc000',
    r'(?:VGA|cirrus-vga),vgamem_mb=[0-9]+',
    r'(?:%s),id=nic%s,netdev=net%s,mac=%s'
    % ('|'.join(EMULATED_NIC_MODELS), _ID, _ID, _MAC),
    r'ide-cd,id=ide-%s,drive=ide-%s,bus=ide\.[0-9],unit=[0-9]' % (_ID, _ID),
    r'ide-hd,bus=ahci0\.[0-9]+,unit=0,drive=ahcidisk-[0-9]+',
    r'scsi-hd,drive=[A-Za-z0-9_-]+,scsi-id=[0-9]+',
    r'piix3-usb-uhci,id=usb', r'nec-usb-xhci,id=usb',
))
_FIXED = {
    'mon': re.compile(r'^chardev=(?:libxl-cmd|libxenstat-cmd),'
                      r'mode=control\Z'),
    'xen-domid': re.compile(r'^[0-9]+\Z'),
    'display': re.compile(r'^none\Z'),
    'vnc': re.compile(r'^(?:none|[0-9.]+:[0-9]+|\[[0-9a-fA-F:.]+\]:[0-9]+)'
                      r'(?:,password=on)?(?:,to=99)?\Z'),
    'k': KEYMAP_RE,
    'boot': re.compile(r'^order=[acdn]+\Z'),
    'usbdevice': re.compile(r'^(?:tablet|mouse|keyboard)\Z'),
    'smp': re.compile(r'^[0-9]+(?:,maxcpus=[0-9]+)?\Z'),
    'netdev': TAP_NETDEV_RE,
    'net': re.compile(r'^none\Z'),
    'machine': re.compile(r'^(?:xenfv|pc,accel=xen)(?:,suppress-vmdesc=on)?'
                          r'(?:,max-ram-below-4g=[0-9]+)?\Z'),
    'm': re.compile(r'^[0-9]+\Z'),
    'name': NAME_RE,
}
#: Options with no value libxl writes.
_FLAGS = frozenset(('no-shutdown', 'nodefaults', 'no-user-config',
                    'nographic', 'usb', 'no-acpi', 'S',
                    'xen-domid-restrict'))
#: The restriction; its values are checked by the launcher's parser.
_RESTRICTION = frozenset(('runas', 'chroot', 'run-with', 'sandbox'))
#: Keys libxl writes in -drive for the raw disks the policy allows.
_DRIVE_KEYS = frozenset(('file', 'if', 'index', 'media', 'format', 'cache',
                         'readonly', 'id', 'bus', 'unit'))
#: Options libxl writes at most once; a second one would win in QEMU
#: (a second -xen-domid attaches the device model to another domain).
_ONCE = frozenset(('xen-domid', 'machine', 'm', 'name', 'vnc', 'display',
                   'boot', 'smp', 'net', 'k', 'kernel', 'initrd', 'append',
                   'runas', 'chroot', 'sandbox', 'no-shutdown', 'S',
                   'xen-domid-restrict'))
_DRIVE_VALUES = {'if': ('ide', 'scsi', 'none'), 'media': ('disk', 'cdrom'),
                 'cache': ('writeback',), 'readonly': ('on',)}
_TEST_MODE = {'machine': re.compile(r'^none\Z'), 'qmp': re.compile(
    r'^stdio\Z')}


class Checker:
    """Checks one device-model command line.

    :param settings: the ``[dm_restrict]`` settings.
    """

    def __init__(self, settings: 'settings_mod.Settings'):
        self.settings = settings

    def _path(self, path: str, expect: hostpaths.Expect
              ) -> typing.Optional[str]:
        return hostpaths.problem(path, self.settings.allowed_host_paths,
                                 expect)

    def _chardev_type(self, kind: str) -> typing.Optional[str]:
        if kind in self.settings.allowed_chardev_types:
            return None
        return 'a %s character device is not allowed ' \
               '([dm_restrict] allowed_chardev_types)' % kind

    def _chardev(self, value: str) -> typing.Optional[str]:
        if any(pattern.match(value) for pattern in _CHARDEVS):
            return None
        match = _UNIX_CHANNEL.match(value)
        if match:
            return self._chardev_type('unix') or self._path(
                match.group(1), hostpaths.Expect.SOCKET)
        return 'it is not a character device libxl writes'

    def _serial(self, value: str) -> typing.Optional[str]:
        if value in ('pty', 'null'):
            return self._chardev_type(value)
        for prefix, kind, expect in (
                ('file:', 'file', hostpaths.Expect.NEW_FILE),
                ('pipe:', 'pipe', hostpaths.Expect.ANY),
                ('unix:', 'unix', hostpaths.Expect.SOCKET)):
            if value.startswith(prefix):
                path = value[len(prefix):]
                if kind == 'unix' and path.endswith(',server,nowait'):
                    path = path[:-len(',server,nowait')]
                return self._chardev_type(kind) or self._path(path, expect)
        if value.startswith('/'):
            return self._chardev_type('dev') or self._path(
                value, hostpaths.Expect.ANY)
        return 'it is not a serial device libxl writes'

    def _drive(self, value: str) -> typing.Optional[str]:
        pairs = qemu_args.split_keyvals(value)
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys) or not set(keys) <= _DRIVE_KEYS:
            return 'it has keys libxl does not write for a raw disk'
        values = dict(pairs)
        if values.get('format', 'raw') != 'raw':
            return 'its format is not raw (qdisk)'
        if 'file' in values and 'format' not in values:
            # libxl always writes one with a file; without it QEMU, still
            # root, probes the image, and a qcow2 or VMDK header names
            # other host files (backing file, data file, extents).
            return 'it names a file but no format=raw, so QEMU would ' \
                   'probe the image format as root'
        for key, allowed in _DRIVE_VALUES.items():
            if key in values and values[key] not in allowed:
                return 'its %s=%s is not what libxl writes' % (
                    key, values[key])
        if 'file' in values:
            # A disk may be a udev symlink to a device node (LVM, iSCSI)
            # or the stable path of a storage daemon's nbd device.
            return hostpaths.problem(
                values['file'], tuple(self.settings.allowed_host_paths)
                + (self.settings.storage_dir,),
                hostpaths.Expect.BLOCK_OR_FILE, disk=True)
        return None

    def _value(self, item: qemu_args.Item) -> typing.Optional[str]:
        option, value = item.option, item.value or ''
        if self.settings.launcher_test_mode and option in _TEST_MODE:
            return None if _TEST_MODE[option].match(value) else \
                'it is not what the launcher test mode accepts'
        if option in _FIXED:
            return None if _FIXED[option].match(value) else \
                'its value is not of the shape libxl writes'
        if option == 'chardev':
            return self._chardev(value)
        if option == 'serial':
            return self._serial(value)
        if option == 'device':
            return None if any(pattern.match(value)
                               for pattern in _DEVICES) else \
                'it is not a device libxl writes for an allowed domain'
        if option == 'drive':
            return self._drive(value)
        if option in ('kernel', 'initrd'):
            return self._path(value, hostpaths.Expect.FILE)
        if option == 'append':
            return None
        if option in self.settings.allowed_qemu_options:
            return qemu_args.value_problem(value)
        return 'libxl does not write it, and [dm_restrict] ' \
               'allowed_qemu_options does not allow it'

    @staticmethod
    def _taps(items: typing.Sequence[qemu_args.Item]) -> typing.List[str]:
        """A tap must be this domain's, named as libxl names it."""
        domids = [item.value for item in items
                  if item.option == 'xen-domid' and item.value]
        found = []
        for item in items:
            match = TAP_NETDEV_RE.match(item.value or '') \
                if item.option == 'netdev' else None
            if match is None:
                continue
            if int(match.group('devid')) != int(match.group('netid')):
                found.append('%s: libxl names the tap of netdev net%s '
                             'vifDOMID.%s-emu' % (
                                 item.spelled(), match.group('netid'),
                                 match.group('netid')))
            if domids and int(match.group('domid')) != int(domids[0]):
                found.append('%s: the tap is named for domain %s, not for '
                             'this device model\'s domain %s' % (
                                 item.spelled(), match.group('domid'),
                                 domids[0]))
        return found

    def problems(self, args: typing.Sequence[str]) -> typing.List[str]:
        """Every argument of ``args`` that libxl would not write for an
        allowed domain, each as "argument: reason".
        """
        found = []
        seen: typing.Dict[str, int] = {}
        items = qemu_args.split(args)
        found += self._taps(items)
        for item in items:
            if item.option in _ONCE:
                seen[item.option] = seen.get(item.option, 0) + 1
                if seen[item.option] == 2:
                    found.append('%s: libxl writes -%s once; a second one '
                                 'overrides it' % (item.spelled(),
                                                   item.option))
            if item.option is None:
                reason = 'QEMU opens a bare argument as a disk image'
            elif item.missing_value:
                reason = 'it takes a value and none follows'
            elif item.option in _RESTRICTION:
                reason = None
            elif item.option in qemu_args.NO_VALUE:
                reason = None if item.option in _FLAGS or (
                    item.option in self.settings.allowed_qemu_options) \
                    else 'libxl does not write it'
            else:
                reason = self._value(item)
            if reason:
                found.append('%s: %s' % (item.spelled(), reason))
        return found
