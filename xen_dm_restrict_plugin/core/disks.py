"""Disks as clouds write them, served so that no root process parses them.

How each disk of a restricted guest is served (the storage page of the
documentation says why each is safe):

* a **raw regular file** -- whatever the driver name, ``qemu`` (what Nova
  writes for every file disk on libxl), ``file``, ``phy`` or none -- is
  served by the kernel backend: :func:`render` rewrites ``qemu`` and
  ``file`` to ``phy`` (libvirt's ``libxlMakeDisk`` would otherwise ask
  libxl for a QEMU qdisk backend, which cannot work under
  ``-xen-domid-restrict``).  The format is decided from the file's header
  (:mod:`imageformat`): a file declared raw that carries a qcow2, QED,
  VMDK, VHD, VDI or other header QEMU would probe is refused;
* an **HVM CD-ROM** (an installer ISO, Nova's config drive) is decided as
  libxl decides it: libxl gives every HVM CD-ROM a QEMU backend of its
  own choosing, so no driver, or ``qemu``/``file`` with format raw (the
  explicit spelling of the same), is accepted; the medium is opened
  read-only by the device model at start-up;
* a **block device** is allowed by identity: an LV of an allowed volume
  group (``/dev/VG/LV``), a LUN through an allowed ``/dev/disk/by-*``
  directory, a kernel-mapped RBD image (``/dev/rbd/POOL/IMAGE``), each a
  udev symlink to a device node; never a device dom0 uses
  (:mod:`blockdev`);
* a **qcow2 image** is served by a deprivileged ``qemu-storage-daemon``
  of the instance (:mod:`xen_dm_restrict_plugin.storage`) over NBD to the
  kernel's nbd device, which the guest gets as a ``phy`` block device at
  a stable per-instance path; :func:`render` rewrites the disk to that
  path and records the image in the domain's ``<metadata>``; every file
  of its backing chain must lie under the instance's allowed paths;
* **rbd network disks** are refused: libxl would hand the monitor
  addresses and the cephx key to a QEMU qdisk backend in dom0.  The
  remedy is the kernel's rbd mapping, as a block device.

Every path is checked as the instance's
(:mod:`xen_dm_restrict_plugin.core.pathscope`): a writable disk must lie
under the instance's own or a writable shared prefix.
"""

import dataclasses
import logging
import os
import re
import stat
import typing

from lxml import etree

from xen_dm_restrict_plugin.core import blockdev
from xen_dm_restrict_plugin.core import constants
from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import hostpaths
from xen_dm_restrict_plugin.core import imageformat
from xen_dm_restrict_plugin.core import model as model_mod
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin import exception

LOG = logging.getLogger(__name__)

Refusal = exception.FeatureRefused

STORAGE_NS = 'urn:xen-dm-restrict:storage:1'
STORAGE = '{%s}' % STORAGE_NS
STORAGE_TAG = STORAGE + 'disks'
STORAGE_PREFIX = 'dmstorage'

_VDEV_RE = re.compile(r'^(hd|sd|xvd)[a-z]{1,3}[0-9]{0,3}$')
#: Driver names that make libvirt ask libxl for a QEMU qdisk backend.
_QDISK_DRIVERS = ('qemu', 'file')


def _refusal(subject: str, reason: str, remedy: str) -> Refusal:
    return exception.FeatureRefused(subject, reason, remedy)


def _path_refusal(subject: str, reason: str) -> Refusal:
    return _refusal(
        subject, 'libxl or QEMU opens it as root, and %s' % reason,
        'use a path under [dm_restrict] allowed_host_paths (the '
        'instance\'s own directory for a writable disk), or ask the '
        'operator to allow its directory')


@dataclasses.dataclass(frozen=True)
class DaemonDisk:
    """A qcow2 disk served by the instance's storage daemon."""

    target: str
    image: str
    format: str


