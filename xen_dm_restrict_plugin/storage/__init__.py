"""Disks served beyond libxl: the deprivileged storage daemon (layer 3).

:mod:`.daemon` runs one ``qemu-storage-daemon`` per qcow2 disk as the
instance's uid; :mod:`.nbd` joins it to the guest through the kernel's
nbd device; :mod:`.service` is what the libvirt daemon hook calls at
``prepare`` and ``stopped``.
"""
