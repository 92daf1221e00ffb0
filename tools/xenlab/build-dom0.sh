#!/bin/bash
# Why this exists: the Xen lab (tools/xenlab/lab.py) needs a Xen host, and
# this machine has none. This script builds the root filesystem of a Debian
# 12 dom0 (Xen 4.17, the Xen build of QEMU, libvirt's libxl driver and the
# Python libraries the plugin needs, all from Debian packages) into a
# directory under the checkout's .xenlab/. It does NOT install the plugin:
# lab.py puts the current checkout on a second disk at every run, so this
# image (cached by lab.py, keyed on a hash of this file and packages.txt)
# only changes when the Xen stack does.
#
# Usage (as root, run by lab.py inside "unshare --mount" so that the /proc
# and /sys mounts debootstrap and apt need stay private to this process and
# vanish with it; nothing is mounted on the host):
#   build-dom0.sh ROOTFS_DIR MIRROR_URL PACKAGES_FILE
set -euo pipefail
ROOT=$1
MIRROR=$2
PACKAGES=$(grep -v '^#' "$3" | xargs)
HERE=$(dirname "$(readlink -f "$0")")

if [ ! -e "$ROOT/etc/debian_version" ]; then
    debootstrap --variant=minbase \
        --include=systemd-sysv,udev,kmod,procps,iproute2,ca-certificates \
        bookworm "$ROOT" "$MIRROR"
fi

