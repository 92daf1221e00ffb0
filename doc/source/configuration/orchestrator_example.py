"""The lines an orchestrator needs to run its domains through the hooks.

    python3 orchestrator_example.py CONFIG_FILE DOMAIN_XML [URI]

CONFIG_FILE holds [libvirt] domain_hooks and [dm_restrict]; URI defaults
to libvirt's embedded test driver, test:///default.
"""

import sys

import libvirt
from oslo_config import cfg

from xen_dm_restrict_plugin import exception
from xen_dm_restrict_plugin.orchestrator import hooks
from xen_dm_restrict_plugin.orchestrator import loader
from xen_dm_restrict_plugin.orchestrator import virt

config_file, xml_file = sys.argv[1:3]
uri = sys.argv[3] if len(sys.argv) > 3 else 'test:///default'
# libvirt-python prints every error it raises unless told otherwise.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# 1. Service start: parse the configuration and load the hooks named in
#    [libvirt] domain_hooks.  A hook that is missing, fails to load or
#    has invalid options raises here, and the service must not start.
conf = cfg.ConfigOpts()
conf(['--config-file', config_file], project='xen-dm-restrict')
manager = loader.HookManager(conf)

# 2. Open libvirt through the wrapper: every define, start, stop and
#    undefine then runs the hooks, and the calls a restricted device
#    model cannot survive are refused before libvirt sees them.
conn = virt.HookedConnection.open(uri, manager)

# 3. A boot request: the instance (uuid and owning tenant, from the
#    orchestrator's own records, never from the XML) and its domain XML.
instance = hooks.Instance(uuid='6f1c4b9e-2a7d-4c3e-9b51-0d8e7f6a5c21',
                          tenant='acme')
with open(xml_file) as handle:
    xml = handle.read()
try:
    dom = conn.define_and_start(xml, instance)
except exception.DmRestrictError as err:
    # Refused: nothing new is defined and no uid stays leased.  The
    # message names the feature and the remedy: show it to the tenant.
    sys.exit('boot refused: %s' % err)
print('started %s' % dom.name())

# 4. Later requests use conn.lookup(instance), or keep the domain object.
dom = conn.lookup(instance)
try:
    dom.migrateToURI3('xen+ssh://other-host/system', {}, 0)
except exception.OperationRefused as err:
    print('refused: %s' % err)

# 5. Delete: stop (reaps the uid), then undefine (releases the lease).
dom.destroy()
dom.undefine()
conn.close()
print('deleted')
