"""Configuration options of the plugin, and their validation at load time.

Options live in the ``[dm_restrict]`` group of the orchestrator's
configuration.  :func:`load` turns them into a frozen :class:`Settings`
and refuses, naming the option, anything that would make the restriction
unsafe, so a bad file fails when the service starts instead of on the
first tenant boot.  :func:`list_opts` feeds oslo-config-generator and the
Sphinx option reference.
"""

import difflib
import logging
import os
import re
import typing

from oslo_config import cfg

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import hostpaths
from xen_dm_restrict_plugin.core import libxl_argv
from xen_dm_restrict_plugin.core import nics
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin.core import qemu_args
from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin.core import settings as settings_mod
from xen_dm_restrict_plugin import exception

LOG = logging.getLogger(__name__)

GROUP = 'dm_restrict'

#: The validated settings (defined in the policy core, which reads them).
Settings = settings_mod.Settings

SYNTAX_PROBE = constants.SYNTAX_PROBE
SYNTAX_RUNAS = constants.SYNTAX_RUNAS
SYNTAX_RUN_WITH = constants.SYNTAX_RUN_WITH
SANDBOX_REQUIRED = constants.SANDBOX_REQUIRED
SANDBOX_WHEN_SUPPORTED = constants.SANDBOX_WHEN_SUPPORTED
SANDBOX_OFF = constants.SANDBOX_OFF
UNMAPPED_REFUSE = constants.UNMAPPED_REFUSE
UNMAPPED_SHARED = constants.UNMAPPED_SHARED
PV_DOM0_QEMU_REFUSE = constants.PV_DOM0_QEMU_REFUSE
PV_DOM0_QEMU_ALLOW = constants.PV_DOM0_QEMU_ALLOW
NETNS_REQUIRED = constants.NETNS_REQUIRED
NETNS_EXCEPT_VNC = constants.NETNS_EXCEPT_VNC
NETNS_OFF = constants.NETNS_OFF
CGROUPS_REQUIRED = constants.CGROUPS_REQUIRED
STORAGE_DAEMON_ON = constants.STORAGE_DAEMON_ON
STORAGE_DAEMON_OFF = constants.STORAGE_DAEMON_OFF
CGROUPS_OFF = constants.CGROUPS_OFF

