"""The policy core: read a domain and decide, nothing else.

Every other part of the product builds on these modules: the orchestrator
side and libvirtd's hook to check and restrict a domain, the launcher to
check the command line libxl hands it.  They hold no state, start no
process, need no privilege and import neither oslo.config nor anything
of the other subpackages, so the same rules run unchanged as root in the
launcher and as the orchestrator's user in the hook.
"""
