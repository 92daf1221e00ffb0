"""Benchmarks of xen_dm_restrict_plugin, run by ``tox -e bench``.

Numbers live here, not in the unit tests: timings depend on the machine,
so the bench reports them (a table, and JSON under bench/results/) and
checks them against the goals, while the tests check behaviour only.
"""
