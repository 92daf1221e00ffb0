"""libvirtd's libxl hook: the check where every domain really starts.

It runs as root inside libvirtd's hook calls, whoever defined the domain,
and refuses a start that is not restricted as its record and lease say.
"""
