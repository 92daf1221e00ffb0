"""Option values and names shared by the configuration and the launcher.

``conf`` (oslo.config, on the orchestrator and hook side) and the launcher
(which must not load oslo.config) both test the same option values and
build the same chroot path.  They are defined once here, with nothing but
literals, so importing them costs the launcher nothing.
"""

SYNTAX_PROBE = 'probe'
SYNTAX_RUNAS = 'runas'
SYNTAX_RUN_WITH = 'run-with'

SANDBOX_REQUIRED = 'required'
SANDBOX_WHEN_SUPPORTED = 'when-supported'
SANDBOX_OFF = 'off'

UNMAPPED_REFUSE = 'refuse'
UNMAPPED_SHARED = 'shared'

PV_DOM0_QEMU_REFUSE = 'refuse'
PV_DOM0_QEMU_ALLOW = 'allow'

NETNS_REQUIRED = 'required'
NETNS_EXCEPT_VNC = 'except-vnc'
NETNS_OFF = 'off'

CGROUPS_REQUIRED = 'required'
CGROUPS_OFF = 'off'

#: Devices a tenant domain may have of each kind (``[dm_restrict]
#: max_devices``): each is set up in dom0 as root before the guest runs.
MAX_DEVICES = {
    'disk': 16, 'interface': 8, 'serial': 4, 'console': 4, 'channel': 4,
    'parallel': 1, 'input': 4, 'video': 1, 'graphics': 2, 'sound': 1,
    'controller': 8, 'memballoon': 1, 'rng': 1, 'watchdog': 1,
}

STORAGE_DAEMON_ON = 'enabled'
STORAGE_DAEMON_OFF = 'disabled'

#: The seccomp policy libxl's design asks for; spawning, privilege and
#: resource-control syscalls denied, obsolete ones too.  The only
#: ``-sandbox`` value the launcher lets through.
SANDBOX_POLICY = ('on,obsolete=deny,elevateprivileges=allow,spawn=deny,'
                  'resourcecontrol=deny')

#: Arguments that only ask QEMU about itself; QEMU exits after answering.
QUERY_ARGS = frozenset(('-help', '--help', '-h', '-version', '--version'))

#: The configuration file every console script reads by default.
DEFAULT_CONFIG = '/etc/xen-dm-restrict/xen-dm-restrict.conf'
#: Environment variable naming the configuration file to use instead.
CONFIG_ENV = 'XEN_DM_RESTRICT_CONFIG'
#: Where xen-dm-restrict-hook-service listens and libvirtd's compiled
#: hook asks.
HOOK_SOCKET = '/run/xen-dm-restrict/hook.sock'
#: Environment variable naming another hook service socket (tests, the
#: benchmark).
HOOK_SOCKET_ENV = 'XEN_DM_RESTRICT_HOOK_SOCKET'


def chroot_dir(base: str, uid: int) -> str:
    """The chroot directory of ``uid`` under ``base``."""
    return '%s/qemu-root-%d' % (base.rstrip('/'), uid)


#: The unix socket, inside a device model's chroot, its VNC server listens
#: on when it has no network (see console.relay).
VNC_SOCKET = 'vnc.sock'


def hook_socket() -> str:
    """The hook service's socket this process uses."""
    import os

    return os.environ.get(HOOK_SOCKET_ENV) or HOOK_SOCKET
