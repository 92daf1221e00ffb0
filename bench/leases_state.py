"""The lease invariant over thousands of random lifecycle steps.

Runs the stateful model of tests/functional/lease_state.py (boots,
refusals, failing defines, defines, starts, destroys, undefines,
transient boots, renders, starts by other clients, reconciles and
releases from several actors) against a private libvirtd serving the
test driver, with the invariant checked after every step: no two live
domains share a uid, every live restricted domain holds its lease, no
lease without a domain outlives reconcile's grace.  Needs root and
Debian's libvirt-daemon; skipped with the reason otherwise.
"""

import logging
import time
import typing

import hypothesis
from hypothesis import stateful

EXAMPLES = 100
STEPS_PER_EXAMPLE = 50


def run(examples: int = EXAMPLES) -> typing.Dict[str, typing.Any]:
    import _pytest.outcomes

    from tests.functional import lease_state
    from tests.functional import libvirtd

    reason = libvirtd.available()
    if reason is not None:
        return {'skipped': reason}
    # Every refusal is logged; thousands of them would bury the table.
    logging.getLogger('xen_dm_restrict_plugin').setLevel(logging.CRITICAL)
    lease_state.STATS.clear()
    failure = None
    started = time.monotonic()
    try:
        with libvirtd.running() as daemon:
            lease_state.LeaseMachine.uri = daemon.uri
            try:
                stateful.run_state_machine_as_test(
                    lease_state.LeaseMachine, settings=hypothesis.settings(
                        max_examples=examples,
                        stateful_step_count=STEPS_PER_EXAMPLE,
                        deadline=None, database=None,
                        suppress_health_check=list(hypothesis.HealthCheck)))
            except AssertionError as err:
                failure = str(err)
    except _pytest.outcomes.Skipped as skip:
        return {'skipped': str(skip)}
    stats = dict(lease_state.STATS)
    return {'examples': examples, 'steps': stats.pop('steps', 0),
            'seconds': time.monotonic() - started, 'outcomes': stats,
            'failure': failure}