dm_restrict_opts = [
    cfg.DictOpt(
        'tenant_uid_ranges', default={},
        help='Map of tenant id to the inclusive uid range its device models '
             'run as, written TENANT:FIRST-LAST and separated by commas, '
             'e.g. "acme:200000-200999,globex:201000-201999". Ranges must '
             'not overlap and must not contain 0, 65534, 65535 or '
             '4294967295. The uids need no passwd entry; a uid that has '
             'one is never leased.'),
    cfg.StrOpt(
        'shared_uid_range',
        help='Inclusive uid range FIRST-LAST that tenants without a range '
             'of their own take uids from when unmapped_tenants is '
             '"shared". Must not overlap any tenant range.'),
    cfg.StrOpt(
        'unmapped_tenants', default=UNMAPPED_REFUSE,
        choices=[(UNMAPPED_REFUSE, 'Refuse to boot VMs of tenants that '
                  'have no range in tenant_uid_ranges.'),
                 (UNMAPPED_SHARED, 'Lease their uids from '
                  'shared_uid_range.')],
        help='What to do with a tenant that has no range of its own.'),
    cfg.IntOpt(
        'device_model_gid', min=1, max=ranges.MAX_UID,
        help='Group id every device model runs with. Unset (the default) '
             'gives each device model the group id equal to its uid, so no '
             'two domains share a group either.'),
    cfg.StrOpt(
        'chroot_base_dir', default='/var/run/xen/dm-restrict',
        help='Directory holding one empty, root-owned chroot directory per '
             'device-model uid (BASE/qemu-root-UID). Must be owned by root '
             'and not writable by others.'),
    cfg.StrOpt(
        'sandbox', default=SANDBOX_WHEN_SUPPORTED,
        choices=[(SANDBOX_REQUIRED, 'Pass -sandbox and refuse to boot when '
                  'the device model has no seccomp support.'),
                 (SANDBOX_WHEN_SUPPORTED, 'Pass -sandbox when the device '
                  'model supports it, and log a warning when it does not.'),
                 (SANDBOX_OFF, 'Never pass -sandbox.')],
        help='Seccomp policy for the device model.'),
    cfg.StrOpt(
        'device_model_syntax', default=SYNTAX_PROBE,
        choices=[(SYNTAX_PROBE, 'Probe qemu_binary (or the domain\'s '
                  '<emulator>) and use the syntax it supports; refuse when '
                  'it cannot restrict.'),
                 (SYNTAX_RUNAS, 'Use -runas UID:GID and -chroot DIR '
                  '(QEMU before 10 and 9 respectively) without probing.'),
                 (SYNTAX_RUN_WITH, 'Use -run-with user=UID:GID,chroot=DIR '
                  '(QEMU 9.1 and later) without probing.')],
        help='How to tell the device model which user and chroot to use. '
             'With an explicit syntax nothing is probed and the sandbox '
             'policy "when-supported" passes -sandbox.'),
    cfg.StrOpt(
        'qemu_binary', default='/usr/libexec/xen-qemu-system-i386',
        help='The qemu-xen device model that libvirt starts for HVM guests '
             'without an <emulator> element; probed for restriction '
             'support and exec\'d by the launcher.'),
    cfg.StrOpt(
        'launcher',
        help='If set, the path of the xen-dm-restrict-launch wrapper, '
             'written as the <emulator> of every restricted domain so that '
             'the device model starts in fresh namespaces with rlimits and '
             'its chroot directory in place.'),
    cfg.StrOpt(
        'lease_db', default='/var/lib/xen-dm-restrict/leases.sqlite',
        help='SQLite database of per-domain uid leases. Must be on local '
             'storage shared by every process of this host that boots '
             'VMs.'),
    cfg.FloatOpt(
        'lease_db_timeout', default=10.0, min=0.1,
        help='Seconds to wait for another process holding the lease '
             'database lock before failing the boot.'),
    cfg.StrOpt(
        'reaper_user', default='xen-dm-reaper',
        help='Dedicated user (name or numeric uid) the reaper kills '
             'device-model processes as. Must not be root and must not be '
             'inside any uid range; anything running as it is killed too.'),
    cfg.BoolOpt(
        'enforce', default=True,
        help='In the libvirt daemon hook, refuse to start an HVM qemu-xen '
             'domain that carries no restriction.'),
    cfg.IntOpt(
        'max_xml_bytes', default=1048576, min=1024,
        help='Largest domain XML document accepted, in bytes.'),
    cfg.StrOpt(
        'reaper_lock_file', default='/run/xen-dm-restrict/reaper.lock',
        help='File every reaper of this host takes an exclusive flock on '
             'while it kills, because a reaper\'s kill(-1) also kills any '
             'other reaper running at the same time. Its directory is '
             'created (mode 0700) if missing.'),
    cfg.ListOpt(
        'stubdom_emulators', default=[],
        deprecated_for_removal=True,
        deprecated_reason='libvirt\'s libxl driver has no stub-domain '
                          'support: a listed emulator runs in dom0.',
        help='Must stay empty. libvirt\'s libxl driver never sets libxl\'s '
             'device_model_stubdomain, so an <emulator> declared here would '
             'run in dom0 as an unrestricted root device model; a '
             'non-empty value is refused at load.'),
    cfg.BoolOpt(
        'reap_device_models', default=True,
        help='In the orchestrator, kill every process of a domain\'s '
             'device-model uid right before the domain starts, after it '
             'stops, and before its lease is released, and refuse the boot '
             'when that is impossible. As root the orchestrator reaps in '
             'its own process; otherwise through the oslo.privsep daemon '
             'configured in [dm_restrict_privileged] (it keeps only '
             'CAP_SETUID). Off leaves the reaping to the libvirt daemon '
             'hook, which always reaps; also off for libvirt\'s test '
             'driver, where no device model runs.'),
    cfg.ListOpt(
        'allowed_qemu_options', default=[],
        help='Extra QEMU options (names without the dash, e.g. "rtc") that '
             'a domain may pass in <xen:commandline>. Empty (the default) '
             'refuses every extra argument: QEMU acts on its options as '
             'root before it drops its privileges. Options that set the '
             'restriction, name host files, sockets, programs or devices '
             '(runas, chroot, chardev, drive, device, netdev, object, '
             'incoming, ...) can never be allowed, and an allowed option '
             'is still refused when its value names a path, socket, '
             'program, file descriptor or URI.'),
    cfg.ListOpt(
        'allowed_host_paths', default=[],
        help='Directory prefixes under which a domain may name host paths '
             'that libxl or QEMU open as root: disk and CD-ROM sources, '
             'kernel, initrd, loader, ACPI tables, and character-device '
             'sources of allowed types. A path must lie under one of them '
             'as written and with every symlink resolved, be in normal '
             'form, and be of the right type (block device or regular '
             'file). Firmware in libxl\'s own directories (e.g. '
             '/usr/lib/xen/boot) is allowed as <loader> anyway. Empty (the '
             'default) refuses every domain that has a disk. An entry may '
             'hold {tenant} (the tenant id) and {instance} (the instance '
             'uuid), e.g. /var/lib/nova/instances/{instance}: for a domain '
             'it then names that instance\'s own directory only, which it '
             'may read and write. An entry without them is shared by all '
             'tenants and may only be read (read-only disks and CD-ROMs, '
             'backing files, kernels, firmware) unless it is also listed in '
             'writable_shared_host_paths. A shared entry may not contain '
             'a scoped one (/var/lib/libvirt/images next to '
             '/var/lib/libvirt/images/{instance} is refused: it would '
             'expose every instance\'s directory). A disk may be named '
             'by a udev symlink in an allowed directory (/dev/VG/LV, '
             '/dev/disk/by-path/...) that resolves to a block device node '
             'in /dev, never one dom0 uses or a running guest already '
             'has.'),
    cfg.ListOpt(
        'writable_shared_host_paths', default=[],
        help='Entries of allowed_host_paths without {tenant} or {instance} '
             'that every tenant may also write: where the orchestrator '
             'names each instance\'s writable disks itself, e.g. a volume '
             'group (/dev/nova-vg) for Nova\'s LVM backend, or '
             '/dev/disk/by-path for Cinder iSCSI volumes. Each must also be '
             'in allowed_host_paths.'),
    cfg.StrOpt(
        'storage_daemon', default=STORAGE_DAEMON_OFF,
        choices=[(STORAGE_DAEMON_ON, 'Serve each qcow2 disk of a restricted '
                  'guest from a qemu-storage-daemon of its own instance: '
                  'run as the instance\'s uid, in a mount namespace holding '
                  'only the image\'s backing chain, in the instance\'s '
                  'cgroup, under seccomp, exporting NBD on a unix socket '
                  'to the kernel\'s nbd device, which the guest gets as a '
                  'phy disk.'),
                 (STORAGE_DAEMON_OFF, 'Refuse qcow2 disks (convert them to '
                  'raw).')],
        help='How qcow2 disks of restricted guests are served. libxl would '
             'serve them with a QEMU qdisk backend, which does not work '
             'under -xen-domid-restrict (Xen\'s feature page lists it as '
             'not implemented).'),
    cfg.StrOpt(
        'storage_dir', default='/run/xen-dm-restrict/storage',
        help='Directory of the storage daemons: STORAGE_DIR/UUID/TARGET is '
             'the stable block device path a daemon-served disk names in '
             'the domain (a symlink to its nbd device while the domain '
             'runs), beside the daemon\'s socket directory.'),
    cfg.StrOpt(
        'storage_daemon_binary', default='/usr/bin/qemu-storage-daemon',
        help='The qemu-storage-daemon binary (Debian: qemu-system-common).'),
    cfg.ListOpt(
        'allowed_chardev_types', default=['pty'],
        item_type=cfg.types.String(choices=['pty', 'null', 'dev']),
        help='Source types a serial, console or channel device may have. '
             'pty and null open no host path; dev names a host device QEMU '
             'opens as root, which must then lie under allowed_host_paths. '
             'file and unix cannot be allowed: root QEMU truncates an '
             'existing file (another guest\'s image, a shared ISO) and '
             'unlinks an existing socket (another guest\'s console) to '
             'bind its own. pipe cannot be allowed: QEMU opens PATH.in and '
             'PATH.out.'),
    cfg.StrOpt(
        'pv_dom0_qemu', default=PV_DOM0_QEMU_REFUSE,
        choices=[(PV_DOM0_QEMU_REFUSE,
                  'Refuse PV and PVH guests that need a QEMU in dom0 (a '
                  'framebuffer, a qdisk disk, a channel).'),
                 (PV_DOM0_QEMU_ALLOW,
                  'Allow them: libxl starts that QEMU as root, '
                  'unrestricted. Their <xen:commandline> is still checked.')],
        help='What to do with a PV or PVH guest for which libxl would run '
             'an unrestricted root QEMU in dom0.'),
    cfg.ListOpt(
        'allowed_interface_scripts',
        default=['vif-bridge', '/etc/xen/scripts/vif-bridge'],
        help='Values an <interface><script path=...> may have; libxl\'s '
             'hotplug runs the script as root. The default is the script '
             'libxl runs anyway for a bridged interface.'),
    cfg.ListOpt(
        'allowed_bridges', default=[],
        help='Linux bridges a tenant\'s <interface type="bridge"> may name '
             '(libxl\'s vif-bridge puts the guest on it). None by default: '
             'list the bridges of tenant networks, never a management '
             'bridge. Each must exist when a domain starts.'),
    cfg.ListOpt(
        'allowed_ovs_bridges', default=[],
        help='Open vSwitch bridges a tenant\'s <interface type="bridge"> '
             'with <virtualport type="openvswitch"> may name (libxl\'s '
             'vif-openvswitch adds the port, with the <vlan> tag or trunk '
             'of the interface). None by default. When any is listed, '
             'Open vSwitch is in use: a domain with a <target dev> name is '
             'refused (at define and when it starts) while Open vSwitch\'s '
             'database cannot be read with ovs-vsctl (its default '
             'database, $OVS_RUNDIR/db.sock), since a name the database '
             'holds would have vif-openvswitch delete that port.'),
    cfg.ListOpt(
        'allowed_networks', default=[],
        help='libvirt networks a tenant\'s <interface type="network"> may '
             'name. Each is resolved through libvirt\'s network records at '
             'define and again when the domain starts: its bridge must be '
             'in allowed_bridges (or allowed_ovs_bridges for an Open '
             'vSwitch network); forward mode hostdev (PCI passthrough) and '
             'the macvtap modes are refused. None by default.'),
    cfg.StrOpt(
        'libvirt_network_state_dir', default='/run/libvirt/network',
        advanced=True,
        help='Where libvirt\'s network driver keeps the live definitions '
             'of active networks (NAME.xml). libvirtd\'s hook resolves an '
             '<interface type="network"> from them: it must not call back '
             'into libvirt.'),
    cfg.StrOpt(
        'libvirt_network_config_dir', default='/etc/libvirt/qemu/networks',
        advanced=True,
        help='Where libvirt keeps the definitions of networks; read at '
             'define for a network not started yet.'),
    cfg.ListOpt(
        'allowed_bootloaders',
        default=['pygrub', '/usr/lib/xen/bin/pygrub',
                 '/usr/libexec/xen/bin/pygrub'],
        help='Values a PV guest\'s <bootloader> may have; libxl runs it as '
             'root in dom0. <bootloader_args> are always refused.'),
    cfg.BoolOpt(
        'launcher_seccomp', default=True,
        help='The launcher installs a seccomp filter before it execs '
             'QEMU (Debian\'s qemu-system-xen is built without seccomp, so '
             'its -sandbox never applies). It denies what QEMU\'s own '
             '"-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,'
             'resourcecontrol=deny" denies, as far as that is possible from '
             'outside QEMU, and more: fallocate modes that reserve disk '
             'space past the file size limit, the kernel keyrings, and '
             'socket families other than UNIX, IPv4, IPv6 and netlink, '
             'netlink protocols other than NETLINK_ROUTE, and the tun/tap '
             'ioctls QEMU does not need once it holds its taps (persist, '
             'owner, group, MAC address, link type). '
             'Under a QEMU -sandbox the two filters stack. A QEMU that '
             'cannot get it is not started.'),
    cfg.StrOpt(
        'network_namespace', default=NETNS_REQUIRED,
        choices=[(NETNS_REQUIRED, 'Every restricted device model runs in '
                  'a network namespace of its own. Its emulated NICs get '
                  'their tap devices as file descriptors opened by the '
                  'launcher in the host namespace. A VNC display is '
                  'served on a unix socket inside the device model\'s '
                  'chroot and relayed from the address and port libvirt '
                  'reports by a relay in dom0 (console_relay_user).'),
                 (NETNS_EXCEPT_VNC, 'Weaker: as "required", except that a '
                  'device model with a VNC display keeps the host\'s '
                  'network namespace (and can connect wherever dom0 can). '
                  'Only for hosts that cannot run the relay.'),
                 (NETNS_OFF, 'Device models keep the host\'s network '
                  'namespace.')],
        help='Whether device models are cut off from dom0\'s network. '
             'Xen\'s design names connections on the management network '
             'as something a compromised device model can still make. '
             'Whatever the choice, the launcher creates the emulated NICs\' '
             'tap devices itself and never attaches to an existing one.'),
    cfg.StrOpt(
        'console_relay_user', default='xen-dm-console',
        help='The user (name or uid) the VNC console relay runs as under '
             'network_namespace = required: libvirtd\'s hook binds the '
             'address and port libvirt reports for the console and hands '
             'the listening socket to systemd-socket-proxyd, run as this '
             'user, forwarding to the unix socket the device model '
             'listens on inside its chroot. A dedicated system user, never '
             'root, the reaper or a device-model uid.'),
    cfg.ListOpt(
        'vnc_fixed_ports', default=[],
        help='TCP ports (PORT or FIRST-LAST, e.g. 5900-5999) a domain\'s '
             '<graphics type="vnc"> may name as a fixed port (autoport="no", '
             'or a port other than -1 without autoport). None by default: '
             'libvirt then picks a free port (autoport="yes", what Nova '
             'and virt-install write). A fixed port is taken as given '
             '(libvirt\'s libxlMakeVfb does not check it), so a tenant '
             'could name a port a dom0 service or another domain needs; '
             'when the domain starts, a port anything else already holds '
             'is refused either way.'),
    cfg.StrOpt(
        'cgroup_limits', default=CGROUPS_REQUIRED,
        choices=[(CGROUPS_REQUIRED, 'Every restricted device model runs in '
                  'a cgroup of its own (v2, else v1) with the process, '
                  'memory and CPU limits below; the launcher refuses to '
                  'start one without.'),
                 (CGROUPS_OFF, 'No cgroup; RLIMIT_NPROC still applies.')],
        help='Whether each device model gets its own cgroup.'),
    cfg.StrOpt(
        'cgroup_parent', default='xen-dm-restrict',
        help='The cgroup, relative to the root of each hierarchy, under '
             'which the launcher creates dm-UID for the device model of '
             'UID. The reaper removes dm-UID once the uid has no process.'),
    cfg.IntOpt(
        'device_model_max_processes', default=128, min=16,
        help='Processes and threads one device model may have: its '
             'RLIMIT_NPROC (exact, as every domain has its own uid) and '
             'its cgroup\'s pids.max. QEMU runs up to 64 block I/O worker '
             'threads besides its own (measured on Xen 4.17: 5 threads, '
             'at most 7 tasks, for an idle guest).'),
    cfg.IntOpt(
        'device_model_memory_mib', default=512, min=64,
        help='Memory limit of a device model\'s cgroup, in MiB. Under Xen '
             'the guest\'s RAM is not QEMU\'s: this bounds QEMU\'s own '
             'allocations (measured on Xen 4.17: 28 MiB peak in the '
             'cgroup for a 256 MiB Linux guest).'),
    cfg.IntOpt(
        'device_model_cpu_weight', default=100, min=1, max=10000,
        help='CPU weight of a device model\'s cgroup (cgroup v2 '
             'cpu.weight; on v1 cpu.shares = weight * 1024 / 100).'),
    cfg.IntOpt(
        'max_vcpus', default=32, min=1,
        help='Most vCPUs a tenant domain may have (<vcpu>).'),
    cfg.IntOpt(
        'max_memory_mib', default=131072, min=16,
        help='Most memory, in MiB, a tenant domain may have (<memory>, '
             '<currentMemory>, <maxMemory>): libxl takes it from the host, '
             'ballooning dom0 down when it has to.'),
    cfg.IntOpt(
        'max_video_ram_mib', default=64, min=4,
        help='Most video RAM, in MiB, of a tenant domain\'s <video><model '
             'vram>: libxl adds it to the domain\'s memory.'),
    cfg.BoolOpt(
        'allow_cputune', default=False,
        help='Let tenant domains carry <cputune> (scheduler weight, vCPU '
             'pinning) and <vcpu cpuset>, which libvirt hands to Xen as '
             'written. Off: a tenant cannot outweigh dom0 or pin its vCPUs '
             'onto dom0\'s CPUs.'),
    cfg.BoolOpt(
        'allow_nested_hvm', default=False,
        help='Let tenant domains turn on nested HVM (<cpu '
             'mode="host-passthrough"> with vmx or svm required), which '
             'libvirt enables whatever libxl.conf says. Xen lists nested '
             'HVM as experimental, not security-supported.'),
    cfg.DictOpt(
        'max_devices', default={
            tag: str(count) for tag, count in
            constants.MAX_DEVICES.items()},
        help='Most devices of each kind (the element name under '
             '<devices>) a tenant domain may have, written KIND:COUNT; '
             'each is set up in dom0 as root before the guest runs. Kinds '
             'not listed may appear max_devices_other times.'),
    cfg.IntOpt(
        'max_devices_other', default=4, min=0,
        help='Most devices of a kind max_devices does not list.'),
    cfg.IntOpt(
        'max_event_channels', default=1023, min=1,
        help='Most event channels a tenant domain may ask for '
             '(<controller type="xenbus" maxEventChannels>; libxl\'s '
             'default is 1023). Each is hypervisor memory.'),
    cfg.IntOpt(
        'max_grant_frames', default=64, min=1,
        help='Most grant-table frames a tenant domain may ask for '
             '(<controller type="xenbus" maxGrantFrames>). Each is '
             'hypervisor memory.'),
    cfg.BoolOpt(
        'launcher_test_mode', default=False,
        help='For tests on machines without Xen only: the launcher also '
             'starts a command line without -xen-domid-restrict (a QEMU '
             'built without Xen support refuses that option), with the TCG '
             'machine "none" and "-qmp stdio". preflight fails while it is '
             'set. Never set it on a Xen host.'),
]


