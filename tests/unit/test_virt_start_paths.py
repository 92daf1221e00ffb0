"""Every libvirt call that starts, restores or re-creates a domain goes
through the wrapper's checks.

libvirt-python's ``virDomain`` and ``virConnect`` are enumerated by name;
a new start-like method (a libvirt upgrade) fails this test until it is
wrapped in orchestrator/virt.py or listed there, with a reason, as not a
start.
"""

import re

import libvirt

from xen_dm_restrict_plugin.orchestrator import virt

START_LIKE = re.compile(r'^(create|restore|managedSave|revert)|[Ss]tart|'
                        r'[Rr]estore')


def _start_like(cls):
    return sorted(name for name in dir(cls)
                  if not name.startswith('_') and START_LIKE.search(name))


def test_every_domain_start_path_is_wrapped_or_refused():
    missing = []
    for name in _start_like(libvirt.virDomain):
        if name in vars(virt.HookedDomain) or name in virt.NOT_STARTS:
            continue
        if name.startswith(virt._GUARDED_PREFIXES):
            continue        # refused on restricted domains by __getattr__
        missing.append(name)
    assert missing == [], 'virDomain start paths not wrapped: %s' % missing


def test_every_connection_start_path_is_wrapped():
    missing = [name for name in _start_like(libvirt.virConnect)
               if name not in vars(virt.HookedConnection)]
    assert missing == [], 'virConnect start paths not wrapped: %s' % missing


def test_the_known_start_paths_are_found():
    assert {'create', 'createWithFlags', 'createWithFiles',
            'revertToSnapshot', 'managedSave'} <= set(
        _start_like(libvirt.virDomain))
    assert {'createXML', 'createXMLWithFiles', 'createLinux', 'restore',
            'restoreFlags', 'restoreParams'} <= set(
        _start_like(libvirt.virConnect))


def test_start_wrappers_are_the_checked_ones():
    for name in ('create', 'createWithFlags', 'createWithFiles'):
        assert name in vars(virt.HookedDomain)
    assert virt.HookedDomain.createWithFlags is virt.HookedDomain.create
