"""The hostile-input properties, run with many more examples than CI does.

tests/unit/test_hostile_input.py runs 200 examples a property in the
normal test run, to stay fast.  Here its ``hostile-bench`` hypothesis
profile shares out a larger total (10,000 by default) among the same
properties, called directly, and the outcomes (accepted, and refused by
error class) are counted.  The policy oracle property
(tests/functional/test_policy_oracle.py: generated domains, accepted ones
held against libvirt's own reading) runs with the same number of
examples.  A failing property is reported with the
falsifying example hypothesis prints, and makes the bench fail.
"""

import logging
import os
import pathlib
import shutil
import tempfile
import time
import traceback
import typing


def run(examples: int) -> typing.Dict[str, typing.Any]:
    """Run every hostile-input property; ``examples`` in total."""
    os.environ['XEN_DM_RESTRICT_HOSTILE_PROFILE'] = 'hostile-bench'
    os.environ['XEN_DM_RESTRICT_HOSTILE_EXAMPLES'] = str(examples)
    # Imported only now: the module reads its profile when imported.
    from tests.functional import test_policy_oracle as oracle
    from tests.unit import test_hostile_input as suite
    scratch = tempfile.mkdtemp(prefix='xdr-bench-oracle-')

    def oracle_property():
        oracle.run_property(pathlib.Path(scratch))

    oracle_property.__name__ = 'policy_oracle (libvirt reading)'
    properties = [suite.test_mutated_domain_is_restricted_or_refused,
                  suite.test_junk_is_refused_or_restricted,
                  suite.test_hostile_tenant_id_is_refused_or_restricted]
    failures, per_property = [], {}
    counters = {prop.__name__: suite.OUTCOMES for prop in properties}
    counters[oracle_property.__name__] = oracle.OUTCOMES
    properties.append(oracle_property)
    logging.disable(logging.WARNING)        # one warning per refusal
    start = time.monotonic()
    try:
        for prop in properties:
            counter = counters[prop.__name__]
            before = sum(counter.values())
            began = time.monotonic()
            try:
                prop()
            except Exception:
                failures.append({'property': prop.__name__,
                                 'error': traceback.format_exc(limit=3)})
            per_property[prop.__name__] = {
                'examples': sum(counter.values()) - before,
                'seconds': time.monotonic() - began}
    finally:
        logging.disable(logging.NOTSET)
        shutil.rmtree(scratch, ignore_errors=True)
    outcomes = suite.OUTCOMES + oracle.OUTCOMES
    return {'examples': sum(outcomes.values()),
            'seconds': time.monotonic() - start,
            'per_property': per_property,
            'outcomes': dict(outcomes.most_common()),
            'oracle_examples': sum(oracle.OUTCOMES.values()),
            'failures': failures}
