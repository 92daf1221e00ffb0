"""``xen-dm-restrict``: the operator's command line.

Each subcommand is a thin shell over the library, so an operator can do by
hand what the orchestrator does on every boot: see the restricted XML a
domain would get, check a domain without taking a lease, look at and
release leases, and boot a tenant VM through the enabled hooks.

Exit codes: 0 done, 2 refused (bad input, an unsupported feature or bad
configuration), 3 ``leases reconcile`` left discrepancies for an
operator, 1 any other failure.
"""

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import textwrap
import typing
import uuid as uuid_mod

from oslo_config import cfg

from xen_dm_restrict_plugin.cmd import host
from xen_dm_restrict_plugin import conf as conf_mod
from xen_dm_restrict_plugin.core import domain as domain_mod
from xen_dm_restrict_plugin.core import pathscope
from xen_dm_restrict_plugin.core import policy
from xen_dm_restrict_plugin.core import restrict
from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.host import capabilities
from xen_dm_restrict_plugin.host import netfacts
from xen_dm_restrict_plugin.host import reaper
from xen_dm_restrict_plugin.leases import locks
from xen_dm_restrict_plugin.leases import store as leases
from xen_dm_restrict_plugin.orchestrator import extension
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import loader

LOG = logging.getLogger(__name__)

EXIT_OK = host.EXIT_OK
EXIT_ERROR = host.EXIT_ERROR
EXIT_REFUSED = host.EXIT_REFUSED
EXIT_UNRESOLVED = host.EXIT_UNRESOLVED
DEFAULT_CONFIG = host.DEFAULT_CONFIG

PROG = 'xen-dm-restrict'


class CommandError(exception.Refused):
    """A command line that cannot be carried out as given."""


def _load_conf(args) -> cfg.ConfigOpts:
    return host.load_conf(args.config_file or None)


_settings = host.settings_of


def _read_xml(path: str) -> bytes:
    try:
        if path == '-':
            return sys.stdin.buffer.read()
        with open(path, 'rb') as handle:
            return handle.read()
    except OSError as err:
        raise CommandError('domain XML file %s' % path,
                           err.strerror or str(err),
                           'give a readable file, or - for stdin') from None


def _instance(args, data: bytes, max_bytes: int) -> hooks.Instance:
    uuid = args.instance_uuid
    if uuid is None:
        uuid = domain_mod.parse(data, max_bytes).uuid
    if uuid is None:
        raise CommandError('--instance-uuid', 'the domain XML has no <uuid> '
                           'and none was given',
                           'pass --instance-uuid UUID')
    return hooks.Instance(uuid=uuid, tenant=args.tenant)


def _write_output(path: typing.Optional[str], text: str) -> None:
    """Write ``text`` whole, or raise and leave no file behind."""
    if not path or path == '-':
        sys.stdout.write(text + '\n')
        sys.stdout.flush()
        return
    # A new file of our own (O_EXCL: never an existing file or a symlink
    # someone planted), renamed over the target (which replaces a symlink
    # rather than writing through it).
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path),
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            handle.write(text + '\n')
            handle.flush()
            # Through the descriptor: whoever owns the directory may have
            # put a symlink at the temporary name meanwhile.
            os.fchmod(handle.fileno(), 0o644)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cmd_render(args) -> int:
    conf = _load_conf(args)
    hook = extension.DmRestrictHook(conf, _settings(conf))
    data = _read_xml(args.xml)
    instance = _instance(args, data, hook.settings.max_xml_bytes)
    written = []

    def finish(out: str) -> None:
        # Runs before the lease is committed: when the output cannot be
        # written, no lease was taken (nothing to give back on a full
        # disk).
        try:
            _write_output(args.output, out)
        except (OSError, ValueError) as err:
            raise CommandError(
                'output %s' % (args.output or 'stdout'),
                'the restricted XML could not be written (%s); no lease '
                'was kept' % (getattr(err, 'strerror', None) or err),
                'write to a writable file or pipe') from None
        written.append(True)

    try:
        hook.prepare_with_undo(data.decode('utf-8', 'replace'), instance,
                               finish=finish)
    except exception.LeaseError:
        # The lease could not be committed after the output was
        # written: take the output back too.
        if written and args.output and args.output != '-':
            with contextlib.suppress(OSError):
                os.unlink(args.output)
        raise
    finally:
        hook.close()
    return EXIT_OK