#: The orchestrator's group holding the hooks to run.
HOOKS_GROUP = 'libvirt'
#: The group of the privsep daemon of the orchestrator-side root steps.
PRIVILEGED_GROUP = 'dm_restrict_privileged'

hook_opts = [
    cfg.ListOpt(
        'domain_hooks', default=[],
        help='Domain hooks to run, in this order, on every domain the '
             'orchestrator defines; names of entry points in the '
             '"libvirt.domain_hooks" group, e.g. "dm_restrict". A name '
             'that cannot be loaded stops the service from starting.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the ``[dm_restrict]`` options on ``conf``."""
    conf.register_opts(dm_restrict_opts, group=GROUP)


def list_opts():
    """Options for oslo-config-generator and the Sphinx reference."""
    return [(GROUP, dm_restrict_opts),
            (HOOKS_GROUP, hook_opts),
            (PRIVILEGED_GROUP, _privileged_opts())]


def _privileged_opts() -> list:
    """The privsep daemon's options, or none where oslo.privsep is not
    installed (libvirtd's hook and the launcher do not use it).
    """
    try:
        from oslo_privsep import priv_context
    except ImportError:
        return []
    return list(priv_context.OPTS)


class _Reader(cfg.ConfigParser):
    """oslo.config's own parser of a file, keeping where each name was."""

    def __init__(self, filename: str):
        super().__init__(filename, {})
        self.names: typing.List[typing.Tuple[int, str, typing.Optional[str]]]
        self.names = []

    def new_section(self, section: str) -> None:
        super().new_section(section)
        self.names.append((self.lineno, section, None))

    def _split_key_value(self, line: str):
        # An assignment is reported when the next line shows it has no
        # continuation: its line is the one its key is on.
        self.key_line = self.lineno
        return super()._split_key_value(line)

    def assignment(self, key: str, value: typing.List[str]) -> None:
        super().assignment(key, value)
        self.names.append((self.key_line, self.section, key))


def _option_names(opts) -> typing.FrozenSet[str]:
    names = set()
    for opt in opts:
        names.add(opt.dest)
        names.update(d.name.replace('-', '_') for d in opt.deprecated_opts
                     if d.name)
    return frozenset(names)


def _nearest(name: str, known: typing.Iterable[str]) -> str:
    near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return near[0] if near else ''


def unknown_names(files: typing.Sequence[str],
                  read_as: typing.Sequence[str] = ()) -> typing.List[str]:
    """Misspelled options and groups of this product in ``files``.

    In the product's groups (``[dm_restrict]``,
    ``[dm_restrict_privileged]``), every name must be an option.  A file
    holding nothing but the product's groups (and ``[DEFAULT]``) is the
    product's own: there an unknown group, and an unknown name in
    ``[libvirt]``, are mistakes too.  In a file shared with another program
    (an orchestrator's own configuration), other groups are left alone,
    except one whose name is close to one of the product's.

    :param files: the file names to report.
    :param read_as: the names to read them by (root reads through the
        descriptor it checked), default ``files``.
    :returns: one line per mistake: file, line, what and the nearest
        known name.
    """
    groups = {GROUP: _option_names(dm_restrict_opts),
              HOOKS_GROUP: _option_names(hook_opts)}
    own_groups = (GROUP, PRIVILEGED_GROUP)
    found = []
    readers = []
    for shown, path in zip(files, list(read_as) or files):
        reader = _Reader(path)
        try:
            reader.parse()
        except OSError as err:
            # Read once already, by whoever parsed the options (a service
            # that has since dropped its privileges cannot read it again).
            LOG.debug('option names of %s not checked: %s', shown, err)
            continue
        readers.append((shown, reader))
    # oslo.privsep costs libvirtd's hook more than its own work: it is
    # loaded only for a file that has its group.
    if any(section == PRIVILEGED_GROUP and key is None
           for _, reader in readers for _, section, key in reader.names):
        privileged = _privileged_opts()
        if privileged:
            groups[PRIVILEGED_GROUP] = _option_names(privileged)
    for shown, reader in readers:
        sections = {section for _, section, key in reader.names
                    if key is None}
        own_file = sections <= set(groups) | {'DEFAULT'}
        for lineno, section, key in reader.names:
            where = '%s line %d' % (shown, lineno)
            if key is None:
                if (section in groups or section in own_groups
                        or section == 'DEFAULT'):
                    continue
                near = _nearest(section, own_groups)
                if near or own_file:
                    found.append('%s: [%s] is not a group of '
                                 'xen-dm-restrict%s' % (
                                     where, section, near and
                                     ' (did you mean [%s]?)' % near))
                continue
            if section not in groups or (section == HOOKS_GROUP
                                         and not own_file):
                continue
            name = key.replace('-', '_')
            if name not in groups[section]:
                near = _nearest(name, groups[section])
                found.append('%s: %s is not an option of [%s]%s' % (
                    where, key, section,
                    near and ' (did you mean %s?)' % near))
    return found


#: Set on a ConfigOpts whose files were checked as they were read (root
#: reads a file through a descriptor that is closed afterwards).
_CHECKED = '_xen_dm_restrict_names_checked'


def names_checked(conf: cfg.ConfigOpts) -> None:
    """Record that ``conf``'s files passed :func:`check_names` already."""
    object.__setattr__(conf, _CHECKED, True)


def check_names(files: typing.Sequence[str],
                read_as: typing.Sequence[str] = ()) -> None:
    """Refuse a file with a misspelled option or group of this product.

    :raises ConfigError: naming each file, line and the nearest known
        name.
    """
    found = unknown_names(files, read_as)
    if found:
        raise exception.ConfigError(
            'configuration %s' % ', '.join(files), '; '.join(found),
            'correct the name (the sample configuration '
            'xen-dm-restrict.conf.sample lists every option), or remove '
            'the line')


def load(conf: cfg.ConfigOpts, check_files: bool = True) -> Settings:
    """Validate the ``[dm_restrict]`` options and return :class:`Settings`.

    :param conf: a ConfigOpts with :func:`register_opts` applied and the
        configuration files already parsed.
    :param check_files: also refuse misspelled options and groups in the
        files ``conf`` read (:func:`check_names`).
    :raises ConfigError: naming the option at fault.
    """
    if (check_files and not vars(conf).get(_CHECKED)
            and 'config_file' in conf and conf.config_file):
        check_names(conf.config_file)
        names_checked(conf)
    group = conf[GROUP]
    tenant_ranges = {}
    for tenant, text in group.tenant_uid_ranges.items():
        if not tenant.strip():
            raise exception.ConfigError(
                'tenant_uid_ranges', 'an entry has an empty tenant id',
                'write each entry as TENANT:FIRST-LAST')
        tenant_ranges[tenant.strip()] = ranges.parse(
            text, tenant.strip(), 'tenant_uid_ranges')

    shared = None
    if group.unmapped_tenants == UNMAPPED_SHARED:
        if not group.shared_uid_range:
            raise exception.ConfigError(
                'shared_uid_range', 'unmapped_tenants is "shared" but no '
                'shared range is set', 'set shared_uid_range = FIRST-LAST '
                'or unmapped_tenants = refuse')
        shared = ranges.parse(group.shared_uid_range, None,
                              'shared_uid_range')
    all_ranges = list(tenant_ranges.values()) + ([shared] if shared else [])
    ranges.check_disjoint(all_ranges, 'tenant_uid_ranges')

    gid = group.device_model_gid
    if gid is not None and gid in ranges.FORBIDDEN_UIDS:
        raise exception.ConfigError(
            'device_model_gid', 'gid %d is reserved' % gid,
            'choose a dedicated group id for device models')
    # What the host's accounts say, checked again whenever the settings
    # are read from the snapshot (launcher.settings).
    reaper_uid = settings_mod.host_ids(group.reaper_user, gid, all_ranges)

    if group.stubdom_emulators:
        raise exception.ConfigError(
            'stubdom_emulators', 'libvirt\'s libxl driver never asks libxl '
            'for a stub domain: a domain naming one of %s as <emulator> '
            'would get that program as a dom0 device model, as root and '
            'unrestricted' % ', '.join(group.stubdom_emulators),
            'leave stubdom_emulators empty')
    if not group.chroot_base_dir.startswith('/'):
        raise exception.ConfigError(
            'chroot_base_dir', '%r is not an absolute path'
            % group.chroot_base_dir, 'use an absolute path')

    return settings_mod.Settings(
        tenant_ranges=tenant_ranges, shared_range=shared, gid=gid,
        chroot_base_dir=group.chroot_base_dir, sandbox=group.sandbox,
        syntax=group.device_model_syntax, qemu_binary=group.qemu_binary,
        launcher=group.launcher, lease_db=group.lease_db,
        lease_db_timeout=group.lease_db_timeout,
        reaper_user=group.reaper_user, reaper_uid=reaper_uid,
        enforce=group.enforce, max_xml_bytes=group.max_xml_bytes,
        reaper_lock_file=group.reaper_lock_file,
        reap_device_models=group.reap_device_models,
        stubdom_emulators=frozenset(group.stubdom_emulators),
        allowed_qemu_options=_allowed_options(group.allowed_qemu_options),
        allowed_host_paths=_allowed_paths(group.allowed_host_paths),
        allowed_chardev_types=tuple(group.allowed_chardev_types),
        pv_dom0_qemu=group.pv_dom0_qemu,
        allowed_interface_scripts=frozenset(
            group.allowed_interface_scripts),
        allowed_bootloaders=frozenset(group.allowed_bootloaders),
        allowed_bridges=_names('allowed_bridges', group.allowed_bridges,
                               libxl_argv.IFNAME_RE),
        allowed_ovs_bridges=_names('allowed_ovs_bridges',
                                   group.allowed_ovs_bridges,
                                   nics.OVS_BRIDGE_RE),
        libvirt_network_state_dir=group.libvirt_network_state_dir,
        libvirt_network_config_dir=group.libvirt_network_config_dir,
        allowed_networks=_names('allowed_networks', group.allowed_networks,
                                nics.NETWORK_RE),
        launcher_test_mode=group.launcher_test_mode,
        console_relay_user=group.console_relay_user,
        vnc_fixed_ports=_port_ranges('vnc_fixed_ports',
                                     group.vnc_fixed_ports),
        launcher_seccomp=group.launcher_seccomp,
        network_namespace=group.network_namespace,
        cgroup_limits=group.cgroup_limits,
        cgroup_parent=_cgroup_parent(group.cgroup_parent),
        device_model_max_processes=group.device_model_max_processes,
        device_model_memory_mib=group.device_model_memory_mib,
        device_model_cpu_weight=group.device_model_cpu_weight,
        max_vcpus=group.max_vcpus,
        max_memory_mib=group.max_memory_mib,
        max_video_ram_mib=group.max_video_ram_mib,
        allow_cputune=group.allow_cputune,
        allow_nested_hvm=group.allow_nested_hvm,
        max_devices=_device_limits(group.max_devices),
        max_devices_other=group.max_devices_other,
        max_event_channels=group.max_event_channels,
        max_grant_frames=group.max_grant_frames,
        writable_shared_host_paths=_writable_shared(
            group.writable_shared_host_paths, group.allowed_host_paths),
        storage_daemon=group.storage_daemon,
        storage_dir=_absolute('storage_dir', group.storage_dir),
        storage_daemon_binary=_absolute('storage_daemon_binary',
                                        group.storage_daemon_binary))


def _device_limits(given: typing.Mapping[str, str]
                   ) -> typing.Dict[str, int]:
    limits = dict(constants.MAX_DEVICES)
    for kind, count in given.items():
        count = count.strip()
        if not (kind.strip().isidentifier() and count.isascii()
                and count.isdigit()):
            raise exception.ConfigError(
                'max_devices', '%r is not KIND:COUNT' % (
                    '%s:%s' % (kind, count)),
                'write entries like disk:16,interface:8')
        limits[kind.strip()] = int(count)
    return limits


def _absolute(name: str, path: str) -> str:
    if not path.startswith('/') or os.path.normpath(path) != path:
        raise exception.ConfigError(
            name, '%r is not an absolute path in normal form' % path,
            'use an absolute path')
    return path


def _allowed_paths(paths: typing.Sequence[str]) -> typing.Tuple[str, ...]:
    found = _prefixes(paths)
    pair = pathscope.overlap(found)
    if pair is not None:
        raise exception.ConfigError(
            'allowed_host_paths',
            'the shared entry %r contains the directories the scoped entry '
            '%r stands for, so every instance could read every other '
            'instance\'s (or tenant\'s) files through it' % pair,
            'list only the shared subdirectories (e.g. %s/_base or an ISO '
            'library beside it) instead of %r' % (pair[0], pair[0]))
    return found


def _writable_shared(paths: typing.Sequence[str],
                     allowed: typing.Sequence[str]) -> typing.Tuple[str, ...]:
    found = _prefixes(paths)
    listed = _prefixes(allowed)
    for path in found:
        if hostpaths.PLACEHOLDER_RE.search(path) or path not in listed:
            raise exception.ConfigError(
                'writable_shared_host_paths',
                '%r is not an entry of allowed_host_paths without {tenant} '
                'or {instance}' % path,
                'list only shared entries of allowed_host_paths')
    return found


def _cgroup_parent(name: str) -> str:
    parts = name.strip('/').split('/')
    if not name.strip('/') or any(
            part in ('', '.', '..') or not all(
                char.isascii() and (char.isalnum() or char in '_.-')
                for char in part)
            for part in parts):
        raise exception.ConfigError(
            'cgroup_parent', '%r is not a relative cgroup path of letters, '
            'digits and "_.-"' % name, 'write it like xen-dm-restrict')
    return '/'.join(parts)


def _names(option: str, names: typing.Sequence[str],
           pattern: typing.Pattern[str]) -> typing.FrozenSet[str]:
    found = set()
    for name in names:
        name = name.strip()
        if not name:
            continue
        if not pattern.match(name):
            raise exception.ConfigError(
                option, '%r is not a name libxl and its hotplug scripts '
                'take as written' % name,
                'use letters, digits and "_-" (and "." for Linux bridges '
                'and networks)')
        found.add(name)
    return frozenset(found)


def _port_ranges(option: str, items: typing.Sequence[str]
                 ) -> typing.Tuple[typing.Tuple[int, int], ...]:
    found = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        first, _, last = item.partition('-')
        last = last or first
        if not (re.fullmatch('[0-9]{1,5}', first.strip())
                and re.fullmatch('[0-9]{1,5}', last.strip())
                and 1 <= int(first) <= int(last) <= 65535):
            raise exception.ConfigError(
                option, '%r is not a TCP port or range of ports' % item,
                'write PORT or FIRST-LAST, e.g. 5900-5999')
        found.append((int(first), int(last)))
    return tuple(found)


def _allowed_options(names: typing.Sequence[str]) -> typing.FrozenSet[str]:
    found = set()
    for name in names:
        name = name.strip().lstrip('-')
        never = qemu_args.NEVER_ALLOWED.get(name)
        if never is not None:
            raise exception.ConfigError(
                'allowed_qemu_options', '-%s can never be allowed: %s'
                % (name, never), 'remove it from the list')
        if name:
            found.add(name)
    return frozenset(found)


def _prefixes(paths: typing.Sequence[str]) -> typing.Tuple[str, ...]:
    found = []
    for path in paths:
        path = path.strip()
        if not path:
            continue
        if not path.startswith('/') or os.path.normpath(path) != \
                path.rstrip('/') and path != '/':
            raise exception.ConfigError(
                'allowed_host_paths', '%r is not an absolute path in '
                'normal form' % path, 'write it like /srv/xen/images')
        rest = hostpaths.PLACEHOLDER_RE.sub('', path)
        if '{' in rest or '}' in rest:
            raise exception.ConfigError(
                'allowed_host_paths', '%r holds a placeholder other than '
                '{tenant} and {instance}' % path,
                'write it like /var/lib/nova/instances/{instance}')
        found.append(path.rstrip('/') or '/')
    return tuple(found)
