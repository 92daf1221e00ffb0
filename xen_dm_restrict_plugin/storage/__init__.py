"""Disk backends served to restricted guests without a root parser.

Reserved for the deprivileged storage daemon (qcow2 and other image
formats exported to the kernel backend), which runs per instance beside
its device model.
"""
