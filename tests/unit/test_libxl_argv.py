"""The launcher accepts what libxl writes for an allowed domain, only that.

The command lines below are what libxl (Xen 4.17.7, Debian) built for
libvirt HVM guests in the project's Xen lab (``tools/xenlab``,
``.xenlab/observed-argv.txt``), with the lab's image directory replaced
by this run's and the restriction the hook writes put where libxl puts
``<xen:commandline>``: after its own options, before ``-machine``.
"""

import os

import pytest

from tests import base
from xen_dm_restrict_plugin.core import libxl_argv

HEAD = ('-xen-domid 5 -no-shutdown -chardev socket,id=libxl-cmd,'
        'path=/var/run/xen/qmp-libxl-5,server=on,wait=off -mon '
        'chardev=libxl-cmd,mode=control -chardev socket,id=libxenstat-cmd,'
        'path=/var/run/xen/qmp-libxenstat-5,server=on,wait=off -mon '
        'chardev=libxenstat-cmd,mode=control -nodefaults -no-user-config '
        '-name argv-full').split()
DISKLESS = ('-vnc none -display none -serial pty -nographic -boot order=c '
            '-net none').split()
FULL = ('-vnc 127.0.0.1:0 -display none -serial pty -device '
        'cirrus-vga,vgamem_mb=8 -boot order=c -device rtl8139,id=nic0,'
        'netdev=net0,mac=00:16:3e:00:00:4d -netdev type=tap,id=net0,'
        'ifname=vif5.0-emu,br=xenbr0,script=no,downscript=no').split()
RESTRICTION = ['-xen-domid-restrict', '-runas', '200000:200000', '-chroot',
               '/var/run/xen/dm-restrict/qemu-root-200000']
TAIL = ['-machine', 'xenfv,suppress-vmdesc=on', '-m', '56']


def _disks():
    images = base.images_dir()
    return ['-drive', 'file=%s/root-disk.img,if=ide,index=0,media=disk,'
            'format=raw,cache=writeback' % images,
            '-drive', 'if=none,readonly=on,id=ide-5632,file=%s/'
            'installer.iso,format=raw' % images,
            '-device', 'ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0']


@pytest.fixture
def checker(tmp_path):
    return libxl_argv.Checker(base.make_settings(tmp_path))


@pytest.mark.parametrize('middle', [DISKLESS, FULL])
def test_what_libxl_wrote_in_the_lab_passes(checker, middle):
    args = HEAD + middle + RESTRICTION + TAIL + _disks()
    assert checker.problems(args) == []


@pytest.mark.parametrize('change, words', [
    (lambda a: a + ['-incoming', 'exec:id'], '-incoming'),
    (lambda a: a + ['/etc/shadow'], 'bare argument'),
    (lambda a: a + ['-drive', 'file=/etc/shadow,if=ide,format=raw'],
     'allowed_host_paths'),
    (lambda a: a + ['-drive', 'file=%s/root-disk.img,format=qcow2'
                    % base.images_dir()], 'qdisk'),
    # Without format= QEMU probes the image as root: a qcow2 header in
    # it could name a data file or backing file anywhere.
    (lambda a: a + ['-drive', 'file=%s/root-disk.img,if=ide,index=1,'
                    'media=disk' % base.images_dir()], 'no format=raw'),
    (lambda a: a + ['-drive', 'file=%s/root-disk.img,driver=quorum'
                    % base.images_dir()], 'keys libxl does not write'),
    (lambda a: [x.replace('/var/run/xen/qmp-libxl-5', '/etc/qmp')
                for x in a], 'not a character device libxl writes'),
    (lambda a: [x.replace('script=no', 'script=/tmp/x') for x in a],
     'shape libxl writes'),
    (lambda a: [x.replace('127.0.0.1:0', 'unix:/etc/vnc') for x in a],
     'shape libxl writes'),
    (lambda a: [x.replace('rtl8139,id', 'vfio-pci,id') for x in a],
     'a device libxl writes'),
    (lambda a: [x.replace('pty', 'file:/etc/x') for x in a],
     'allowed_chardev_types'),
    (lambda a: a + ['-name'], 'none follows'),
    (lambda a: a + ['-xen-domid', '7'], 'libxl writes -xen-domid once'),
    (lambda a: a + ['-machine', 'xenfv'], 'libxl writes -machine once'),
    (lambda a: a + ['-drive', 'file=%s/root-disk.img,if=pflash'
                    % base.images_dir()], 'if=pflash'),
])
def test_anything_else_is_refused(checker, change, words):
    args = change(HEAD + FULL + RESTRICTION + TAIL + _disks())
    problems = checker.problems(args)
    assert problems and any(words in problem for problem in problems), \
        problems


def test_allowed_extra_options_pass_with_safe_values_only(tmp_path):
    checker = libxl_argv.Checker(base.make_settings(
        tmp_path, allowed_qemu_options=['rtc']))
    base_args = HEAD + DISKLESS + RESTRICTION
    assert checker.problems(base_args + ['-rtc', 'base=utc'] + TAIL) == []
    assert checker.problems(base_args + ['-rtc', 'base=/etc'] + TAIL)


def test_a_block_device_disk(tmp_path):
    if not os.path.exists('/dev/loop0'):
        pytest.skip('no /dev/loop0 on this machine')
    checker = libxl_argv.Checker(base.make_settings(
        tmp_path, allowed_host_paths=['/dev/loop0']))
    args = HEAD + DISKLESS + RESTRICTION + TAIL + [
        '-drive', 'file=/dev/loop0,if=ide,index=0,media=disk,format=raw,'
        'cache=writeback']
    assert checker.problems(args) == []


@pytest.mark.parametrize('tap, words', [
    # libxl names the tap vifDOMID.DEVID-emu whatever <target dev> says
    # (libxl__device_nic_devname); anything else is not libxl's.
    ('eth0', 'not of the shape libxl writes'),
    ('tap1a2b3c4d-5e', 'not of the shape libxl writes'),
    ('vif6.0-emu', 'named for domain 6'),
    ('vif5.1-emu', 'vifDOMID.0-emu'),
])
def test_taps_are_this_domains_as_libxl_names_them(checker, tap, words):
    middle = [arg.replace('vif5.0-emu', tap) for arg in FULL]
    problems = checker.problems(HEAD + middle + RESTRICTION + TAIL)
    assert any(words in problem for problem in problems), problems