def run_path(storage_dir: str, instance: str, name: str) -> str:
    """``STORAGE_DIR/INSTANCE/NAME``, asserted to be a direct child of
    the instance's storage directory.

    Root removes, creates and chowns what lies there, so a name from a
    domain (a target such as ``/etc/pam`` or ``../UUID2/xvda``) must not
    lead anywhere else.

    :raises ValueError: the instance or the name is not one plain path
        component, or the result lies elsewhere.
    """
    top = os.path.normpath(storage_dir)
    own = os.path.normpath(os.path.join(top, instance))
    path = os.path.normpath(os.path.join(own, name))
    for part in (instance, name):
        if not part or '/' in part or '\0' in part or part in ('.', '..'):
            raise ValueError('%r is not a plain name under the storage '
                             'directory %s' % (part, storage_dir))
    if os.path.dirname(own) != top or os.path.dirname(path) != own:
        raise ValueError('%r lies outside the storage directory %s of '
                         'instance %s' % (path, storage_dir, instance))
    return path


def stable_path(storage_dir: str, instance: str, target: str) -> str:
    """The block device path the domain names for a daemon-served disk;
    the daemon hook points it at the nbd device at ``prepare``.

    :raises ValueError: ``target`` is not a disk target name (the policy
        refuses such a domain first).
    """
    if not _VDEV_RE.match(target or ''):
        raise ValueError('%r is not a disk target name' % target)
    return run_path(storage_dir, instance, target)


def daemon_disks(dom: domain_mod.Domain) -> typing.List[DaemonDisk]:
    """The daemon-served disks recorded in ``dom``'s ``<metadata>``.

    What a domain says here is checked by :func:`record_problems` before
    anything is served.
    """
    node = dom.metadata(STORAGE_TAG)
    if node is None:
        return []
    return [DaemonDisk(disk.get('target') or '', disk.get('image') or '',
                       disk.get('format') or '')
            for disk in domain_mod.findall(node, STORAGE + 'disk')]


def _record_nodes(dom: domain_mod.Domain) -> typing.List[etree._Element]:
    """Every element of the storage namespace under ``<metadata>``."""
    meta = domain_mod.find(dom.root, 'metadata')
    if meta is None:
        return []
    return [node for node in meta if isinstance(node.tag, str)
            and etree.QName(node).namespace == STORAGE_NS]


def _drop_record(dom: domain_mod.Domain) -> None:
    for node in _record_nodes(dom):
        prev = node.getprevious()
        if prev is not None and node.getnext() is None:
            prev.tail = node.tail
        node.getparent().remove(node)


def _record(disks: typing.Sequence[DaemonDisk]) -> etree._Element:
    node = etree.Element(STORAGE_TAG, nsmap={STORAGE_PREFIX: STORAGE_NS})
    for disk in disks:
        etree.SubElement(node, STORAGE + 'disk', target=disk.target,
                         image=disk.image, format=disk.format)
    return node


def _prefixes(settings, scope: typing.Optional[pathscope.Scope]
              ) -> pathscope.Prefixes:
    return pathscope.prefixes(settings.allowed_host_paths,
                              settings.writable_shared_host_paths, scope)


def path_problem(path: str, settings, scope: typing.Optional[
        pathscope.Scope], expect: hostpaths.Expect, writable: bool,
                 disk: bool = False) -> typing.Optional[str]:
    """Why the instance in ``scope`` may not have root open ``path``
    (for writing when ``writable``), or None.

    Every host path a domain names goes through here, whatever names it
    (disk, CD-ROM, backing file, kernel, loader, character device): the
    path rule (:mod:`hostpaths`), the scope (:mod:`pathscope`: not under
    another instance's or tenant's directory), and, when it reaches a
    block device, the device's identity and use (:mod:`blockdev`).
    """
    return _resolved_problem(path, settings, scope, expect, writable,
                             disk)[0]


#: What a path checked as one of these may be a block device.
_MAY_BE_BLOCK = (hostpaths.Expect.BLOCK, hostpaths.Expect.BLOCK_OR_FILE,
                 hostpaths.Expect.ANY)


