"""xen_dm_restrict_plugin: run every tenant VM's Xen device model restricted.

The public entry points are :mod:`xen_dm_restrict_plugin.loader` (for an
orchestrator loading domain hooks), :mod:`xen_dm_restrict_plugin.virt`
(define and start domains through them) and the ``dm_restrict`` hook in
:mod:`xen_dm_restrict_plugin.extension`.
"""
