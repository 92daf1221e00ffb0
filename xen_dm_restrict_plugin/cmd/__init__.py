"""Console scripts of xen_dm_restrict_plugin."""