def cmd_validate(args) -> int:
    settings = _settings(_load_conf(args))
    data = _read_xml(args.xml)
    dom = settings.parse_domain(data)
    kind = dom.kind
    record = restrict.read_record(dom)
    tenant = args.tenant or (record.tenant if record else None)
    scope = (pathscope.Scope(tenant, dom.uuid)
             if tenant and dom.uuid else None)
    policy.check_domain(dom, restrict.foreign_args(dom, record), settings,
                        netfacts.HostNetwork(settings), scope=scope)
    if not kind.has_dom0_device_model:
        print('%s: %s guest, no dom0 device model to restrict; allowed'
              % (args.xml, kind.value))
        return EXIT_OK
    if args.tenant is not None:
        settings.range_for(args.tenant)
    syntax = capabilities.syntax_for(settings, dom.emulator)
    print('%s: %s guest, can be restricted (QEMU options: user as %s, '
          'chroot as %s, seccomp sandbox %s)' % (
              args.xml, kind.value, _SPELLING['user'][syntax.user_form],
              _SPELLING['chroot'][syntax.chroot_form],
              'on' if syntax.sandbox else 'off (QEMU has no -sandbox)'))
    return EXIT_OK


#: How each restriction is spelled on QEMU's command line, per form.
_SPELLING = {
    'user': {restrict.FORM_LEGACY: '-runas UID:GID',
             restrict.FORM_RUN_WITH: '-run-with user=UID:GID'},
    'chroot': {restrict.FORM_LEGACY: '-chroot DIR',
               restrict.FORM_RUN_WITH: '-run-with chroot=DIR'},
}


def _lease_dict(lease: leases.Lease) -> dict:
    return {'uuid': lease.uuid, 'tenant': lease.tenant, 'uid': lease.uid,
            'created_at': lease.created_at}


def cmd_leases_list(args) -> int:
    settings = _settings(_load_conf(args))
    with leases.LeaseStore(settings.lease_db,
                           settings.lease_db_timeout) as store:
        found = store.list(tenant=args.tenant)
        held = store.holds()
    if args.format == 'json':
        print(json.dumps([dict(_lease_dict(le), held=held.get(le.uuid))
                          for le in found], indent=2))
        return EXIT_OK
    print('%-36s  %-20s  %10s  %s' % ('UUID', 'TENANT', 'UID', 'HELD'))
    for lease in found:
        print('%-36s  %-20s  %10d  %s' % (lease.uuid, lease.tenant,
                                          lease.uid, held.get(lease.uuid,
                                                              '')))
    for uuid in sorted(set(held) - {le.uuid for le in found}):
        print('%-36s  %-20s  %10s  %s' % (uuid, '-', '-', held[uuid]))
    return EXIT_OK


def _existing_store(settings) -> typing.Optional[leases.LeaseStore]:
    return leases.LeaseStore.open_existing(settings.lease_db,
                                           settings.lease_db_timeout)


def cmd_leases_release(args) -> int:
    settings = _settings(_load_conf(args))
    instance_uuid = hooks.Instance(args.uuid, 'unknown').uuid
    store = _existing_store(settings)
    lease, held = None, False
    if store is not None:
        with store, locks.InstanceLock(settings.lease_db, instance_uuid):
            lease = store.get(instance_uuid)
            held = instance_uuid in store.holds()
            if lease is not None:
                # The uid is leased again later: nothing of it may
                # survive.
                reaper.reap_for_release(
                    reaper.Reaper(settings), lease.uid,
                    'release of instance %s' % lease.uuid)
                store.release(instance_uuid)
    if lease is None:
        raise CommandError(
            'lease of %s' % instance_uuid, 'there is none',
            'list leases with "xen-dm-restrict leases list"')
    print('released uid %d of %s (tenant %s)%s'
          % (lease.uid, lease.uuid, lease.tenant,
             '; its hold is lifted too' if held else ''))
    return EXIT_OK


