"""``.. vocabulary-table::``: the domain vocabulary, from the code.

Renders :data:`xen_dm_restrict_plugin.core.vocabulary.ROWS` while the
documentation builds, so the table the operator reads is the one the
product enforces.
"""

from docutils import nodes
from docutils.parsers.rst import Directive


def _cell(text: str) -> nodes.entry:
    entry = nodes.entry()
    entry += nodes.paragraph(text=text)
    return entry


def _literal_cell(text: str) -> nodes.entry:
    entry = nodes.entry()
    para = nodes.paragraph()
    if text:
        para += nodes.literal(text=text)
    entry += para
    return entry


class VocabularyTable(Directive):
    has_content = False

    def run(self):
        from xen_dm_restrict_plugin.core import vocabulary
        headers = ('Element', 'Attributes', 'Verdict',
                   'What libvirt (libxl driver) and libxl do',
                   'libvirt function')
        table = nodes.table()
        group = nodes.tgroup(cols=len(headers))
        table += group
        for width in (22, 18, 9, 38, 18):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        row = nodes.row()
        for title in headers:
            row += _cell(title)
        head += row
        body = nodes.tbody()
        group += body
        for item in vocabulary.ROWS:
            row = nodes.row()
            row += _literal_cell('<%s>' % (item.path or 'domain'))
            row += _cell(' '.join(sorted(item.attrs)))
            row += _cell(item.verdict.value)
            what = item.libvirt
            if item.reason:
                what += '. Refused: %s; remedy: %s.' % (item.reason,
                                                       item.remedy)
            row += _cell(what)
            row += _cell(item.function)
            body += row
        return [table]


def setup(app):
    app.add_directive('vocabulary-table', VocabularyTable)
    return {'parallel_read_safe': True}
