"""Consoles of restricted guests reached from dom0's network namespace.

Reserved for the console relay (VNC on a unix socket inside the device
model's root, relayed to the address libvirt reports).
"""