def cmd_leases_unhold(args) -> int:
    settings = _settings(_load_conf(args))
    instance_uuid = hooks.Instance(args.uuid, 'unknown').uuid
    store = _existing_store(settings)
    lifted = False
    if store is not None:
        with store:
            lifted = store.unhold(instance_uuid)
    if not lifted:
        raise CommandError('hold of %s' % instance_uuid, 'there is none',
                           'see held instances with "xen-dm-restrict '
                           'leases list"')
    print('hold lifted from %s' % instance_uuid)
    return EXIT_OK


def cmd_leases_reconcile(args) -> int:
    from xen_dm_restrict_plugin.host import reconcile

    libvirt = _quiet_libvirt()

    settings = _settings(_load_conf(args))
    conn = _connect(libvirt.openReadOnly, args.connect)
    try:
        with leases.LeaseStore(settings.lease_db,
                               settings.lease_db_timeout) as store:
            reconciler = reconcile.Reconciler(settings, store,
                                              grace=args.grace)
            findings = reconciler.run(conn, apply=args.apply)
        findings += _storage_findings(settings, conn, libvirt, args.apply)
    finally:
        conn.close()
    skipped = reconciler.skipped_young
    note = ('%d lease(s) without a domain are younger than the grace '
            'period of %g s (a boot may still be defining them) and were '
            'not judged; "--grace 0" judges them too'
            % (skipped, args.grace)) if skipped else ''
    if args.format == 'json':
        if note:
            LOG.warning('%s', note)
        print(json.dumps([vars(f) for f in findings], indent=2))
    elif not findings:
        print('lease database and libvirt agree' +
              (', except: %s' % note if note else ''))
    else:
        print('%-16s %-36s %10s  %s' % ('KIND', 'UUID', 'UID', 'ACTION'))
        for f in findings:
            print('%-16s %-36s %10s  %s\n%55s  (%s)'
                  % (f.kind, f.uuid, '' if f.uid is None else f.uid,
                     f.action, '', f.detail))
        if note:
            print(note)
    if any(not f.resolved for f in findings):
        return EXIT_UNRESOLVED
    return EXIT_OK