# The chroot reaches the same mirror as the host (its apt configuration,
# copied into the image, not the host's files changed).
cp -a /etc/apt/apt.conf.d/. "$ROOT/etc/apt/apt.conf.d/"
cp -a /etc/apt/sources.list.d/. "$ROOT/etc/apt/sources.list.d/" 2>/dev/null || true
rm -f "$ROOT"/etc/apt/sources.list.d/*.disabled-by-farm
if [ -f /etc/apt/sources.list ]; then
    cp /etc/apt/sources.list "$ROOT/etc/apt/sources.list"
else
    rm -f "$ROOT/etc/apt/sources.list"
fi

# Private mounts only (this script runs in its own mount namespace). The
# host's /dev is never bound in: a package script could replace the host's
# device nodes through it.
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mountpoint -q "$ROOT/sys" || mount -t sysfs sys "$ROOT/sys"

# No service may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"
chroot "$ROOT" /bin/bash -c "export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q --no-install-recommends $PACKAGES"
rm -f "$ROOT/usr/sbin/policy-rc.d"
chroot "$ROOT" apt-get clean

echo xendom0 > "$ROOT/etc/hostname"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$ROOT/etc/fstab"
chroot "$ROOT" passwd -d root >/dev/null

# Nothing logs in on the Xen console: the lab's runner writes its lines to
# /dev/hvc0, and a getty there would vhangup() it under the runner.
chroot "$ROOT" systemctl mask serial-getty@hvc0.service getty@tty1.service >/dev/null
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
         fstrim.timer man-db.timer systemd-timesyncd.service \
         libvirt-guests.service; do
    chroot "$ROOT" systemctl disable "$u" >/dev/null 2>&1 || true
done
chroot "$ROOT" systemctl mask systemd-networkd-wait-online.service \
    networking.service >/dev/null 2>&1 || true
# libvirt's default network needs dnsmasq and iptables; the lab uses a
# plain bridge instead.
rm -f "$ROOT/etc/libvirt/qemu/networks/autostart/default.xml"

# The users libxl needs for xl's own dm_restrict=1 (scenario 5, the
# anchor): xen-qemuuser-range-base is the first of 32768 uids libxl hands
# out per domid (131072 = 2 * 65536, away from the plugin's ranges).
chroot "$ROOT" sh -c 'id xen-qemuuser-shared >/dev/null 2>&1 ||
    useradd --system --no-create-home --shell /usr/sbin/nologin xen-qemuuser-shared'
chroot "$ROOT" sh -c 'id xen-qemuuser-range-base >/dev/null 2>&1 ||
    useradd --system --no-create-home --shell /usr/sbin/nologin -u 131072 xen-qemuuser-range-base'

# LAB-ONLY WORKAROUND (libvirt CPU model): under QEMU's TCG with -cpu max
# the CPU has no VME and Xen hides SYSENTER on AMD, and every model in
# libvirt 9.0's cpu_map needs one of them, so libvirtd says "Cannot find
# suitable CPU model for given data" and its libxl driver does not load.
# Add one model without them. Never needed on real hardware.
CM=$ROOT/usr/share/libvirt/cpu_map
if [ ! -e "$CM/x86_xenlab-tcg64.xml" ]; then
    sed -e "s/name='qemu64'/name='xenlab-tcg64'/" -e "/name='sep'/d" \
        -e "/name='svm'/d" "$CM/x86_qemu64.xml" > "$CM/x86_xenlab-tcg64.xml"
    sed -i "s|    <include filename='x86_qemu64.xml'/>|&\n    <include filename='x86_xenlab-tcg64.xml'/>|" \
        "$CM/index.xml"
fi

# The lab's guest files: a tiny initramfs (static busybox) that prints a
# marker from guest userspace and powers off; kernel and initrd are the
# dom0's. They live in the directory the lab's [dm_restrict]
# allowed_host_paths names.
G=$ROOT/var/lib/xen-dm-restrict-lab
mkdir -p "$G" "$ROOT/tmp/tiny/bin" "$ROOT/tmp/tiny/proc" "$ROOT/tmp/tiny/sys" "$ROOT/tmp/tiny/dev"
cp "$ROOT/bin/busybox" "$ROOT/tmp/tiny/bin/busybox"
# Xen's block frontend (a module in Debian's kernel) and what it needs, so
# a guest with a disk can read it: the storage scenario checks that the
# bytes the guest reads are the image's.
KVER=$(ls "$ROOT/lib/modules" | head -n1)
mkdir -p "$ROOT/tmp/tiny/lib"
for m in $(chroot "$ROOT" modinfo -k "$KVER" -F depends xen-blkfront | tr ',' ' ') xen-blkfront; do
    f=$(chroot "$ROOT" modinfo -k "$KVER" -n "$m")
    case "$f" in
        *.xz) xz -dc "$ROOT$f" > "$ROOT/tmp/tiny/lib/$m.ko" ;;
        *.zst) zstd -qdc "$ROOT$f" > "$ROOT/tmp/tiny/lib/$m.ko" ;;
        *.ko) cp "$ROOT$f" "$ROOT/tmp/tiny/lib/$m.ko" ;;
        *) ;;
    esac
    echo "$m" >> "$ROOT/tmp/tiny/lib/order"
done
cat > "$ROOT/tmp/tiny/init" <<'EOI'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "XENLAB-GUEST-USERSPACE-OK kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
if ls /sys/bus/xen/devices/ 2>/dev/null | grep -q '^vbd-'; then
    for m in $(cat /lib/order); do insmod /lib/$m.ko; done
    i=0
    while [ ! -b /dev/xvda ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
    echo "XENLAB-GUEST-DISK $(dd if=/dev/xvda bs=64 count=1 2>/dev/null | tr -dc 'A-Za-z0-9-')"
    # The disk's read throughput as the guest sees it (the lab's bench).
    t0=$(cut -d' ' -f1 /proc/uptime)
    dd if=/dev/xvda of=/dev/null bs=1M 2>/dev/null
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "XENLAB-GUEST-DISKREAD sectors=$(cat /sys/block/xvda/size) t0=$t0 t1=$t1"
fi
poweroff -f
EOI
chmod +x "$ROOT/tmp/tiny/init"
chroot "$ROOT" sh -c 'cd /tmp/tiny && find . | cpio -o -H newc --quiet | gzip -9' > "$G/tiny.cpio.gz"
rm -rf "$ROOT/tmp/tiny"
cp -L "$ROOT/vmlinuz" "$G/vmlinuz"

# The boot-time entry point: mount the per-run disk (made by lab.py from
# the current checkout) and run what it carries. The image itself knows
# nothing of the plugin or the scenarios.
install -m 0755 "$HERE/dom0-entry.sh" "$ROOT/usr/local/sbin/xenlab-entry"
cat > "$ROOT/etc/systemd/system/xenlab.service" <<'EOS'
[Unit]
Description=Xen lab: run the per-run disk's scenarios
After=xen.service xenstored.service xenconsoled.service libvirtd.service multi-user.target
Wants=libvirtd.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/xenlab-entry
StandardOutput=journal+console
TimeoutStartSec=0
[Install]
WantedBy=multi-user.target
EOS
ln -sf /etc/systemd/system/xenlab.service \
    "$ROOT/etc/systemd/system/multi-user.target.wants/xenlab.service"
