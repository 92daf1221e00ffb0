"""What the daemon hook does for a domain's daemon-served disks.

At ``prepare`` (after the domain passed the policy and its uid was
reaped) every qcow2 disk recorded in the domain's ``<metadata>`` gets its
checked chain, a storage daemon as the domain's uid, an nbd device and
the stable path the domain names.  The record is checked again here
(:func:`xen_dm_restrict_plugin.core.disks.record_problems`): root acts
on ``STORAGE_DIR/UUID/TARGET.d`` for every entry.  At
``stopped``/``release`` the nbd devices are disconnected, the daemons
stopped and the images given back.  A failure at ``prepare`` (or any
error) stops every daemon the start began and refuses the start.

libvirtd's hook imports this module at every domain start, and most
domains have no daemon-served disk: the daemon and nbd modules (ctypes,
json, the seccomp filter) are imported only when there is one.
"""

from __future__ import annotations

import logging
import os
import typing

from xen_dm_restrict_plugin.core import disks
from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import imageformat
from xen_dm_restrict_plugin.core import model as model_mod
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin import exception

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from xen_dm_restrict_plugin.storage import daemon

LOG = logging.getLogger(__name__)


def start(settings, dom: domain_mod.Domain, tenant: str, uid: int,
          gid: int) -> typing.List[daemon.Served]:
    """Serve every daemon-served disk of ``dom``.

    Every entry of the storage record is checked first (a target that is
    a disk target name, once, at its stable path; the checked chain), so
    that a refusal starts nothing; a failure later stops every daemon
    this call started, whatever the error.

    :raises OperationRefused: a disk cannot be served (nothing is left).
    """
    served: typing.List[daemon.Served] = []
    wanted = disks.daemon_disks(dom)
    if not wanted:
        return served
    from xen_dm_restrict_plugin.storage import daemon
    from xen_dm_restrict_plugin.storage import nbd

    subject = 'start of domain %s (uuid %s)' % (dom.name, dom.uuid)
    if dom.uuid is None:
        raise _refused(subject, 'it has a storage record but no uuid')
    wrong = disks.record_problems(model_mod.DomainModel(dom), settings)
    if wrong:
        for problem in wrong:
            LOG.warning('instance %s of tenant %s: %s', dom.uuid, tenant,
                        problem)
        raise _refused(subject, str(wrong[0]))
    scope = pathscope.Scope(tenant, dom.uuid)
    try:
        chains = [(disk, disks.chain_for(disk.image, settings, scope))
                  for disk in wanted]
        for disk, chain in chains:
            served.append(daemon.start(settings, dom.uuid, disk.target, uid,
                                       gid, chain))
        for one in served:
            directory = daemon.disk_dir(settings.storage_dir, dom.uuid,
                                        one.target)
            device = nbd.connect(settings.storage_dir, one.socket,
                                 daemon.EXPORT)
            daemon.set_device(directory, device)
            nbd.link(disks.stable_path(settings.storage_dir, dom.uuid,
                                       one.target), device)
    except (imageformat.ImageProblem, daemon.StorageError, nbd.NbdError,
            OSError, ValueError) as err:
        _undo(settings, dom.uuid, served)
        raise _refused(subject, str(err)) from None
    except BaseException:
        LOG.exception('instance %s of tenant %s: serving its qcow2 disks '
                      'failed unexpectedly; stopping what was started',
                      dom.uuid, tenant)
        _undo(settings, dom.uuid, served)
        raise
    return served


def _refused(subject: str, why: str) -> exception.OperationRefused:
    return exception.OperationRefused(
        subject, 'its qcow2 disks could not be served: %s' % why,
        'check the image and the storage daemon (xen-dm-restrict '
        'preflight)')


def _undo(settings, instance: str,
          served: typing.Sequence[daemon.Served]) -> None:
    """Stop the daemons in ``served`` where they are recorded, then
    whatever else is left under the instance's storage directory.
    """
    from xen_dm_restrict_plugin.storage import daemon

    for one in served:
        try:
            directory = daemon.disk_dir(settings.storage_dir, one.instance,
                                        one.target)
        except ValueError:
            continue
        _stop_one(settings, instance, directory, one.target)
    stop(settings, instance)


def _stop_one(settings, instance: str, directory: str, target: str) -> None:
    from xen_dm_restrict_plugin.storage import daemon
    from xen_dm_restrict_plugin.storage import nbd

    served = daemon.read_state(directory)
    try:
        nbd.unlink(disks.stable_path(settings.storage_dir, instance, target))
    except ValueError:
        pass
    if served is not None and served.device:
        nbd.disconnect(served.device)
    daemon.stop_disk(settings, directory)


def stop(settings, instance: typing.Optional[str]) -> None:
    """Disconnect, stop and give back everything served for
    ``instance``.
    """
    if not instance:
        return
    try:
        disks.run_path(settings.storage_dir, instance, 'x')
    except ValueError as err:
        LOG.warning('no storage to stop for %r: %s', instance, err)
        return
    if not os.path.isdir(os.path.join(settings.storage_dir, instance)):
        return  # nothing was served
    from xen_dm_restrict_plugin.storage import daemon

    for directory in daemon.instance_dirs(settings.storage_dir, instance):
        _stop_one(settings, instance, directory,
                  os.path.basename(directory)[:-len('.d')])
    try:
        os.rmdir(os.path.join(settings.storage_dir, instance))
    except OSError:
        pass


#: A storage daemon whose domain is not running.
ORPHAN_STORAGE = 'orphan-storage'


def orphans(settings, active: typing.Iterable[str]
            ) -> typing.List[daemon.Served]:
    """Storage daemons recorded for instances not among ``active``."""
    from xen_dm_restrict_plugin.storage import daemon

    active = set(active)
    return [served for served in daemon.running(settings.storage_dir)
            if served.instance not in active]


def reconcile(settings, active: typing.Iterable[str], apply: bool
              ) -> typing.List[dict]:
    """What reconcile reports (and with ``apply`` does) about storage
    daemons left behind by domains that no longer run.
    """
    from xen_dm_restrict_plugin.storage import daemon

    found = []
    done = set()
    for served in orphans(settings, active):
        alive = daemon.alive(served)
        if apply and served.instance not in done:
            stop(settings, served.instance)
            done.add(served.instance)
        found.append(dict(
            kind=ORPHAN_STORAGE, uuid=served.instance, uid=served.uid,
            tenant=None,
            detail='%s of %s (pid %d %s, nbd %s)' % (
                served.target, served.image, served.pid,
                'running' if alive else 'gone', served.device or 'none'),
            action='stopped, image given back' if apply else
            'would stop it and give the image back',
            resolved=apply))
    return found