def _resolved_problem(path: str, settings,
                      scope: typing.Optional[pathscope.Scope],
                      expect: hostpaths.Expect, writable: bool,
                      disk: bool,
                      prefixes: typing.Optional[pathscope.Prefixes] = None
                      ) -> typing.Tuple[typing.Optional[str],
                                        typing.Optional[str]]:
    """:func:`path_problem`, and the path resolved when it is allowed.

    :param prefixes: ``_prefixes(settings, scope)``, when the caller
        has them.
    """
    if prefixes is None:
        prefixes = _prefixes(settings, scope)
    reason, real = hostpaths.resolved_problem(
        path, prefixes.for_use(writable), expect, disk=disk)
    if reason and writable and hostpaths.problem(
            path, prefixes.read, expect, disk=disk) is None:
        return ('%r lies under a shared directory of [dm_restrict] '
                'allowed_host_paths, which tenants may only read (an entry '
                'without {tenant} or {instance} that is not in '
                'writable_shared_host_paths)' % path), None
    if reason:
        return reason, None
    reason = (pathscope.foreign_problem(path, settings.allowed_host_paths,
                                        scope)
              or pathscope.foreign_problem(real, settings.allowed_host_paths,
                                           scope))
    # A path that passed as a regular file, a socket or a name to create
    # was just found to be no block device.
    if reason is None and expect in _MAY_BE_BLOCK and _is_block(real):
        reason = blockdev.problem(path, real)
    return reason, (real if reason is None else None)


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


class HostView:
    """The host as one check of one domain reads it: each path's verdict
    and each file's format, read once.

    The disks of one ``prepare`` are read by :func:`render` and judged by
    :func:`problems` moments apart; one view, made for that check and
    dropped with it, reads each from the host once for both.  Nothing is
    kept between checks: the next boot reads the host again.

    :param settings: the ``[dm_restrict]`` settings of the check.
    :param scope: the tenant and instance it is for.
    """

    def __init__(self, settings, scope: typing.Optional[pathscope.Scope]):
        self.settings = settings
        self.scope = scope
        self._prefixes = _prefixes(settings, scope)
        self._reasons: typing.Dict[typing.Tuple, typing.Optional[str]] = {}
        #: each allowed path, resolved.
        self._real: typing.Dict[str, str] = {}
        self._formats: typing.Dict[
            str, typing.Union[str, OSError]] = {}

    def of(self, settings, scope: typing.Optional[pathscope.Scope]
           ) -> 'HostView':
        """This view, checked to be one of ``settings`` and ``scope``."""
        if settings is not self.settings or scope != self.scope:
            raise ValueError('a host view serves the check it was made '
                             'for only')
        return self

    def path_problem(self, path: str, expect: hostpaths.Expect,
                     writable: bool, disk: bool = False
                     ) -> typing.Optional[str]:
        """:func:`path_problem` of the view's settings and scope."""
        key = (path, expect, writable, disk)
        if key not in self._reasons:
            reason, real = _resolved_problem(path, self.settings,
                                             self.scope, expect, writable,
                                             disk, self._prefixes)
            self._reasons[key] = reason
            if real is not None:
                self._real[path] = real
        return self._reasons[key]

    def sniff(self, path: str) -> str:
        """:func:`imageformat.sniff`; the error it raised, again.

        Only for a path :meth:`path_problem` allowed: root reads nothing
        the domain names before the path is checked, and reads the file
        the check resolved it to.
        """
        found = self._formats.get(path)
        if found is None:
            real = self._real.get(path)
            try:
                found = (imageformat.sniff(path) if real is None
                         else imageformat.sniff(real, resolved=True))
            except OSError as err:
                found = err
            self._formats[path] = found
        if isinstance(found, OSError):
            raise found
        return found


def _view(settings, scope: typing.Optional[pathscope.Scope],
          view: typing.Optional[HostView]) -> HostView:
    if view is None:
        return HostView(settings, scope)
    return view.of(settings, scope)


def _writable(disk: model_mod.Disk) -> bool:
    return disk.device != 'cdrom' and domain_mod.find(
        disk.node, 'readonly') is None


