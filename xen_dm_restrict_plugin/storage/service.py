"""What the daemon hook does for a domain's daemon-served disks.

At ``prepare`` (after the domain passed the policy and its uid was
reaped) every qcow2 disk recorded in the domain's ``<metadata>`` gets its
checked chain, a storage daemon as the domain's uid, an nbd device and
the stable path the domain names.  At ``stopped``/``release`` the nbd
devices are disconnected, the daemons stopped and the images given back.
A failure at ``prepare`` undoes what was set up and refuses the start.
"""

import logging
import os
import typing

from xen_dm_restrict_plugin.core import disks
from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import imageformat
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.storage import daemon
from xen_dm_restrict_plugin.storage import nbd

LOG = logging.getLogger(__name__)


def start(settings, dom: domain_mod.Domain, tenant: str, uid: int,
          gid: int) -> typing.List[daemon.Served]:
    """Serve every daemon-served disk of ``dom``.

    :raises OperationRefused: a disk cannot be served (nothing is left).
    """
    served: typing.List[daemon.Served] = []
    wanted = disks.daemon_disks(dom)
    if not wanted or dom.uuid is None:
        return served
    scope = pathscope.Scope(tenant, dom.uuid)
    try:
        for disk in wanted:
            chain = disks.chain_for(disk.image, settings, scope)
            one = daemon.start(settings, dom.uuid, disk.target, uid, gid,
                               chain)
            served.append(one)
            directory = daemon.disk_dir(settings.storage_dir, dom.uuid,
                                        disk.target)
            device = nbd.connect(settings.storage_dir, one.socket,
                                 daemon.EXPORT)
            daemon.set_device(directory, device)
            nbd.link(disks.stable_path(settings.storage_dir, dom.uuid,
                                       disk.target), device)
    except (imageformat.ImageProblem, daemon.StorageError, nbd.NbdError,
            OSError) as err:
        stop(settings, dom.uuid)
        raise exception.OperationRefused(
            'start of domain %s (uuid %s)' % (dom.name, dom.uuid),
            'its qcow2 disks could not be served: %s' % err,
            'check the image and the storage daemon (xen-dm-restrict '
            'preflight)') from None
    return served


def stop(settings, instance: typing.Optional[str]) -> None:
    """Disconnect, stop and give back everything served for
    ``instance``.
    """
    if not instance:
        return
    for directory in daemon.instance_dirs(settings.storage_dir, instance):
        served = daemon.read_state(directory)
        target = os.path.basename(directory)[:-len('.d')]
        nbd.unlink(disks.stable_path(settings.storage_dir, instance, target))
        if served is not None and served.device:
            nbd.disconnect(served.device)
        daemon.stop_disk(settings, directory)
    try:
        os.rmdir(os.path.join(settings.storage_dir, instance))
    except OSError:
        pass


#: A storage daemon whose domain is not running.
ORPHAN_STORAGE = 'orphan-storage'


def orphans(settings, active: typing.Iterable[str]
            ) -> typing.List[daemon.Served]:
    """Storage daemons recorded for instances not among ``active``."""
    active = set(active)
    return [served for served in daemon.running(settings.storage_dir)
            if served.instance not in active]


def reconcile(settings, active: typing.Iterable[str], apply: bool
              ) -> typing.List[dict]:
    """What reconcile reports (and with ``apply`` does) about storage
    daemons left behind by domains that no longer run.
    """
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
