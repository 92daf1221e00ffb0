"""pytest configuration shared by unit and functional tests."""

import pytest

from xen_dm_restrict_plugin.host import capabilities


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    capabilities.clear_cache()
    yield
    capabilities.clear_cache()