# -- rendering -------------------------------------------------------------
def render(dom: domain_mod.Domain, settings,
           scope: typing.Optional[pathscope.Scope],
           view: typing.Optional[HostView] = None) -> typing.List[str]:
    """Rewrite the disks of ``dom`` to how they are served restricted.

    Raw regular files with a qdisk driver name get ``phy``; qcow2 files
    become the instance's daemon-served block device (when
    ``[dm_restrict] storage_daemon`` is enabled).  Disks that stay as they
    are are judged by :func:`problems` afterwards; nothing here refuses.

    :param view: the host as the check that follows reads it (its
        :func:`problems` then reads nothing twice).
    :returns: what was changed, for the log.
    """
    view = _view(settings, scope, view)
    # The storage record is this product's, never the tenant's: whatever
    # the domain brings in the storage namespace is dropped and the
    # record is rebuilt from the disks alone.
    brought = _recoverable(dom, settings)
    if not dom.kind.has_dom0_device_model:
        _drop_record(dom)
        return []
    changed = []
    recorded: typing.Dict[str, DaemonDisk] = {}
    # Only the disks are read here: not the whole model of the domain.
    for disk in [model_mod.DomainModel.disk(node)
                 for node in domain_mod.findall(dom.root, 'devices/disk')]:
        if disk.target in brought and disk.source_type == 'block' and \
                disk.path == brought[disk.target][0]:
            # A domain this hook rendered before (orchestrators read the
            # domain back and define it again): its image is checked by
            # problems() as a qcow2 file the domain named would be.
            recorded[disk.target] = brought[disk.target][1]
            continue
        if (disk.source_type != 'file' or disk.device != 'disk'
                or disk.path is None or disk.target is None
                or not _VDEV_RE.match(disk.target)):
            continue
        if disk.driver not in _QDISK_DRIVERS + (None, 'phy', 'tap', 'tap2'):
            continue
        found = None
        # Root reads nothing the domain names before the path is checked.
        if view.path_problem(disk.path, hostpaths.Expect.FILE,
                             _writable(disk), disk=True) is None:
            try:
                found = view.sniff(disk.path)
            except OSError:
                found = None
        if found == imageformat.RAW and disk.format in (None, 'raw') and (
                disk.driver in _QDISK_DRIVERS):
            domain_mod.find(disk.node, 'driver').set('name', 'phy')
            changed.append('%s: raw file served by the kernel backend '
                           '(driver %s -> phy)' % (disk.target, disk.driver))
        elif (found == imageformat.QCOW2 and disk.format == 'qcow2'
              and settings.storage_daemon == constants.STORAGE_DAEMON_ON
              and dom.uuid and disk.target not in recorded):
            recorded[disk.target] = DaemonDisk(disk.target, disk.path,
                                               imageformat.QCOW2)
            _to_block(disk.node, stable_path(settings.storage_dir, dom.uuid,
                                             disk.target))
            changed.append('%s: qcow2 image %s served by the storage daemon'
                           % (disk.target, disk.path))
    dropped = sorted(set(disk.target for disk in daemon_disks(dom))
                     - set(recorded))
    if dropped:
        changed.append('storage record entries %s dropped: they name no '
                       'disk this hook serves' % ', '.join(
                           repr(target) for target in dropped))
    if recorded:
        dom.set_metadata(_record(sorted(recorded.values(),
                                        key=lambda d: d.target)))
    else:
        _drop_record(dom)
    return changed


def _recoverable(dom: domain_mod.Domain, settings
                 ) -> typing.Dict[str, typing.Tuple[str, DaemonDisk]]:
    """Entries of a storage record the domain brings that a rendered
    domain would hold: one per target, a disk target name, at the
    instance's stable path (the caller keeps them only for a ``<disk
    type='block'>`` at that path), keyed by target.
    """
    if dom.uuid is None or len(_record_nodes(dom)) != 1:
        return {}
    entries = daemon_disks(dom)
    targets = [entry.target for entry in entries]
    found = {}
    for entry in entries:
        if targets.count(entry.target) != 1 or \
                entry.format != imageformat.QCOW2:
            continue
        try:
            path = stable_path(settings.storage_dir, dom.uuid, entry.target)
        except ValueError:
            continue
        found[entry.target] = (path, entry)
    return found


def _to_block(node: etree._Element, path: str) -> None:
    node.set('type', 'block')
    driver = domain_mod.find(node, 'driver')
    if driver is None:
        driver = etree.SubElement(node, 'driver')
    for name in list(driver.attrib):
        if name not in ('cache', 'io', 'discard'):
            del driver.attrib[name]
    driver.set('name', 'phy')
    driver.set('type', 'raw')
    source = domain_mod.find(node, 'source')
    for name in list(source.attrib):
        del source.attrib[name]
    source.set('dev', path)


