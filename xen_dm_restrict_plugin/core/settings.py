"""The validated settings every part of the product reads.

:func:`xen_dm_restrict_plugin.conf.load` builds a :class:`Settings` from
the oslo.config options; the launcher builds its look-alike from a
snapshot without oslo.config.  The dataclass lives in the policy core so
that the core, the launcher and the host tools can take settings without
importing the configuration layer.

:func:`host_ids` checks what the settings name of the host's accounts
(the reaper user, the device models' group).  The accounts change
without the configuration file changing, so it runs on every load: the
full one and the one from the snapshot
(:mod:`xen_dm_restrict_plugin.launcher.settings`).
"""

import dataclasses
import grp
import pwd
import typing

from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import ranges
from xen_dm_restrict_plugin import exception


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated ``[dm_restrict]`` settings that the rest of the code uses.
    """

    tenant_ranges: typing.Mapping[str, ranges.UidRange]
    shared_range: typing.Optional[ranges.UidRange]
    gid: typing.Optional[int]
    chroot_base_dir: str
    sandbox: str
    syntax: str
    qemu_binary: str
    launcher: typing.Optional[str]
    lease_db: str
    lease_db_timeout: float
    reaper_user: str
    reaper_uid: typing.Optional[int]
    enforce: bool
    max_xml_bytes: int
    reaper_lock_file: str = '/run/xen-dm-restrict/reaper.lock'
    reap_device_models: bool = True
    stubdom_emulators: typing.FrozenSet[str] = frozenset()
    allowed_qemu_options: typing.FrozenSet[str] = frozenset()
    allowed_host_paths: typing.Tuple[str, ...] = ()
    allowed_chardev_types: typing.Tuple[str, ...] = ('pty',)
    pv_dom0_qemu: str = constants.PV_DOM0_QEMU_REFUSE
    allowed_interface_scripts: typing.FrozenSet[str] = frozenset(
        ('vif-bridge', '/etc/xen/scripts/vif-bridge'))
    allowed_bootloaders: typing.FrozenSet[str] = frozenset((
        'pygrub', '/usr/lib/xen/bin/pygrub', '/usr/libexec/xen/bin/pygrub'))
    allowed_bridges: typing.FrozenSet[str] = frozenset()
    allowed_ovs_bridges: typing.FrozenSet[str] = frozenset()
    allowed_networks: typing.FrozenSet[str] = frozenset()
    #: Where libvirt keeps active networks' definitions, and defined ones.
    libvirt_network_state_dir: str = '/run/libvirt/network'
    libvirt_network_config_dir: str = '/etc/libvirt/qemu/networks'
    console_relay_user: str = 'xen-dm-console'
    #: TCP port ranges (first, last) a fixed VNC port may be in.
    vnc_fixed_ports: typing.Tuple[typing.Tuple[int, int], ...] = ()
    launcher_test_mode: bool = False
    launcher_seccomp: bool = True
    network_namespace: str = constants.NETNS_REQUIRED
    cgroup_limits: str = constants.CGROUPS_REQUIRED
    cgroup_parent: str = 'xen-dm-restrict'
    device_model_max_processes: int = 128
    device_model_memory_mib: int = 512
    device_model_cpu_weight: int = 100
    max_vcpus: int = 32
    max_memory_mib: int = 131072
    max_video_ram_mib: int = 64
    allow_cputune: bool = False
    allow_nested_hvm: bool = False
    max_devices: typing.Mapping[str, int] = dataclasses.field(
        default_factory=lambda: dict(constants.MAX_DEVICES))
    max_devices_other: int = 4
    max_event_channels: int = 1023
    max_grant_frames: int = 64
    writable_shared_host_paths: typing.Tuple[str, ...] = ()
    storage_daemon: str = constants.STORAGE_DAEMON_OFF
    storage_dir: str = '/run/xen-dm-restrict/storage'
    storage_daemon_binary: str = '/usr/bin/qemu-storage-daemon'

    def all_ranges(self) -> typing.List[ranges.UidRange]:
        found = list(self.tenant_ranges.values())
        if self.shared_range is not None:
            found.append(self.shared_range)
        return found

    def range_for(self, tenant: str) -> ranges.UidRange:
        """The range a tenant's device models take uids from.

        :raises Refused: the tenant has no range and may not use the
            shared pool.
        """
        if tenant in self.tenant_ranges:
            return self.tenant_ranges[tenant]
        if self.shared_range is not None:
            return self.shared_range
        raise exception.Refused(
            'tenant %r' % tenant,
            'it has no uid range and unmapped_tenants is "refuse"',
            'add it to [dm_restrict] tenant_uid_ranges, or set '
            'unmapped_tenants = shared with a shared_uid_range')

    def parse_domain(self, data: typing.Union[bytes, str]
                     ) -> domain_mod.Domain:
        """Parse domain XML with this host's size cap and stub domains.

        :raises InvalidDomainXML: see :func:`domain.parse`.
        """
        return domain_mod.parse(data, self.max_xml_bytes,
                                self.stubdom_emulators)

    def chroot_dir(self, uid: int) -> str:
        return constants.chroot_dir(self.chroot_base_dir, uid)

    def gid_for(self, uid: int) -> int:
        return self.gid if self.gid is not None else uid


#: Debian's statically allocated groups (base-passwd): 0-99, and users.
STATIC_GID_LIMIT = 101


def resolve_user(name: str) -> typing.Optional[int]:
    """The uid of a user name (or a number), None when there is none."""
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def host_ids(reaper_user: str, gid: typing.Optional[int],
             uid_ranges: typing.Sequence[ranges.UidRange]
             ) -> typing.Optional[int]:
    """Check the accounts the settings name, as the host has them now.

    :param reaper_user: ``[dm_restrict] reaper_user``.
    :param gid: ``[dm_restrict] device_model_gid``, or None.
    :param uid_ranges: every configured uid range.
    :returns: the reaper's uid, None when the user does not exist.
    :raises ConfigError: the group is not dedicated, or the reaper uid
        is reserved, root, or inside a range.
    """
    if gid is not None:
        check_dedicated_gid(gid)
    reaper_uid = resolve_user(reaper_user)
    if reaper_uid in ranges.FORBIDDEN_UIDS - {0}:
        raise exception.ConfigError(
            'reaper_user', 'uid %d is reserved (nobody or invalid); every '
            'reap would kill its processes too' % reaper_uid,
            'create a dedicated user, e.g. useradd --system xen-dm-reaper')
    if reaper_uid == 0:
        raise exception.ConfigError(
            'reaper_user', 'the reaper must not be root: kill(-1) as root '
            'kills every process on the host', 'create a dedicated user, '
            'e.g. useradd --system xen-dm-reaper')
    for rng in uid_ranges:
        if reaper_uid is not None and reaper_uid in rng:
            raise exception.ConfigError(
                'reaper_user', 'reaper uid %d is inside range %s of %s, so '
                'a device model could kill the reaper' % (
                    reaper_uid, rng, rng.owner or 'the shared pool'),
                'use a reaper uid outside every range')
    return reaper_uid


def check_dedicated_gid(gid: int) -> None:
    """Refuse a gid that grants something: a static system group (shadow,
    disk, kmem, ...), a group with members, or a user's primary group.
    """
    remedy = ('create a dedicated group (groupadd --system xen-dm) and use '
              'its gid, or unset device_model_gid')
    if gid < STATIC_GID_LIMIT:
        raise exception.ConfigError(
            'device_model_gid', 'gid %d is a statically allocated system '
            'group (e.g. shadow, disk, kmem) whose files every device '
            'model could read' % gid, remedy)
    try:
        entry = grp.getgrgid(gid)
    except KeyError:
        return
    owners = sorted(set(entry.gr_mem) | {
        user.pw_name for user in pwd.getpwall() if user.pw_gid == gid})
    if owners:
        raise exception.ConfigError(
            'device_model_gid', 'group %s (gid %d) is not dedicated: %s '
            'belong to it' % (entry.gr_name, gid, ', '.join(owners)), remedy)
