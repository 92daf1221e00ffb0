"""The device-model launcher: code that runs as root just before QEMU.

libxl starts the launcher, as root, in place of QEMU.  These modules set
up what QEMU cannot do itself (its cgroup, network namespace, taps,
seccomp filter, chroot directory) and exec it.  They import the policy
core for the command-line rules and nothing of the orchestrator side, nor
oslo.config: every import here is paid at every device-model start.
"""