# -- the policy ------------------------------------------------------------
def problems(dm: model_mod.DomainModel, settings,
             scope: typing.Optional[pathscope.Scope],
             view: typing.Optional[HostView] = None) -> typing.List[
                 Refusal]:
    """Every refused disk of ``dm``, with reason and remedy.

    :param view: the host as :func:`render` of the same check read it.
    """
    view = _view(settings, scope, view)
    found: typing.List[Refusal] = []
    hvm = dm.kind.has_dom0_device_model
    qdisk_ok = (not hvm and settings.pv_dom0_qemu
                == constants.PV_DOM0_QEMU_ALLOW)
    found += record_problems(dm, settings)
    served = {disk.target: disk for disk in daemon_disks(dm.dom)}
    for disk in dm.disks:
        subject = disk.describe()
        if disk.source_type == 'network':
            found.append(_network_refusal(disk))
            continue
        if disk.source_type not in ('file', 'block'):
            found.append(_refusal(
                subject, 'only file and block disks are known to be safe; '
                'a %r disk opens what the host names' % disk.source_type,
                'use <disk type="block"> or a raw or qcow2 file'))
            continue
        if disk.device not in ('disk', 'cdrom'):
            found.append(_refusal(
                subject, 'only disk and cdrom devices are known to be '
                'safe', 'use device="disk"'))
            continue
        if disk.target is None or not _VDEV_RE.match(disk.target):
            found.append(_refusal(
                '%s target dev' % subject,
                'libxl derives the emulated disk from the target name; it '
                'must be hdX, sdX or xvdX', 'use e.g. <target dev="hda"/>'))
        if disk.stray_source is not None:
            found.append(_refusal(
                '%s <source %s=...>' % (subject, disk.stray_source),
                'libvirt ignores it for a %s disk, so it does not say what '
                'the guest gets' % disk.source_type,
                'give only the %s attribute' % (
                    'file' if disk.source_type == 'file' else 'dev')))
        if disk.device == 'cdrom' and hvm:
            found += _hvm_cdrom(disk, view)
            continue
        if disk.backend is model_mod.Backend.TAP:
            found.append(_refusal(
                'blktap backend %s' % subject,
                'a tap/tap2 driver asks libxl for blktap, which this '
                'product does not support', 'use <driver name="phy"/>'))
            continue
        if disk.backend is model_mod.Backend.QDISK and not qdisk_ok:
            if (disk.source_type == 'file' and disk.path
                    and disk.format in (None, 'raw')):
                # The path first: root reads nothing before it is checked
                # (render left the disk as it is for either reason).
                reason = view.path_problem(disk.path, hostpaths.Expect.FILE,
                                           _writable(disk), disk=True)
                if reason:
                    found.append(_path_refusal('%s source %s' % (
                        subject, disk.path), reason))
                else:
                    reason = _format_problem(disk.path, None, view)
                    if reason:
                        found.append(_path_refusal('%s source %s' % (
                            subject, disk.path), reason))
                        continue
            found.append(_qdisk_refusal(disk, settings))
            continue
        if disk.path is None:
            found.append(_refusal(
                'empty CD-ROM drive %s' % subject if disk.device == 'cdrom'
                else subject,
                'it has no source' if disk.device != 'cdrom' else
                'media cannot be inserted into a CD-ROM drive of a '
                'restricted device model once the guest runs',
                'give it a source'))
            continue
        if disk.format not in (None, 'raw') and not (
                qdisk_ok and disk.backend is model_mod.Backend.QDISK):
            found.append(_refusal(
                '%s format %r' % (subject, disk.format),
                'the kernel backend serves raw disks only, and a %s image '
                'is served by the storage daemon only through the '
                'dm_restrict hook' % disk.format,
                'define the domain through the dm_restrict hook with '
                '[dm_restrict] storage_daemon = enabled, or convert the '
                'image to raw'))
            continue
        if disk.source_type == 'block':
            target = served.get(disk.target)
            if target is not None and _at_stable_path(disk, settings,
                                                      dm.dom.uuid):
                found += _daemon_disk(subject, target, settings, scope)
                continue
            found += _block(subject, disk, view)
        else:
            found += _file(subject, disk, view)
    return found


def _at_stable_path(disk: model_mod.Disk, settings,
                    uuid: typing.Optional[str]) -> bool:
    try:
        return bool(uuid) and disk.path == stable_path(
            settings.storage_dir, uuid, disk.target or '')
    except ValueError:
        return False


