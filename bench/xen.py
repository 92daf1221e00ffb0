"""The Xen figures: restricted against unrestricted libvirt starts in the lab.

The Xen lab (``python3 -m tox -e xenlab``, tools/xenlab) times
``virsh start`` of the same diskless HVM guest on xen:///system, several
starts each, unrestricted and through the plugin (daemon hook, launcher,
restricted QEMU), and writes them into ``.xenlab/run/summary.json``.
The lab takes a quarter of an hour, so the bench reads its last run
instead of starting one, and says how old it is.
"""

import json
import os
import statistics
import typing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = os.path.join(ROOT, '.xenlab', 'run', 'summary.json')


def run(path: str = SUMMARY) -> typing.Dict[str, typing.Any]:
    """The last lab run's start times, medians and their ratio."""
    if not os.path.exists(path):
        return {'skipped': 'no Xen lab run in %s (run python3 -m tox -e '
                           'xenlab as root)' % path}
    with open(path) as handle:
        summary = json.load(handle)
    bench = summary.get('bench') or {}
    plain = bench.get('unrestricted_virsh_start_s') or []
    restricted = bench.get('restricted_virsh_start_s') or []
    result = {'date': summary.get('date'), 'cpu': summary.get('qemu_cpu'),
              'unrestricted_s': plain, 'restricted_s': restricted}
    if plain and restricted:
        result['unrestricted_median_s'] = statistics.median(plain)
        result['restricted_median_s'] = statistics.median(restricted)
        result['ratio'] = (result['restricted_median_s']
                           / result['unrestricted_median_s'])
    return result
