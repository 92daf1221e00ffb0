"""What ``xen-dm-restrict-launch --help`` and ``-help`` print, in a
module of its own: the Python launcher prints it, and ``install-launcher``
compiles the same text into the front (``front.c``'s XDR_HELP), so the
two never differ.

``-help`` is libvirt's probe of the emulator: its libxl driver runs
``<emulator> -help`` twice at every start (``libxlMakeBuildInfo`` and
``libxlMakeVideo``, through ``libxlDomainGetEmulatorType``) only to look
for qemu-xen-traditional's mark.  The launcher starts qemu-xen alone
(dm_restrict needs it; the policy refuses the traditional model), so it
answers for itself rather than start QEMU as root twice per start.
"""

from xen_dm_restrict_plugin.launcher import settings as launch_settings

#: What ``xen-dm-restrict-launch --help`` and ``-help`` print; it never
#: holds LIBVIRT_TRADITIONAL_MARK, so libvirt builds qemu-xen's command
#: line.
HELP = """\
usage: xen-dm-restrict-launch QEMU-ARGUMENT...

The device-model wrapper of xen-dm-restrict. libxl starts it, as root,
in place of QEMU for every restricted domain: set [dm_restrict] launcher
to its path and the dm_restrict hook writes it as the domain's
<emulator>. It checks that the arguments are ones libxl writes for an
allowed domain and restrict QEMU to a uid of a configured range
(-runas UID:GID or -run-with user=UID:GID) and to that uid's chroot
directory. It then creates the directory (empty, root-owned, mode
0000), puts itself in the uid's cgroup (pids, memory and CPU limits),
opens the emulated NICs' tap devices and hands them to QEMU as file
descriptors, unshares the mount, IPC and network namespaces, sets
RLIMIT_NPROC, RLIMIT_FSIZE to 256 KiB and RLIMIT_CORE, RLIMIT_MSGQUEUE,
RLIMIT_LOCKS and RLIMIT_MEMLOCK to 0, installs a seccomp filter (under
QEMU's own -sandbox too), and execs [dm_restrict] qemu_binary. A command
line without the restriction is refused (exit 2); one that only asks
QEMU for its version or options (-version, -h) is passed straight to
QEMU. It starts qemu-xen (upstream QEMU) only, never
qemu-xen-traditional.

It has no options of its own: this text is shown for the single
argument --help, and for -help, which libvirt's libxl driver runs at
every start to tell qemu-xen from qemu-xen-traditional; QEMU is not
started for it. Configuration: $%(env)s, else
%(conf)s; it reads a snapshot of it from
%(snapshot)s while that is current. Exit codes:
QEMU's own once exec'd; before that, 2 refused and 1 error, with the
message on stderr.

examples:
  # what libvirt runs to tell qemu-xen from qemu-xen-traditional:
  xen-dm-restrict-launch -help
  # QEMU's own option list, from the configured qemu_binary:
  xen-dm-restrict-launch -h
  # a restricted start, as libxl would run it (as root):
  xen-dm-restrict-launch -xen-domid 7 -xen-domid-restrict \\
      -runas 200000:200000 \\
      -chroot /var/run/xen/dm-restrict/qemu-root-200000 ...
""" % {'env': launch_settings.CONFIG_ENV,
       'conf': launch_settings.DEFAULT_CONFIG,
       'snapshot': launch_settings.DEFAULT_PATH}

#: The arguments answered with HELP (exactly one of them, alone).
HELP_ARGS = ('--help', '-help')
#: What libvirt looks for in ``<emulator> -help`` to pick
#: qemu-xen-traditional (src/libxl/libxl_capabilities.c).
LIBVIRT_TRADITIONAL_MARK = 'Options specific to the Xen version:'
