"""xen_dm_restrict_plugin: run every tenant VM's Xen device model restricted.

The package is laid out by where code runs:

``core``
    The policy core: reads a domain and decides; pure, no privilege.
``orchestrator``
    Inside the orchestrator: the ``dm_restrict`` domain hook, the hook
    loader and the libvirt wrapper (the public entry points).
``daemon_hook``
    libvirtd's libxl hook, as root.
``launcher``
    The device-model launcher libxl starts as root in place of QEMU.
``host``
    Host tools: the uid reaper, the QEMU probe, preflight, reconcile.
``leases``
    The uid lease store.
``storage``, ``console``
    The deprivileged storage daemon and the console relay.
``cmd``
    Console scripts.

``exception`` and ``conf`` (the oslo.config options) sit beside them.
"""
