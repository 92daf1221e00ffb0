"""The lease invariant over random sequences of lifecycle calls.

tests/functional/lease_state.py is the model; this runs a few hundred
steps against a private libvirtd (thousands: ``bench/run.py --steps
leases_state``).
"""

import hypothesis
from hypothesis import stateful

from tests.functional import lease_state


def test_no_uid_shared_over_random_lifecycles(private_libvirtd):
    lease_state.LeaseMachine.uri = private_libvirtd.uri
    stateful.run_state_machine_as_test(
        lease_state.LeaseMachine, settings=hypothesis.settings(
            max_examples=25, stateful_step_count=30, deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck)))
    assert lease_state.STATS.get('steps', 0) >= 200
