"""The orchestrator side: what runs inside nova-compute and the like.

The stevedore-loaded domain hook, the loader that runs the enabled hooks,
the libvirt wrapper that calls them and refuses what a restricted domain
cannot survive, and the privsep entry points for the few root steps.
This is the only subpackage an orchestrator imports; its modules are
also importable under their historical names (``xen_dm_restrict_plugin.
loader``, ``.virt``, ``.hooks``, ``.operations``, ``.extension``,
``.privileged``).
"""
