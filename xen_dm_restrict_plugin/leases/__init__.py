"""Durable uid leases: which instance holds which device-model uid.

:mod:`~xen_dm_restrict_plugin.leases.store` is the SQLite store.  Its
public names are also reachable here, as they were before the store moved
into this package (``xen_dm_restrict_plugin.leases.LeaseStore``).
"""

from xen_dm_restrict_plugin.leases import store as _store

Lease = _store.Lease
LeaseStore = _store.LeaseStore
start_blocker = _store.start_blocker
uid_and_gid_are_free = _store.uid_and_gid_are_free
uid_has_no_account = _store.uid_has_no_account