def _storage_findings(settings, conn, libvirt, apply: bool) -> list:
    """Storage daemons of domains that no longer run (storage.service).
    """
    from xen_dm_restrict_plugin.host import reconcile
    from xen_dm_restrict_plugin.storage import service
    active = [dom.UUIDString() for dom in conn.listAllDomains(
        libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
    return [reconcile.Finding(**item)
            for item in service.reconcile(settings, active, apply)]


def _quiet_libvirt():
    """Stop libvirt printing every error it raises to stderr."""
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _connect(opener, uri: str):
    """``opener(uri)``, a libvirt error told with its remedy.

    :raises Unavailable: libvirt cannot be reached at ``uri``.
    """
    import libvirt

    try:
        return opener(uri)
    except libvirt.libvirtError as err:
        remedy = ('start libvirtd (systemctl start libvirtd) and check '
                  'that this user may use it, or give --connect another '
                  'URI (test:///default runs without Xen)')
        if not uri.startswith(('xen:', 'libxl:')):
            remedy = ('check the URI (xen:///system for Xen, '
                      'test:///default for a trial without Xen)')
        raise exception.Unavailable(
            'libvirt connection %s' % uri,
            str(err.get_error_message() or err).rstrip('.'),
            remedy) from None


def cmd_boot(args) -> int:
    from xen_dm_restrict_plugin.orchestrator import virt

    _quiet_libvirt()

    conf = _load_conf(args)
    settings = _settings(conf)
    data = _read_xml(args.xml)
    manager = loader.HookManager(conf)
    if not manager.names and not args.unrestricted:
        raise CommandError(
            'boot', 'no domain hook is enabled ([libvirt] domain_hooks is '
            'empty; configuration files read: %s), so the domain would boot '
            'with its device model unrestricted, as root'
            % _files_read(conf),
            'pass the configuration with --config-file (it sets '
            'domain_hooks = dm_restrict), or --unrestricted to boot '
            'without any hook on purpose')
    if args.instance_uuid is None:
        found = domain_mod.parse(data, conf[conf_mod.GROUP].max_xml_bytes)
        args.instance_uuid = found.uuid or str(uuid_mod.uuid4())
    instance = hooks.Instance(args.instance_uuid, args.tenant)
    lease_before = None
    store = _existing_store(settings)
    if store is not None:
        with store:
            lease_before = store.get(instance.uuid)
    conn = virt.HookedConnection(
        _connect(_quiet_libvirt().open, args.connect), manager)
    try:
        dom = conn.define_and_start(data.decode('utf-8', 'replace'),
                                    instance)
        record = _read_back_record(dom)
        result = {'name': dom.name(), 'uuid': dom.UUIDString(),
                  'id': dom.ID(), 'tenant': instance.tenant,
                  'hooks': manager.names}
        if record is not None:
            result.update(uid=record.uid, gid=record.gid,
                          chroot=record.chroot, applied=list(record.args),
                          lease='reused' if lease_before is not None
                          and lease_before.uid == record.uid else 'new')
        result['driver'] = conn.conn.getType()
        result['uri'] = args.connect
    finally:
        conn.close()
    if args.format == 'json':
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for key in ('name', 'uuid', 'id', 'tenant', 'uid', 'gid', 'chroot'):
        if key in result:
            print('%-8s %s' % (key + ':', result[key]))
    if 'applied' in result:
        print('applied: %s' % ' '.join(result['applied']))
        print('lease:   %s' % (
            'reused: this instance already held uid %d' % result['uid']
            if result['lease'] == 'reused' else
            'new: uid %d leased to this instance now' % result['uid']))
    else:
        print('applied: nothing (no dm_restrict record: not restricted)')
    print('driver:  %s (%s)' % (result['uri'], _driver_meaning(
        result['uri'], result['driver'])))
    if 'uid' in result:
        print('next:    on a Xen host (xen:///system), libxl starts the '
              'device model with these arguments; it runs as uid %d in '
              '%s, and the libvirt daemon hook checks the domain again '
              'right before that' % (result['uid'], result['chroot']))
    return EXIT_OK


def _driver_meaning(uri: str, driver: str) -> str:
    if uri.startswith('test:'):
        return ('libvirt\'s embedded test driver: no QEMU ran, no chroot '
                'was created, and the domain lived only inside this '
                'command; it is gone now')
    return 'libvirt driver %s' % driver


def _files_read(conf: cfg.ConfigOpts) -> str:
    files = list(conf.default_config_files or [])
    return ', '.join(files) if files else 'none'


def cmd_preflight(args) -> int:
    unknown: typing.List[str] = []
    conf = host.load_conf(args.config_file or None, unknown=unknown)
    return host.preflight(args, _settings(conf), unknown)


def cmd_install_hook(args) -> int:
    return host.install_hook(args, args.config_file)


def cmd_install_launcher(args) -> int:
    conf = _load_conf(args)
    return host.install_launcher(args, _settings(conf),
                                 conf.default_config_files or [])


def cmd_reap(args) -> int:
    return host.reap(args, _settings(_load_conf(args)))


def _read_back_record(dom) -> typing.Optional[restrict.Record]:
    import libvirt
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                            restrict.META_NS, 0)
    except libvirt.libvirtError:
        return None
    return restrict.record_from_xml(text)


_FORMAT_HELP = 'output format (default: %(default)s)'


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--config-file', action='append', metavar='PATH',
        help='configuration file with the [dm_restrict] and [libvirt] '
             'sections; may be repeated (default: %s if it exists)'
             % DEFAULT_CONFIG)
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='log what is done, to stderr')


