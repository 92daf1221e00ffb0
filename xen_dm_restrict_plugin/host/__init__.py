"""Host tools: what an operator and the other parts run as root on dom0.

The uid reaper, the QEMU capability probe, preflight and reconcile (the
lease database against libvirt's domains).
"""
