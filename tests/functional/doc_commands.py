"""The commands the documentation shows, read out of its reStructuredText.

A command is a line of a literal block that starts with a prompt (``# ``
for root, ``$ `` for a user), with its ``\\`` continuation lines and its
here-document, if any.  The lines after it up to the next prompt are what
the documentation says it prints.
"""

import dataclasses
import re
import shlex
import typing

_PROMPT = re.compile(r'^([#$]) (.*)$')
_HEREDOC = re.compile(r"<<-?\s*'?([A-Za-z_]+)'?")


@dataclasses.dataclass
class Command:
    """One documented command.

    :param page: the page it is on.
    :param line: the line of the page its prompt is on.
    :param text: the shell text, continuation lines and here-document
        included.
    :param output: the lines the page shows after it.
    """

    page: str
    line: int
    text: str
    output: typing.List[str] = dataclasses.field(default_factory=list)

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0]


def _literal_blocks(lines):
    """(line number, dedented lines) of each literal block."""
    index = 0
    while index < len(lines):
        line = lines[index]
        opens = (line.rstrip().endswith('::')
                 and not line.lstrip().startswith('.. ')) or re.match(
            r'^\s*\.\. code-block::\s*(text|console|shell|bash|sh)\s*$',
            line)
        index += 1
        if not opens:
            continue
        indent_of = len(line) - len(line.lstrip())
        while index < len(lines) and not lines[index].strip():
            index += 1
        start = index
        block = []
        while index < len(lines):
            current = lines[index]
            if current.strip() and (len(current) - len(current.lstrip())
                                    <= indent_of):
                break
            block.append(current)
            index += 1
        while block and not block[-1].strip():
            block.pop()
        if not block:
            continue
        cut = min(len(b) - len(b.lstrip()) for b in block if b.strip())
        yield start + 1, [b[cut:] for b in block]


def _open_quote(parts) -> bool:
    """Whether the shell would still be inside a quoted string."""
    try:
        shlex.split('\n'.join(parts).split("<<", 1)[0])
    except ValueError:
        return True
    return False


def commands(page: str, text: str) -> typing.List[Command]:
    """Every documented command of a page, in order."""
    found: typing.List[Command] = []
    for first, block in _literal_blocks(text.splitlines()):
        index = 0
        current = None
        while index < len(block):
            match = _PROMPT.match(block[index])
            if not match:
                if current is not None:
                    current.output.append(block[index])
                index += 1
                continue
            parts = [match.group(2)]
            line = first + index
            index += 1
            while index < len(block) and (parts[-1].endswith('\\')
                                          or _open_quote(parts)):
                parts.append(block[index].strip())
                index += 1
            heredoc = _HEREDOC.search(parts[0])
            if heredoc:
                while index < len(block):
                    parts.append(block[index])
                    index += 1
                    if parts[-1].strip() == heredoc.group(1):
                        break
            current = Command(page, line, '\n'.join(parts))
            found.append(current)
    return found


_NUMBER = re.compile(r'[0-9]+(\.[0-9]+)?')


def normalise(lines: typing.Iterable[str],
              replace: typing.Mapping[str, str] = ()) -> typing.List[str]:
    """Lines as compared: whitespace collapsed, numbers (uids, times,
    versions) made one token, local paths named as in the docs.
    """
    out = []
    for line in lines:
        for old, new in dict(replace).items():
            line = line.replace(old, new)
        line = ' '.join(_NUMBER.sub('N', line).split())
        if line:
            out.append(line)
    return out