def _subparser(subs, name: str, summary: str, example: str,
               details: str = ''):
    """A subcommand whose ``--help`` shows ``summary`` and ``details``
    wrapped, then ``example`` as written (one command a line).
    """
    description = textwrap.fill(summary + (' ' + details if details else ''),
                                79)
    heading = 'examples' if '\n' in example else 'example'
    parser = subs.add_parser(
        name, help=summary, description=description,
        epilog='%s:\n%s' % (heading, textwrap.indent(example, '  ')),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(parser)
    return parser


def reconcile_grace() -> float:
    from xen_dm_restrict_plugin.host import reconcile
    return reconcile.DEFAULT_GRACE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='xen-dm-restrict',
        description=textwrap.fill(
            'Run Xen device models of tenant VMs restricted (dm_restrict). '
            'Exit codes: 0 done, 2 refused, 3 reconcile left '
            'discrepancies, 1 error.', 79),
        epilog='examples:\n'
               '  xen-dm-restrict preflight\n'
               '  xen-dm-restrict validate --tenant acme domain.xml\n'
               '  xen-dm-restrict boot --connect xen:///system --tenant acme '
               'domain.xml\n'
               '  xen-dm-restrict leases list\n\n'
               'Every command reads %s\n'
               'unless given --config-file. "xen-dm-restrict COMMAND --help" '
               'shows the\noptions of a command and an example.'
               % DEFAULT_CONFIG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest='command', metavar='COMMAND')
    subs.required = True

    render = _subparser(
        subs, 'render', 'Print the restricted XML for a domain, taking (or '
        'reusing) the instance\'s uid lease.',
        'xen-dm-restrict render --tenant acme domain.xml > restricted.xml\n'
        'virsh -c xen:///system define restricted.xml',
        'It runs the dm_restrict hook as the orchestrator does: a domain '
        'that cannot run restricted is refused (exit 2) before any lease '
        'is taken. Nothing is defined in libvirt.')
    render.add_argument('xml', help='domain XML file, or - for stdin')
    render.add_argument('--tenant', required=True, help='tenant id')
    render.add_argument('--instance-uuid',
                        help='instance uuid (default: the XML\'s <uuid>)')
    render.add_argument('-o', '--output', help='write here, not stdout')
    render.set_defaults(func=cmd_render)

    validate = _subparser(
        subs, 'validate', 'Check that a domain can run restricted, '
        'without taking a lease.',
        'xen-dm-restrict validate --tenant acme domain.xml',
        'Exit 0 when it can, 2 with every refused feature and its remedy '
        'when it cannot. Nothing is written.')
    validate.add_argument('xml', help='domain XML file, or - for stdin')
    validate.add_argument('--tenant', help='also check the tenant has a '
                          'uid range')
    validate.set_defaults(func=cmd_validate)

    lease = subs.add_parser(
        'leases', help='List, release, reconcile and unhold uid leases.',
        description='List, release, reconcile and unhold the uid leases in '
                    '[dm_restrict] lease_db.',
        epilog='examples:\n'
               '  xen-dm-restrict leases list --tenant acme\n'
               '  xen-dm-restrict leases reconcile --connect xen:///system\n'
               '"xen-dm-restrict leases ACTION --help" shows the options '
               'of an action.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    lease_subs = lease.add_subparsers(dest='lease_command',
                                      metavar='ACTION')
    lease_subs.required = True
    llist = _subparser(lease_subs, 'list', 'List the uid leases.',
                       'xen-dm-restrict leases list --format json')
    llist.add_argument('--tenant', help='only this tenant\'s leases')
    llist.add_argument('--format', choices=('table', 'json'),
                       default='table', help=_FORMAT_HELP)
    llist.set_defaults(func=cmd_leases_list)
    lrel = _subparser(
        lease_subs, 'release', 'Release the uid lease of an instance whose '
        'domain is gone for good.',
        'xen-dm-restrict leases release 0b7a9c2e-5d1f-4a53-9e57-'
        '2f7f3c1d9a10',
        'It reaps the uid first (with reap_device_models on, the '
        'default), because a released uid is leased again later; a reap '
        'that fails leaves the lease in place. A hold on the instance is '
        'lifted with its lease.')
    lrel.add_argument('uuid', help='instance uuid')
    lrel.set_defaults(func=cmd_leases_release)
    lrec = _subparser(
        lease_subs, 'reconcile', 'Compare the leases with the domains '
        'libvirt knows and report (with --apply, repair) leases of gone '
        'domains, restricted domains without a lease, and uids claimed '
        'twice (held: refused at start). Exit 0 when all agree or were '
        'repaired, 3 when something is left for an operator.',
        'xen-dm-restrict leases reconcile --connect xen:///system\n'
        'xen-dm-restrict leases reconcile --connect xen:///system --apply')
    lrec.add_argument('--connect', required=True,
                      help='libvirt URI of this host\'s hypervisor, opened '
                           'read-only (xen:///system); no default, since '
                           'a wrong one makes every lease look orphaned')
    lrec.add_argument('--grace', type=float, metavar='SECONDS',
                      default=reconcile_grace(),
                      help='leave leases younger than this alone: a boot '
                           'leases before libvirt defines its domain '
                           '(default: %(default)s)')
    lrec.add_argument('--apply', action='store_true',
                      help='repair what can be repaired')
    lrec.add_argument('--format', choices=('table', 'json'),
                      default='table', help=_FORMAT_HELP)
    lrec.set_defaults(func=cmd_leases_reconcile)
    lunhold = _subparser(
        lease_subs, 'unhold', 'Let a held instance start again, once you '
        'have resolved its uid conflict.',
        'xen-dm-restrict leases unhold 0b7a9c2e-5d1f-4a53-9e57-2f7f3c1d9a10')
    lunhold.add_argument('uuid', help='instance uuid')
    lunhold.set_defaults(func=cmd_leases_unhold)

    boot = _subparser(
        subs, 'boot', 'Define and start a tenant VM through the enabled '
        'domain hooks, and print its uid and what was applied.',
        'xen-dm-restrict boot --config-file etc/xen-dm-restrict/'
        'boot-example.conf \\\n'
        '    --tenant acme etc/xen-dm-restrict/boot-example-domain.xml\n'
        'xen-dm-restrict boot --connect xen:///system --tenant acme '
        'domain.xml',
        'A domain that fails to start is undefined again and its lease '
        'released. The enabled hooks are [libvirt] domain_hooks of the '
        'configuration; with none, boot refuses unless --unrestricted.')
    boot.add_argument('xml', help='domain XML file, or - for stdin')
    boot.add_argument('--tenant', required=True, help='tenant id')
    boot.add_argument('--instance-uuid', help='instance uuid (default: the '
                      'XML\'s <uuid>, else a new one)')
    boot.add_argument('--connect', default='test:///default',
                      help='libvirt URI (default: %(default)s; on a Xen '
                           'host: xen:///system)')
    boot.add_argument('--format', choices=('text', 'json'), default='text',
                      help=_FORMAT_HELP)
    boot.add_argument('--unrestricted', action='store_true',
                      help='boot even when no domain hook is enabled (the '
                           'device model then runs as root)')
    boot.set_defaults(func=cmd_boot)

    pre = _subparser(
        subs, 'preflight', 'Check that this host can run device models '
        'restricted as configured; exit 0 only if every check passes.',
        'xen-dm-restrict preflight\n'
        'xen-dm-restrict preflight --format json',
        'It changes nothing on the host. A failed check that can only '
        'pass on a Xen host is marked [no Xen here].')
    pre.add_argument('--format', choices=('table', 'json'),
                     default='table', help=_FORMAT_HELP)
    pre.add_argument('--libvirt-hooks-dir', default='/etc/libvirt/hooks',
                     help='where libvirtd looks for hooks '
                          '(default: %(default)s)')
    pre.set_defaults(func=cmd_preflight)

    inst = _subparser(
        subs, 'install-launcher', 'Write the device-model launcher that '
        'starts in milliseconds, and its snapshot of this configuration.',
        'xen-dm-restrict install-launcher /usr/local/sbin/'
        'xen-dm-restrict-launch',
        'The launcher runs at every define and start of every domain. '
        'PATH is a compiled front (built here with the system C compiler, '
        '$CC or cc) that asks xen-dm-restrict-launch-service for its '
        'decision and applies it, so that no Python starts; PATH.py is '
        'xen-dm-restrict-launch run by this Python with -I -S and a fixed '
        'module path, which the front runs instead while the service is '
        'not running. Set [dm_restrict] launcher to PATH. Run it again '
        'after upgrading the plugin or Python.')
    inst.add_argument('path', help='where to write the launcher')
    inst.add_argument('--python-only', action='store_true',
                      help='write only the Python launcher, at PATH (no '
                           'compiler needed; about three times slower)')
    inst.set_defaults(func=cmd_install_launcher)

    hook = _subparser(
        subs, 'install-hook', 'Write libvirtd\'s libxl hook, which starts '
        'no Python on libvirtd\'s path, and the settings snapshot it '
        'reads.',
        'xen-dm-restrict install-hook /etc/libvirt/hooks/libxl',
        'libvirtd runs its hook for every operation of every domain. PATH '
        'is a compiled client (built here with the system C compiler, $CC '
        'or cc): it exits at once for the operations the hook ignores '
        '(without reading the domain XML), and hands prepare begin, '
        'started begin, stopped end, release end and migrate begin to '
        'xen-dm-restrict-hook-service, which runs the hook with its '
        'modules already loaded; while the service is not running it runs '
        'xen-dm-restrict-libvirt-hook by this Python with -I -S itself. '
        'The configuration the hook reads is loaded in full first (a bad '
        'one writes nothing), and its settings snapshot written, which '
        'the hook reads instead of loading the configuration. Restart '
        'libvirtd afterwards. Run it again after upgrading the plugin or '
        'Python, and restart the hook service.')
    hook.add_argument('path', help='where to write the hook')
    hook.add_argument('--script-only', action='store_true',
                      help='write a shell script that runs the Python hook '
                           'instead (no compiler needed; every call it '
                           'acts on starts Python)')
    hook.set_defaults(func=cmd_install_hook)

    reap = _subparser(
        subs, 'reap', 'Kill every process of a device-model uid (as root, '
        'with the reaper user); fails if any is left alive.',
        'xen-dm-restrict reap --uid 200017',
        'Only uids inside [dm_restrict] tenant_uid_ranges or '
        'shared_uid_range are reaped.')
    reap.add_argument('--uid', type=int, required=True,
                      help='a uid inside a configured range')
    reap.add_argument('--format', choices=('text', 'json'), default='text',
                      help=_FORMAT_HELP)
    reap.set_defaults(func=cmd_reap)
    return parser


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Warnings show; a refusal is printed once, as the "refused:" line;
    # -v shows the whole log.
    host.setup_logging(PROG, getattr(args, 'verbose', False),
                       logging.WARNING)
    return host.run(PROG, lambda: _naming_the_file(args))


def _naming_the_file(args) -> int:
    """Run the subcommand; a malformed domain names the file it came
    from.
    """
    try:
        return args.func(args)
    except exception.InvalidDomainXML as err:
        path = getattr(args, 'xml', None)
        if path is None or not err.subject.startswith('domain XML'):
            raise
        where = 'standard input' if path == '-' else 'file %s' % path
        raise type(err)(err.subject.replace(
            'domain XML', 'domain XML %s' % where, 1),
            re.sub(r' \(<string>, line [0-9]+\)', '', err.reason),
            err.remedy) from None


if __name__ == '__main__':
    sys.exit(main())
