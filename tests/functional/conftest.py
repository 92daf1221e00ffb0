"""Fixtures shared by the functional tests."""

import pytest

from tests import base
from tests.functional import hostenv
from tests.functional import libvirtd


@pytest.fixture(autouse=True)
def _no_cgroups_left():
    """Remove the cgroups a test's device models got, after its other
    fixtures killed their processes.
    """
    yield
    hostenv.remove_cgroup_parents()


@pytest.fixture
def conn(tmp_path):
    """A HookedConnection to test:///default with the dm_restrict hook.

    The test driver's state is shared by every connection of the process,
    so every domain a test defined is removed again afterwards.
    """
    conf = base.make_conf(tmp_path, domain_hooks=['dm_restrict'])
    with libvirtd.hooked_test_driver(conf) as connection:
        yield connection


@pytest.fixture
def private_libvirtd():
    """A libvirtd of the test's own serving the test driver to several
    processes (tests/functional/libvirtd.py); skips where it cannot run.
    """
    with libvirtd.running() as daemon:
        yield daemon
