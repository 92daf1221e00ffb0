# Sphinx configuration of the xen-dm-restrict documentation.
#
# Built by `tox -e docs` (sphinx-build -W: every warning is an error).
# The option reference and the plugin list are generated from the
# installed package, so the docs env installs it.

import os
import sys

# cli_help: the ``program-help`` directive of the command reference;
# vocabulary_table: the ``vocabulary-table`` directive (core.vocabulary).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '_ext'))

# -- General configuration -------------------------------------------------

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.viewcode',
    'oslo_config.sphinxext',
    'stevedore.sphinxext',
    'cli_help',
    'vocabulary_table',
]

project = 'xen-dm-restrict'
copyright = 'xen-dm-restrict developers'

master_doc = 'index'
source_suffix = '.rst'
exclude_patterns = ['_build']
pygments_style = 'native'
add_module_names = False
autodoc_member_order = 'bysource'

# -- HTML output -------------------------------------------------------------

# alabaster ships with Sphinx and pulls nothing from the network.
html_theme = 'alabaster'
html_theme_options = {
    'description': 'Deprivileged Xen device models for tenant VMs',
    'show_relbars': True,
}
html_sidebars = {
    '**': ['about.html', 'navigation.html', 'relations.html',
           'searchbox.html'],
}
html_static_path = []