def record_problems(dm: model_mod.DomainModel, settings
                    ) -> typing.List[Refusal]:
    """Every entry of the domain's storage record that does not belong
    to a ``<disk type='block'>`` at the instance's stable path.

    The daemon hook serves every entry as root (creating, chowning and
    removing ``STORAGE_DIR/UUID/TARGET.d``), and a domain defined in
    libvirt directly carries whatever record its author wrote, so each
    entry must name a disk target once, and that disk must be the one
    the daemon's nbd device is given to.
    """
    nodes = _record_nodes(dm.dom)
    if not nodes:
        return []
    subject = 'storage record <metadata><%s:disks>' % STORAGE_PREFIX
    remedy = ('remove it: the dm_restrict hook writes it itself when it '
              'renders a qcow2 disk (define the domain through the hook)')
    if len(nodes) != 1 or nodes[0].tag != STORAGE_TAG:
        return [_refusal(subject, 'the domain holds %d elements of the '
                         'namespace %s; this product writes exactly one '
                         '<disks>' % (len(nodes), STORAGE_NS), remedy)]
    found: typing.List[Refusal] = []
    entries = daemon_disks(dm.dom)
    targets = [entry.target for entry in entries]
    blocks = {}
    for disk in dm.disks:
        if disk.source_type == 'block' and disk.target:
            blocks.setdefault(disk.target, []).append(disk.path)
    for entry in entries:
        what = '%s entry for target %r' % (subject, entry.target)
        if not _VDEV_RE.match(entry.target):
            found.append(_refusal(
                what, 'its target is not a disk target name (hdX, sdX or '
                'xvdX), and root makes a directory named after it',
                remedy))
            continue
        if targets.count(entry.target) != 1:
            found.append(_refusal(what, 'the record names the target more '
                                  'than once', remedy))
            continue
        try:
            path = stable_path(settings.storage_dir, dm.dom.uuid or '',
                               entry.target)
        except ValueError as err:
            found.append(_refusal(what, str(err), remedy))
            continue
        if blocks.get(entry.target) != [path]:
            found.append(_refusal(
                what, 'no <disk type=\'block\'> with that target names '
                'the stable path %s its storage daemon would serve' % path,
                remedy))
    return found


def _network_refusal(disk: model_mod.Disk) -> Refusal:
    source = domain_mod.find(disk.node, 'source')
    protocol = source.get('protocol') if source is not None else None
    if protocol == 'rbd':
        return _refusal(
            'rbd disk %s' % disk.describe(),
            'libxl serves network disks with a QEMU qdisk backend in dom0, '
            'which gets the Ceph monitors and the cephx key on its command '
            'line and cannot work under -xen-domid-restrict',
            'map the image with the kernel\'s rbd driver (rbd map, or '
            'os-brick with Cinder\'s kernel rbd connector) and give it as '
            '<disk type="block"> with <source dev="/dev/rbd/POOL/IMAGE"/> '
            'under an allowed /dev/rbd directory')
    return _refusal(
        'network disk %s (protocol %r)' % (disk.describe(), protocol),
        'libxl serves network disks with a QEMU qdisk backend in dom0, '
        'which cannot work under -xen-domid-restrict',
        'attach the volume to dom0 (iSCSI, rbd map) and give the guest the '
        'block device')


def _qdisk_refusal(disk: model_mod.Disk, settings) -> Refusal:
    if disk.format == 'qcow2':
        why = ('a qcow2 image is served restricted only by the instance\'s '
               'storage daemon, which the dm_restrict hook sets up when it '
               'renders the domain%s' % (
                   '' if settings.storage_daemon
                   == constants.STORAGE_DAEMON_ON else
                   ' ([dm_restrict] storage_daemon is disabled)'))
        remedy = ('define the domain through the dm_restrict hook with '
                  '[dm_restrict] storage_daemon = enabled, or convert the '
                  'image to raw')
    else:
        why = ('libvirt gives this disk a QEMU-served (qdisk) backend, '
               'which does not work with a restricted device model and '
               'runs as root for PV guests; the dm_restrict hook serves a '
               'raw regular file by the kernel backend instead')
        remedy = ('define the domain through the dm_restrict hook, or use '
                  '<driver name="phy"/> or omit the driver element')
    return _refusal('qdisk backend %s (driver %r, format %r)' % (
        disk.describe(), disk.driver, disk.format), why, remedy)


