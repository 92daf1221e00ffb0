#!/bin/bash
# Why this exists: baked into the lab's cached dom0 image as
# /usr/local/sbin/xenlab-entry and run once at boot (xenlab.service). It
# mounts the per-run disk that tools/xenlab/lab.py builds from the current
# checkout (the plugin's wheel, the scenario runner, the lab's config) and
# runs it, so the cached image never carries product code. Every line goes
# to the Xen console (/dev/hvc0, the host's serial log) and to the run
# disk's out/ directory, which lab.py reads back after QEMU stops.
say() {
    # /dev/hvc0 is reopened for every line: a hangup on the console
    # (vhangup) would otherwise silence a long-held descriptor.
    printf '%s\n' "$*" > /dev/hvc0 2>/dev/null || true
}
say "XENLAB-BOOT dom0 up uptime=$(cut -d' ' -f1 /proc/uptime)"
mkdir -p /mnt/xenlab
if ! mount /dev/xvdb /mnt/xenlab 2>/dev/null && ! mount /dev/vdb /mnt/xenlab; then
    say "XENLAB-ABORT the per-run disk (/dev/vdb) cannot be mounted"
    exit 1
fi
mkdir -p /mnt/xenlab/out
cd /mnt/xenlab
/usr/bin/python3 -u /mnt/xenlab/scenarios.py 2>&1 | while IFS= read -r l; do
    printf '%s\n' "$l" >> /mnt/xenlab/out/runner.log
    say "$l"
done
sync
say "XENLAB-END uptime=$(cut -d' ' -f1 /proc/uptime)"
