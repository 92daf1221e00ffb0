"""Historical name of :mod:`xen_dm_restrict_plugin.orchestrator.extension`.

Orchestrators import the orchestrator-side modules by these names (and
privsep contexts are named by them), so the name stays an alias of the
module itself: ``import xen_dm_restrict_plugin.extension`` gives the same
module object as the new path.
"""

import sys

from xen_dm_restrict_plugin.orchestrator import extension

sys.modules[__name__] = extension
