"""Consoles of restricted guests reached from dom0's network namespace.

The device model serves VNC on a unix socket inside its own root; the
relay (:mod:`~xen_dm_restrict_plugin.console.relay`) listens where libvirt
says the console is and forwards to it.
"""
