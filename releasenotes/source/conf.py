# Sphinx configuration of the xen-dm-restrict release notes.
#
# Built by `tox -e releasenotes`; reno collects the notes in
# releasenotes/notes/ from the git history.

extensions = [
    'reno.sphinxext',
]

project = 'xen-dm-restrict Release Notes'
copyright = 'xen-dm-restrict developers'

master_doc = 'index'
source_suffix = '.rst'
exclude_patterns = ['_build']
pygments_style = 'native'

html_theme = 'alabaster'
html_static_path = []
