"""What libvirt does with each part of a Xen domain, and the verdict on it.

One row per element of libvirt's domain schema that a tenant domain may
carry under dm_restrict (libvirt 9.0, Debian 12, to 12.8), with the
attributes accepted on it, what libvirt's libxl driver and its generic
code do with it for a Xen domain, and the libvirt function that does it.
Parts that are ignored or harmlessly mapped are accepted; parts that reach
a root process with a host resource are accepted only under the rule of
:mod:`xen_dm_restrict_plugin.core.policy` named in the row; parts named by
a refusing row are refused with that row's reason.  Every other element
and attribute of libvirt's schema is refused by
:mod:`xen_dm_restrict_plugin.core.schema` as unknown: a name libvirt adds
is never accepted silently (``tests/unit/test_vocabulary.py`` holds this
table against libvirt's RelaxNG schemas of both releases).

The table is rendered into the documentation (``doc/source/admin/
vocabulary.rst``).
"""

import dataclasses
import enum
import typing


class Verdict(enum.Enum):
    """What the product does with a part of the domain."""

    #: libvirt's libxl driver never reads it for a Xen domain.
    IGNORED = 'ignored'
    #: mapped to a libxl field whose use reaches no host resource.
    MAPPED = 'mapped'
    #: reaches a root process (libxl, its hotplug scripts or QEMU before
    #: it drops privileges) with a host path, program or option: accepted
    #: only within the rule of the policy the row names.
    CHECKED = 'checked'
    #: refused with the row's reason.
    REFUSED = 'refused'


@dataclasses.dataclass(frozen=True)
class Row:
    """One element of the domain, where it stands (``devices/disk/driver``).

    :param path: the element's path under ``<domain>`` ('' for the root).
    :param attrs: the attributes accepted on it.
    :param verdict: what the product does with it.
    :param libvirt: what libvirt's libxl driver and libxl do with it.
    :param function: the libvirt function that reads it.
    :param text: whether it may hold text.
    :param many: whether it may appear more than once in its parent.
    :param reason: why it is refused (refusing rows).
    :param remedy: what the tenant can do instead (refusing rows).
    """

    path: str
    attrs: typing.FrozenSet[str]
    verdict: Verdict
    libvirt: str
    function: str
    text: bool = False
    many: bool = False
    reason: str = ''
    remedy: str = ''

    @property
    def name(self) -> str:
        return self.path.rsplit('/', 1)[-1]


def _r(path: str, attrs: str, verdict: Verdict, libvirt: str,
       function: str, text: bool = False, many: bool = False,
       reason: str = '', remedy: str = '') -> Row:
    return Row(path, frozenset(attrs.split()), verdict, libvirt, function,
               text, many, reason, remedy)


I, M, C, R = Verdict.IGNORED, Verdict.MAPPED, Verdict.CHECKED, Verdict.REFUSED
_ADDR = 'type domain bus slot function multifunction controller target unit ' \
    'port'
_ADDR_WHY = ('device addresses are parsed by the generic code; libxl '
             'places every device itself')
_ADDR_FN = 'virDomainDeviceInfoParseXML'
_ALIAS_WHY = 'a user alias, used by the generic code only'
_CHR_FN = 'libxlMakeChrdevStr, libxlMakeChannel'
_LIFECYCLE_FN = 'libxlBuildDomainConfig, libxlDomainShutdownThread'
_HYPERV_FN = 'libxlMakeDomBuildInfo (u.hvm.viridian_enable)'
_HYPERV_FLAGS = ('relaxed', 'vapic', 'vpindex', 'runtime', 'synic',
                 'stimer', 'reset', 'frequencies', 'reenlightenment',
                 'tlbflush', 'ipi', 'evmcs')
_IOTUNE = ('total_bytes_sec read_bytes_sec write_bytes_sec total_iops_sec '
           'read_iops_sec write_iops_sec total_bytes_sec_max '
           'read_bytes_sec_max write_bytes_sec_max total_iops_sec_max '
           'read_iops_sec_max write_iops_sec_max size_iops_sec group_name '
           'total_bytes_sec_max_length read_bytes_sec_max_length '
           'write_bytes_sec_max_length total_iops_sec_max_length '
           'read_iops_sec_max_length write_iops_sec_max_length').split()