def _format_problem(path: str, declared: typing.Optional[str],
                    view: HostView) -> typing.Optional[str]:
    try:
        found = view.sniff(path)
    except OSError as err:
        return '%r cannot be read: %s' % (path, err.strerror)
    if found != (declared or imageformat.RAW):
        return ('%r is declared %s but its header says %s (a file served as '
                'raw must not carry another format\'s header)'
                % (path, declared or 'raw', found))
    return None


def _hvm_cdrom(disk: model_mod.Disk, view: HostView) -> typing.List[
        Refusal]:
    subject = disk.describe()
    if disk.driver not in (None,) + _QDISK_DRIVERS or disk.format not in (
            None, 'raw'):
        return [_refusal(
            '%s driver %r format %r' % (subject, disk.driver, disk.format),
            'libxl gives every CD-ROM of an HVM guest the backend it '
            'chooses itself, as raw',
            'omit the <driver> element, or write <driver name="qemu" '
            'type="raw"/>')]
    if disk.path is None:
        return [_refusal(
            'empty CD-ROM drive %s' % subject,
            'media cannot be inserted into a CD-ROM drive of a restricted '
            'device model once the guest runs, so an empty drive is '
            'useless', 'give the drive its ISO at boot (<source file=...>) '
            'or remove it')]
    expect = (hostpaths.Expect.BLOCK if disk.source_type == 'block'
              else hostpaths.Expect.FILE)
    reason = view.path_problem(disk.path, expect, False, disk=True)
    if reason is None and disk.source_type == 'file':
        reason = _format_problem(disk.path, None, view)
    if reason:
        return [_path_refusal('%s source %s' % (subject, disk.path),
                              reason)]
    return []


def _file(subject: str, disk: model_mod.Disk,
          view: HostView) -> typing.List[Refusal]:
    reason = view.path_problem(disk.path, hostpaths.Expect.FILE,
                               _writable(disk), disk=True)
    if reason is None:
        reason = _format_problem(disk.path, None, view)
    if reason:
        return [_path_refusal('%s source %s' % (subject, disk.path),
                              reason)]
    return []


def _block(subject: str, disk: model_mod.Disk,
           view: HostView) -> typing.List[Refusal]:
    reason = view.path_problem(disk.path, hostpaths.Expect.BLOCK,
                               _writable(disk), disk=True)
    if reason:
        return [_path_refusal('%s source %s' % (subject, disk.path),
                              reason)]
    return []


def chain_for(image: str, settings,
              scope: typing.Optional[pathscope.Scope]
              ) -> typing.List[imageformat.Layer]:
    """The checked backing chain of a daemon-served image.

    :raises ImageProblem: naming the file that may not be used.
    """
    def allowed(path: str, writable: bool) -> typing.Optional[str]:
        return path_problem(path, settings, scope, hostpaths.Expect.FILE,
                            writable)
    return imageformat.chain(image, allowed)


def _daemon_disk(subject: str, disk: DaemonDisk, settings,
                 scope: typing.Optional[pathscope.Scope]
                 ) -> typing.List[Refusal]:
    if settings.storage_daemon != constants.STORAGE_DAEMON_ON:
        return [_refusal(
            '%s (qcow2 image %s)' % (subject, disk.image),
            'it is served by the storage daemon, and [dm_restrict] '
            'storage_daemon is disabled on this host',
            'enable the storage daemon, or convert the image to raw')]
    if disk.format != imageformat.QCOW2:
        return [_refusal(subject, 'the storage record names format %r; '
                         'only qcow2 is served by the daemon' % disk.format,
                         'render the domain again')]
    try:
        chain_for(disk.image, settings, scope)
    except imageformat.ImageProblem as err:
        return [_refusal(
            '%s qcow2 image %s' % (subject, disk.image),
            'the storage daemon would open every file of its backing '
            'chain, and %s' % err,
            'keep the image and its backing files under the instance\'s '
            'allowed paths (backing files may be shared, read-only), with '
            'plain backing-file names')]
    except OSError as err:
        return [_refusal('%s qcow2 image %s' % (subject, disk.image),
                         'it cannot be read: %s' % err.strerror,
                         'check the image')]
    return []
