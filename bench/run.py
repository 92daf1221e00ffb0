"""Run the benchmarks, print a table and write the numbers as JSON.

``tox -e bench`` runs ``python bench/run.py {posargs}``.  Each step
measures one promise of the dm_restrict hook and checks it against its
goal:

boot         per-boot cost with a full host leased (median <= 1 ms,
             p99 <= 5 ms), split by phase, and against libvirt's own
             define + create on the embedded test driver
qemu         a real restricted QEMU start; the hook must cost <= 5 % of
             it, the launcher <= 15 % (needs root, else skipped with the
             reason)
disk         a qcow2 overlay on a raw base served by the deprivileged
             storage daemon against the same daemon as root (what
             qdisk would be): sequential read and write MiB/s, 4 KiB
             random read IOPS, their ratios (>= 0.8), with
             --disk-toggles also without seccomp, cgroup or both
             (needs root and fio)
hook         libvirtd's hook as libvirtd runs the installed one: prepare
             begin <= 40 ms, an ignored operation <= 2 ms (needs root)
scale        allocation cost by active leases and by range size (must not
             grow with the range), and the memory of a full host
concurrency  8 processes leasing 1,000 uids each at once: no duplicate
             uid, no error, aggregate rate
hostile      the hostile-input properties with 10,000 examples in total,
             and the policy against libvirt's own reading, 10,000 more
xen          the Xen figures of the last lab run (tox -e xenlab):
             restricted against unrestricted virsh start, medians, ratio
leases_state thousands of random lifecycle steps from several actors
             against a private libvirtd: no uid shared by two live
             domains, every live domain leased (needs root)

A missed correctness goal (concurrency, hostile, leases_state) makes
the exit status 1; a missed timing goal does only with ``--strict``,
since timings depend on the machine.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import typing

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import libvirt  # noqa: E402
import lxml  # noqa: E402

from bench import boot  # noqa: E402
from bench import concurrency  # noqa: E402
from bench import disk  # noqa: E402
from bench import hook  # noqa: E402
from bench import hostile  # noqa: E402
from bench import leases_state  # noqa: E402
from bench import qemu  # noqa: E402
from bench import scale  # noqa: E402
from bench import xen  # noqa: E402

STEPS = ('boot', 'qemu', 'disk', 'hook', 'scale', 'concurrency', 'hostile',
         'xen', 'leases_state')


class Report:
    """Rows of the printed table, and the goals they were checked against.
    """

    def __init__(self):
        self.rows: typing.List[typing.Tuple[str, str, str, str]] = []
        self.missed: typing.List[typing.Tuple[str, bool]] = []

    def section(self, title: str) -> None:
        self.rows.append((title, '', '', ''))

    def row(self, metric: str, value: str, goal: str = '',
            met: typing.Optional[bool] = None,
            correctness: bool = False) -> None:
        status = '' if met is None else ('met' if met else 'MISSED')
        self.rows.append(('  ' + metric, value, goal, status))
        if met is False:
            self.missed.append((metric, correctness))

    def print(self) -> None:
        header = ('measurement', 'value', 'goal', '')
        cells = [header] + [row for row in self.rows if row[1:] != ('',) * 3]
        widths = [max(len(row[i]) for row in cells) for i in range(3)] + [0]
        for row in [header] + self.rows:
            if row[1:] == ('',) * 3:
                print('\n' + row[0])       # a section title
                continue
            print('  '.join(cell.ljust(width) for cell, width in
                            zip(row, widths)).rstrip())


def _ms(summary: typing.Dict[str, float]) -> str:
    return 'median %.3f ms, p99 %.3f ms' % (summary['median_ms'],
                                            summary['p99_ms'])


def report_boot(report: Report, result: dict) -> None:
    per_boot = result['per_boot']
    report.section('per-boot cost of the hook (%d leases active, %s, %s)'
                   % (result['active_leases'],
                      result['lease_db_filesystem'],
                      result['lease_db_durability']))
    report.row('prepare() median, %d boots' % per_boot['n'],
               '%.3f ms' % per_boot['median_ms'], '<= 1 ms',
               per_boot['median_ms'] <= 1.0)
    report.row('prepare() p99', '%.3f ms' % per_boot['p99_ms'], '<= 5 ms',
               per_boot['p99_ms'] <= 5.0)
    for phase, median in result['phases_median_ms'].items():
        report.row('  %s (median)' % phase, '%.3f ms' % median)
    lv = result['libvirt_test_driver']
    report.row('test:///default define+create', _ms(lv['plain']))
    report.row('  with the hook first', _ms(lv['with_hook']))
    report.row('  ratio (medians)', '%.2f x' % lv['ratio'])


def report_qemu(report: Report, result: dict,
                boot_result: typing.Optional[dict]) -> None:
    report.section('restricted QEMU start, to query-status over QMP')
    if 'skipped' in result:
        report.row('skipped', result['skipped'])
        return
    report.row('binary', result['version'])
    report.row('arguments', ' '.join(
        arg if arg.startswith('-') else '...'
        for arg in result['restriction_args']))
    report.row('restricted (%s checked)' % result['verified'],
               _ms(result['restricted']))
    report.row('unrestricted', _ms(result['unrestricted']))
    if boot_result is not None:
        share = (boot_result['per_boot']['median_ms']
                 / result['restricted']['median_ms'])
        result['hook_share_of_start'] = share
        report.row('hook / restricted start (medians)',
                   '%.1f %%' % (share * 100), '<= 5 %', share <= 0.05)
    launcher = result['launcher']
    report.section('device-model start through the launcher, against QEMU '
                   'started directly with the same command line')
    if 'skipped' in launcher:
        report.row('skipped', launcher['skipped'])
    else:
        report.row('through the launcher (%s)' % launcher['restrictions'],
                   _ms(launcher['through_launcher']))
        report.row('QEMU directly', _ms(launcher['bare']))
        report.row('cgroup', launcher['cgroup'])
        report.row('ratio (medians)', '%.2f x' % launcher['ratio_to_bare'],
                   '<= 1.15 x', launcher['ratio_to_bare'] <= 1.15)
        python = launcher['python_launcher']
        report.row('the Python launcher alone (the front\'s fallback)',
                   '%s, %.2f x' % (_ms(python), python['ratio_to_bare']))
        query = launcher['version_query']
        report.row('-version through the launcher', _ms(query['launcher']))
        report.row('-version of QEMU', _ms(query['bare']))
        report.row('  ratio (medians)', '%.2f x' % query['ratio'])


def report_disk(report: Report, result: dict) -> None:
    report.section('qcow2 disk over NBD: the deprivileged storage daemon '
                   'against the same daemon as root (qdisk)')
    if 'skipped' in result:
        report.row('skipped', result['skipped'])
        return
    if 'failed' in result:
        report.row('restricted daemon served, as claimed',
                   result['failed'], 'yes', False, correctness=True)
        return
    report.row('checked in /proc while serving', result['verified'])
    report.row('daemon / client', '%s / %s' % (result['version'],
                                               result['client']))
    report.row('image', result['image'])
    report.row('restricted by', result['restrictions'])
    for note in result['notes']:
        report.row('note', note)
    report.row('load average before / after', '%.2f / %.2f' % (
        result['load_before'][0], result['load_after'][0]))
    rows = (('seq_read_mib_s', 'sequential read', '%.0f MiB/s'),
            ('seq_write_mib_s', 'sequential write', '%.0f MiB/s'),
            ('rand_read_iops', '4 KiB random read, depth %d'
             % result['random_depth'], '%.0f IOPS'),
            ('seq_read_cpu_s_per_gib', 'daemon CPU, sequential read',
             '%.2f s/GiB'),
            ('seq_write_cpu_s_per_gib', 'daemon CPU, sequential write',
             '%.2f s/GiB'),
            ('rand_read_cpu_us_per_io', 'daemon CPU, random read',
             '%.1f us/read'))
    report.row('medians of %d paired runs' % result['runs'],
               'restricted / root = median of the runs\' ratios')
    for metric, what, unit in rows:
        ratio = result['ratio'][metric]
        throughput = metric in disk.THROUGHPUT
        report.row('  ' + what, '%s / %s = %.2f' % (
            unit % result['restricted'][metric],
            unit % result['unrestricted'][metric], ratio),
            '>= 0.80' if throughput else '',
            ratio >= 0.80 if throughput else None)
    for name, toggle in result.get('toggles', {}).items():
        report.row('  %s / root' % name.replace('_', ' '), ', '.join(
            '%.2f' % toggle['ratio'][metric] for metric, _, _ in rows))


def report_hook(report: Report, result: dict) -> None:
    report.section('libvirtd\'s libxl hook, run as libvirtd runs the '
                   'installed hook (argv NAME OP SUBOP -, XML on stdin, '
                   'cleared environment)')
    if 'skipped' in result:
        report.row('skipped', result['skipped'])
        return
    report.row('hook', result['hook'])
    report.row('prepare begin (check, chroot, reap)',
               _ms(result['prepare']), '<= 40 ms',
               result['prepare']['median_ms'] <= 40)
    report.row('  without a current settings snapshot (full load)',
               _ms(result['prepare_without_snapshot']))
    report.row('  without the service (the Python hook, -IS)',
               _ms(result['prepare_without_service']))
    report.row('%s (ignored)' % result['ignored_operation'],
               _ms(result['ignored']),
               '<= 2 ms', result['ignored']['median_ms'] <= 2)
    if 'started' in result:
        report.row('started begin, no VNC console to relay',
                   _ms(result['started']))
    if 'started_without_graphics' in result:
        report.row('started begin, no graphics (not handed on)',
                   _ms(result['started_without_graphics']))


def report_xen(report: Report, result: dict) -> None:
    report.section('Xen lab: virsh start on xen:///system (last lab run)')
    if 'skipped' in result:
        report.row('skipped', result['skipped'])
        return
    report.row('lab run', '%s, -cpu %s' % (result['date'], result['cpu']))
    report.row('unrestricted starts', ' '.join(
        '%.2f' % x for x in result['unrestricted_s']) + ' s')
    report.row('restricted starts', ' '.join(
        '%.2f' % x for x in result['restricted_s']) + ' s' if
        result['restricted_s'] else 'none succeeded in that run')
    if 'ratio' in result:
        report.row('restricted / unrestricted (medians)',
                   '%.2f s / %.2f s = %.2f' % (
                       result['restricted_median_s'],
                       result['unrestricted_median_s'], result['ratio']))


def report_scale(report: Report, result: dict) -> None:
    report.section('lease allocation (LeaseStore.acquire, durable)')
    for row in result['by_lease_count']:
        what = ('cursor at a free uid' if row['case'] == 'typical' else
                'cursor at a run of all %d' % row['leases'])
        report.row('%6d leases, %s' % (row['leases'], what), _ms(row))
    for row in result['by_range_size']:
        report.row('%d leases, range of %d uids, %s' % (
            row['leases'], row['range_size'], row['case']), _ms(row))
    for case, growth in result['range_size_growth'].items():
        report.row('growth with range size (%s)' % case,
                   '%.2f x from %d to %d uids' % (
                       growth, scale.RANGE_SIZES[0], scale.RANGE_SIZES[-1]),
                   '~1 x (<= 1.5)', growth <= 1.5)
    mem = result['memory']
    report.section('memory of a process booting with %d leases active'
                   % mem['active_leases'])
    report.row('RSS after imports / after %d boots / peak' % mem['boots'],
               '%d / %d / %d KiB' % (mem['rss_after_import_kib'],
                                     mem['rss_after_boots_kib'],
                                     mem['rss_peak_kib']))
    report.row('tracemalloc peak: boots / list() of all leases',
               '%d / %d KiB' % (mem['tracemalloc_peak_boots_kib'],
                                mem['tracemalloc_peak_list_all_kib']))
    report.row('lease database on disk', '%d KiB' % (
        mem['lease_db_bytes'] // 1024))


def report_concurrency(report: Report, result: dict) -> None:
    report.section('%d processes x %d leases at once, one tenant range'
                   % (result['workers'], result['leases_per_worker']))
    report.row('allocated', str(result['allocated']),
               str(result['workers'] * result['leases_per_worker']),
               result['allocated'] == result['workers']
               * result['leases_per_worker'], correctness=True)
    report.row('duplicate uids', str(result['duplicate_uids']), '0',
               result['duplicate_uids'] == 0 and
               result['stored_matches_told'], correctness=True)
    report.row('errors', str(result['errors']), '0',
               result['errors'] == 0 and result['left_after_release'] == 0
               and set(result['exit_codes']) == {0}, correctness=True)
    report.row('aggregate allocations / releases',
               '%.0f / %.0f per s' % (result['allocations_per_s'],
                                      result['releases_per_s']))


def report_hostile(report: Report, result: dict, wanted: int) -> None:
    report.section('hostile input (hypothesis, profile hostile-bench)')
    report.row('examples', '%d in %.1f s' % (result['examples'],
                                             result['seconds']),
               '>= %d' % wanted, result['examples'] >= wanted,
               correctness=True)
    report.row('  of them, policy vs libvirt\'s reading',
               str(result['oracle_examples']), '>= %d' % wanted,
               result['oracle_examples'] >= wanted, correctness=True)
    for outcome, count in result['outcomes'].items():
        report.row('  ' + outcome, str(count))
    report.row('failures', str(len(result['failures'])), '0',
               not result['failures'], correctness=True)
    for failure in result['failures']:
        print(failure['error'], file=sys.stderr)


def report_leases_state(report: Report, result: dict) -> None:
    report.section('lease invariant over random lifecycles (private '
                   'libvirtd, test driver)')
    if 'skipped' in result:
        report.row('skipped', result['skipped'])
        return
    report.row('steps', '%d in %d examples, %.1f s' % (
        result['steps'], result['examples'], result['seconds']),
        '>= 1000', result['steps'] >= 1000, correctness=True)
    for outcome, count in sorted(result['outcomes'].items()):
        report.row('  ' + outcome, str(count))
    report.row('invariant violations', '0' if result['failure'] is None
               else '1: %s' % result['failure'].splitlines()[0], '0',
               result['failure'] is None, correctness=True)


def environment(workdir: str) -> dict:
    return {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(),
        'python': platform.python_version(), 'kernel': platform.release(),
        'cpus': os.cpu_count(), 'root': os.geteuid() == 0,
        'sqlite': sqlite3.sqlite_version, 'lxml': lxml.__version__,
        'libvirt': libvirt.getVersion(), 'workdir': workdir,
    }


def parse_args(argv: typing.Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--steps', default=','.join(STEPS),
                        help='comma-separated steps to run, of: %s'
                        % ', '.join(STEPS))
    parser.add_argument('--boots', type=int, default=2000,
                        help='timed boots of the per-boot step')
    parser.add_argument('--qemu-starts', type=int, default=30,
                        help='timed starts of each kind of QEMU')
    parser.add_argument('--disk-runs', type=int, default=5,
                        help='paired runs of the storage daemon, '
                             'restricted and as root')
    parser.add_argument('--disk-toggles', action='store_true',
                        help='also pair root with the restricted storage '
                             'daemon less its seccomp filter, its cgroup '
                             'or both (about three times as long)')
    parser.add_argument('--hook-calls', type=int, default=30,
                        help='timed runs of the installed libvirtd hook '
                             'per operation')
    parser.add_argument('--hostile-examples', type=int, default=10000,
                        help='hypothesis examples, in total')
    parser.add_argument('--output', help='JSON file to write (default '
                        'bench/results/bench-TIMESTAMP.json)')
    parser.add_argument('--workdir', help='directory for the lease '
                        'databases; on the disk to measure (default: a '
                        'new directory in /var/tmp, removed afterwards)')
    parser.add_argument('--strict', action='store_true',
                        help='exit 1 when a timing goal is missed too')
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(',') if s.strip()]
    unknown = set(args.steps) - set(STEPS)
    if unknown:
        parser.error('unknown steps: %s' % ', '.join(sorted(unknown)))
    return args


def main(argv: typing.Sequence[str] = ()) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    workdir = args.workdir or tempfile.mkdtemp(
        prefix='xen-dm-restrict-bench-',
        dir='/var/tmp' if os.path.isdir('/var/tmp') else None)
    os.makedirs(workdir, exist_ok=True)
    results: typing.Dict[str, typing.Any] = {}
    report = Report()
    try:
        if 'boot' in args.steps:
            results['boot'] = boot.run(workdir, args.boots)
            report_boot(report, results['boot'])
        if 'qemu' in args.steps:
            results['qemu'] = qemu.run(workdir, args.qemu_starts)
            report_qemu(report, results['qemu'], results.get('boot'))
        if 'disk' in args.steps:
            results['disk'] = disk.run(workdir, args.disk_runs,
                                       args.disk_toggles)
            report_disk(report, results['disk'])
        if 'hook' in args.steps:
            results['hook'] = hook.run(workdir, args.hook_calls)
            report_hook(report, results['hook'])
        if 'scale' in args.steps:
            results['scale'] = scale.run(workdir)
            report_scale(report, results['scale'])
        if 'concurrency' in args.steps:
            results['concurrency'] = concurrency.run(workdir)
            report_concurrency(report, results['concurrency'])
        if 'hostile' in args.steps:
            results['hostile'] = hostile.run(args.hostile_examples)
            report_hostile(report, results['hostile'],
                           args.hostile_examples)
        if 'xen' in args.steps:
            results['xen'] = xen.run()
            report_xen(report, results['xen'])
        if 'leases_state' in args.steps:
            results['leases_state'] = leases_state.run()
            report_leases_state(report, results['leases_state'])
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    report.print()
    output = args.output or os.path.join(
        HERE, 'results', 'bench-%s.json'
        % datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w', encoding='utf-8') as handle:
        json.dump({'environment': environment(workdir),
                   'arguments': vars(args), 'seconds': elapsed,
                   'missed_goals': [m for m, _ in report.missed],
                   'results': results}, handle, indent=2)
    print('\n%d step(s) in %.0f s; results written to %s'
          % (len(args.steps), elapsed, output))
    failed = [m for m, correctness in report.missed
              if correctness or args.strict]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