def _device_extras(device: str) -> typing.List[Row]:
    return [
        _r('devices/%s/alias' % device, 'name', I, _ALIAS_WHY,
           'virDomainDeviceInfoParseXML'),
        _r('devices/%s/address' % device, _ADDR, I, _ADDR_WHY, _ADDR_FN),
    ]


def _chardev(role: str, many: bool = True) -> typing.List[Row]:
    base = 'devices/' + role
    return [
        _r(base, 'type', C, 'becomes a QEMU -serial/-chardev option string '
           '(HVM serial) or a xenconsoled/QEMU console backend; the source '
           'type decides what QEMU opens as root', _CHR_FN, many=many),
        _r(base + '/source', 'path mode host service', C,
           'the host path, socket or address QEMU opens as root; allowed by '
           'allowed_chardev_types and allowed_host_paths', _CHR_FN),
        _r(base + '/alias', 'name', I, _ALIAS_WHY, _ADDR_FN),
        _r(base + '/protocol', 'type', M, 'telnet/raw framing of a tcp '
           'source (tcp is refused by the chardev rule)', _CHR_FN),
    ]


ROWS: typing.Tuple[Row, ...] = tuple([
    _r('', 'type id', C, 'the hypervisor (only "xen" is accepted); the id '
       'of a running domain is output only', 'virDomainDefParseXML'),
    _r('name', '', C, 'libxl_domain_create_info.name, pasted into QEMU\'s '
       '-name (no comma allowed)', 'libxlMakeDomCreateInfo', text=True),
    _r('uuid', '', M, 'libxl_domain_create_info.uuid',
       'libxlMakeDomCreateInfo', text=True),
    _r('title', '', I, 'kept by the generic code only', 'virDomainDefParseXML',
       text=True),
    _r('description', '', I, 'kept by the generic code only (content not '
       'checked)', 'virDomainDefParseXML', text=True),
    _r('metadata', '', I, 'kept for applications (Nova\'s <nova:instance>, '
       'this product\'s record); content not checked',
       'virDomainDefParseXML'),
    _r('memory', 'unit', M, 'b_info.max_memkb', 'libxlMakeDomBuildInfo',
       text=True),
    _r('currentMemory', 'unit', M, 'b_info.target_memkb',
       'libxlMakeDomBuildInfo', text=True),
    _r('vcpu', 'placement cpuset current', M, 'b_info.max_vcpus, '
       'avail_vcpus and the vcpu affinity', 'libxlMakeDomBuildInfo, '
       'libxlSetVcpuAffinities', text=True),
    _r('cputune', '', M, 'holds <shares>', 'libxlMakeDomBuildInfo'),
    _r('cputune/shares', '', M, 'b_info.sched_params.weight',
       'libxlMakeDomBuildInfo', text=True),
    _r('cpu', 'mode match check', M, 'CPUID policy; vmx/svm features set '
       'nested_hvm when libxl.conf allows it', 'libxlMakeDomBuildInfo'),
    _r('cpu/model', 'fallback', M, 'CPU model for the CPUID policy',
       'libxlMakeDomBuildInfo', text=True),
    _r('cpu/vendor', '', M, 'CPU vendor for the CPUID policy',
       'libxlMakeDomBuildInfo', text=True),
    _r('cpu/topology', 'sockets dies clusters cores threads', I,
       'not passed to libxl (the guest sees vcpus only)',
       'libxlMakeDomBuildInfo'),
    _r('cpu/feature', 'name policy', M, 'CPUID bits; vmx/svm decide '
       'nested_hvm', 'libxlMakeDomBuildInfo', many=True),
    _r('cpu/numa', '', M, 'virtual NUMA nodes', 'libxlMakeVnumaList'),
    _r('cpu/numa/cell', 'id cpus memory unit memAccess discard', M,
       'b_info.vnuma_nodes', 'libxlMakeVnumaList', many=True),
    _r('cpu/numa/cell/distances', '', M, 'vnode distances',
       'libxlMakeVnumaList'),
    _r('cpu/numa/cell/distances/sibling', 'id value', M, 'vnode distances',
       'libxlMakeVnumaList', many=True),
    _r('os', '', M, 'holds the boot configuration', 'libxlMakeDomBuildInfo'),
    _r('os/type', 'arch machine', C, 'the guest type (c_info.type: HVM, PV '
       'or PVH)', 'libxlMakeDomCreateInfo', text=True),
    _r('os/loader', 'readonly type format', C, 'u.hvm.system_firmware, a '
       'host file libxl loads as root (firmware directories or '
       'allowed_host_paths); any format but raw makes libvirt fail the '
       'start', 'libxlMakeDomBuildInfo', text=True),
    _r('os/kernel', '', C, 'b_info.kernel, a host file libxl or QEMU opens '
       'as root (allowed_host_paths)', 'libxlMakeDomBuildInfo', text=True),
    _r('os/initrd', '', C, 'b_info.ramdisk, a host file (allowed_host_paths)',
       'libxlMakeDomBuildInfo', text=True),
    _r('os/cmdline', '', M, 'b_info.cmdline, given to the guest kernel',
       'libxlMakeDomBuildInfo', text=True),
    _r('os/boot', 'dev', C, 'u.hvm.boot, QEMU\'s boot order',
       'libxlMakeDomBuildInfo', many=True),
    _r('os/acpi', '', C, 'holds ACPI tables', 'libxlMakeDomBuildInfo'),
    _r('os/acpi/table', 'type', C, 'u.hvm.acpi_firmware, a host file '
       '(allowed_host_paths)', 'libxlMakeDomBuildInfo', text=True,
       many=True),
    _r('bootloader', '', C, 'a program libxl runs as root '
       '(allowed_bootloaders)', 'libxlMakeDomBuildInfo', text=True),
    _r('bootloader_args', '', C, 'arguments of the bootloader run as root '
       '(refused by the policy)', 'libxlMakeDomBuildInfo', text=True),
    _r('features', '', M, 'guest platform features', 'libxlMakeDomBuildInfo'),
    _r('features/acpi', '', M, 'u.hvm.acpi', 'libxlMakeDomBuildInfo'),
    _r('features/apic', '', M, 'u.hvm.apic', 'libxlMakeDomBuildInfo'),
    _r('features/pae', '', M, 'u.hvm.pae', 'libxlMakeDomBuildInfo'),
    _r('features/hap', 'state', M, 'c_info.hap', 'libxlMakeDomCreateInfo'),
    _r('features/viridian', '', M, 'u.hvm.viridian',
       'libxlMakeDomBuildInfo'),
    _r('features/hyperv', 'mode', M, 'Hyper-V enlightenments (viridian '
       'groups)', _HYPERV_FN),
] + [
    _r('features/hyperv/' + flag, 'state', M, 'a viridian group',
       _HYPERV_FN) for flag in _HYPERV_FLAGS
] + [
    _r('features/hyperv/spinlocks', 'state retries', M, 'a viridian group',
       _HYPERV_FN),
    _r('features/hyperv/vendor_id', 'state value', I, 'not passed to libxl',
       _HYPERV_FN),
    _r('clock', 'offset adjustment basis timezone', M, 'rtc_timeoffset and '
       'localtime', 'libxlMakeDomBuildInfo'),
    _r('clock/timer', 'name present mode tickpolicy track frequency', M,
       'tsc_mode and u.hvm.hpet', 'libxlMakeDomBuildInfo', many=True),
    _r('on_poweroff', '', C, 'what libvirt does when the guest powers off '
       '(coredump actions refused)', _LIFECYCLE_FN,
       text=True),
    _r('on_reboot', '', C, 'what libvirt does when the guest reboots',
       _LIFECYCLE_FN, text=True),
    _r('on_crash', '', C, 'what libvirt does when the guest crashes '
       '(coredump actions refused)', _LIFECYCLE_FN,
       text=True),
    _r('devices', '', M, 'holds the devices', 'libxlBuildDomainConfig'),
    _r('devices/emulator', '', C, 'device_model_override, the program libxl '
       'runs as root (only the configured device model)',
       'libxlMakeDomBuildInfo', text=True),
    # Disks: libxlMakeDisk reads the driver name and format, the source,
    # the target, <readonly>, the device and discard; nothing else.
    _r('devices/disk', 'type device', C, 'a libxl_device_disk; the source '
       'type and driver decide the backend', 'libxlMakeDisk', many=True),
    _r('devices/disk/driver', 'name type discard cache io', C,
       'name and type choose backend and format (qemu/file: qdisk, which '
       'this product serves by the kernel backend for raw files or the '
       'storage daemon for qcow2); discard becomes x_disk.discard_enable; '
       'cache and io are never read', 'libxlMakeDisk, libxlDiskSetDiscard'),
    _r('devices/disk/source', 'file dev', C, 'x_disk.pdev_path, opened by '
       'the disk backend and by QEMU as root (allowed_host_paths, storage '
       'rules)', 'libxlMakeDisk'),
    _r('devices/disk/target', 'dev bus', C, 'x_disk.vdev, from which libxl '
       'derives the emulated disk', 'libxlMakeDisk'),
    _r('devices/disk/readonly', '', M, 'x_disk.readwrite = 0',
       'libxlMakeDisk'),
    _r('devices/disk/shareable', '', I, 'never read by the libxl driver',
       'libxlMakeDisk'),
    _r('devices/disk/serial', '', I, 'never read by the libxl driver (the '
       'guest does not see it)', 'libxlMakeDisk', text=True),
    _r('devices/disk/iotune', '', I, 'I/O limits are applied by the QEMU '
       'driver only; never read by the libxl driver', 'libxlMakeDisk'),
] + [
    _r('devices/disk/iotune/' + name, '', I, 'never read by the libxl '
       'driver', 'libxlMakeDisk', text=True) for name in _IOTUNE
] + _device_extras('disk') + [
    _r('devices/controller', 'type index model maxGrantFrames '
       'maxEventChannels', M, 'xenbus limits become b_info.max_grant_frames '
       'and event_channels; IDE controllers are implicit',
       'libxlMakeDomBuildInfo', many=True),
] + _device_extras('controller') + [
    _r('devices/interface', 'type managed', C, 'a libxl_device_nic; '
       'libxl\'s hotplug script plugs it as root', 'libxlMakeNic',
       many=True),
    _r('devices/interface/mac', 'address', M, 'x_nic.mac', 'libxlMakeNic'),
    _r('devices/interface/source', 'bridge network', C, 'x_nic.bridge, '
       'pasted into QEMU\'s -netdev option; a network is resolved at start',
       'libxlMakeNic, libxlNetworkPrepareDevices'),
    _r('devices/interface/source/address', 'type domain bus slot function '
       'multifunction', C, 'a PCI address for hostdev interfaces (refused)',
       'libxlMakeNic'),
    _r('devices/interface/model', 'type', C, 'x_nic.model, a QEMU -device '
       'name', 'libxlMakeNic'),
    _r('devices/interface/script', 'path', C, 'x_nic.script, run by libxl '
       'as root (allowed_interface_scripts)', 'libxlMakeNic'),
    _r('devices/interface/ip', 'address family prefix', M, 'x_nic.ip, '
       'written to xenstore for the hotplug script', 'libxlMakeNic',
       many=True),
    _r('devices/interface/target', 'dev', C, 'x_nic.ifname, the backend '
       'interface name', 'libxlMakeNic'),
    _r('devices/interface/virtualport', 'type', C, 'an openvswitch port '
       'profile makes libxl\'s hotplug run vif-openvswitch on the bridge',
       'libxlMakeNic'),
    _r('devices/interface/virtualport/parameters', 'interfaceid profileid',
       I, 'only the port type is read by the libxl driver', 'libxlMakeNic'),
    _r('devices/interface/vlan', 'trunk', C, 'the tags are appended to '
       'x_nic.bridge (BRIDGE.TAG:TAG) for vif-openvswitch', 'libxlMakeNic'),
    _r('devices/interface/vlan/tag', 'id nativeMode', C, 'one VLAN tag of '
       'the Open vSwitch port', 'libxlMakeNic', many=True),
    _r('devices/interface/mtu', 'size', M, 'a TODO in libxlMakeNic up to '
       'libvirt 10 (ignored); an integer for the vif hotplug script later',
       'libxlMakeNic'),
    _r('devices/interface/bandwidth', '', M, 'holds the rate limits',
       'libxlMakeNic'),
    _r('devices/interface/bandwidth/outbound', 'average peak burst floor',
       M, 'average becomes x_nic.rate_bytes_per_interval (netback\'s credit '
       'scheduler); the others are never read', 'libxlMakeNic'),
    _r('devices/interface/bandwidth/inbound', 'average peak burst floor', I,
       'never read by the libxl driver', 'libxlMakeNic'),
    _r('devices/interface/filterref', '', R, 'nwfilters are instantiated by '
       'the QEMU and LXC drivers only', 'virDomainConfNWFilterInstantiate '
       '(never called by the libxl driver)',
       reason='libvirt\'s libxl driver never instantiates network filters, '
       'so the guest would run without the firewall its orchestrator asked '
       'for', remedy='remove <filterref> and filter on the bridge or in '
       'the network (e.g. Neutron security groups with an iptables or OVS '
       'firewall driver on the host)'),
] + _device_extras('interface') + [
    _r('devices/input', 'type bus', C, 'u.hvm.usbdevice_list ("tablet", '
       '"mouse"): QEMU USB devices', 'libxlMakeDomBuildInfo', many=True),
] + _device_extras('input') + [
    _r('devices/graphics', 'type port autoport listen keymap passwd', C,
       'a libxl_device_vfb: QEMU\'s -vnc option', 'libxlMakeVfb, '
       'libxlMakeBuildInfoVfb', many=True),
    _r('devices/graphics/listen', 'type address', C, 'vnc.listen, pasted '
       'into QEMU\'s -vnc option', 'libxlMakeVfb'),
    _r('devices/video', '', C, 'u.hvm.vga', 'libxlMakeVideo', many=True),
    _r('devices/video/model', 'type vram heads primary', C, 'u.hvm.vga.kind '
       'and video_memkb: QEMU\'s -vga', 'libxlMakeVideo'),
    _r('devices/video/alias', 'name', I, _ALIAS_WHY, _ADDR_FN),
    _r('devices/video/address', _ADDR, I, _ADDR_WHY, _ADDR_FN),
] + _chardev('serial') + [
    _r('devices/serial/target', 'type port', M, 'which serial port',
       _CHR_FN),
    _r('devices/serial/target/model', 'name', I, 'never read by the libxl '
       'driver', _CHR_FN),
    _r('devices/serial/log', 'file append', I, 'virtlogd serves the QEMU '
       'driver only; libxlMakeChrdevStr never reads <log>', _CHR_FN),
] + _chardev('console') + [
    _r('devices/console/target', 'type port', M, 'xen: the PV console '
       '(xenconsoled); serial: an alias of the first serial', _CHR_FN),
    _r('devices/console/log', 'file append', I, 'virtlogd serves the QEMU '
       'driver only; libxlMakeChrdevStr never reads <log>', _CHR_FN),
] + _chardev('channel') + [
    _r('devices/channel/target', 'type name', M, 'the PV channel name',
       'libxlMakeChannel'),
    _r('devices/sound', 'model', C, 'u.hvm.soundhw: QEMU\'s -soundhw',
       'libxlMakeDomBuildInfo', many=True),
] + _device_extras('sound') + [
    _r('devices/memballoon', 'model', M, 'only model "xen" is accepted by '
       'libvirt; libxl balloons through xenstore', 'libxlMakeDomBuildInfo'),
    _r('devices/memballoon/stats', 'period', I, 'statistics polling of the '
       'QEMU driver; never read by the libxl driver',
       'libxlMakeDomBuildInfo'),
] + _device_extras('memballoon'))

#: Rows by path.
BY_PATH: typing.Mapping[str, Row] = {row.path: row for row in ROWS}


def row(path: str) -> typing.Optional[Row]:
    """The row of the element at ``path``, or None."""
    return BY_PATH.get(path)


def accepted() -> typing.List[Row]:
    """The rows of the elements a domain may carry."""
    return [item for item in ROWS if item.verdict is not Verdict.REFUSED]


def refused() -> typing.List[Row]:
    """The rows of the elements refused by name."""
    return [item for item in ROWS if item.verdict is Verdict.REFUSED]
