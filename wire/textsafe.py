"""Operator-visible text shown as text: reasons, NACK errors and node names come from operators,
agents and centers, and must reach a terminal, a report or a log exactly as written (B15).

- `printable(s)`: control characters (newlines, ESC of an ANSI sequence, C1 controls, bidi and
  line separators) as repr-style escapes (`\\n`, `\\x1b`); everything else unchanged. A newline
  cannot forge a second log line or table row, an ANSI escape cannot recolour or hide a terminal.
- `markdown_literal(s)`: `printable` plus escapes for Markdown and HTML, for drill reports.
- `LiteralFormatter` / `configure_logging`: the log format of every process, with each message
  passed through `printable` (tracebacks keep their lines: they are ours, not a client's).

Rich markup is the CLI's own business: it wraps these strings in `rich.text.Text`, never in
markup. Must not: drop or shorten anything (an audit reason shown must be the one stored).
"""

from __future__ import annotations

import logging
import re
from typing import IO

# Markdown's punctuation that opens a construct mid-line (emphasis, links, images, code, table
# cells, HTML, entities, strikethrough); a backslash before ASCII punctuation is a literal in
# CommonMark. Line-start constructs (headings, lists) cannot occur: a value never starts a line.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~])")


def _escape_char(ch: str) -> str:
    return repr(ch)[1:-1]


def printable(s: str) -> str:
    """`s` with every non-printable character as its repr-style escape."""
    if s.isprintable():  # the usual reason: no copy
        return s
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in s)


def markdown_literal(s: str) -> str:
    """`s` as literal text in Markdown (and the HTML it renders to), on one line."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", printable(s))


class LiteralFormatter(logging.Formatter):
    """Formats the message with its arguments, then escapes control characters in it."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        saved = record.message
        record.message = printable(saved)
        try:
            return super().formatMessage(record)
        finally:
            record.message = saved


def configure_logging(level: int | str, fmt: str, stream: IO[str] | None = None) -> None:
    """logging.basicConfig with LiteralFormatter on the root handlers."""
    logging.basicConfig(level=level, format=fmt, stream=stream)
    for h in logging.getLogger().handlers:
        h.setFormatter(LiteralFormatter(fmt))
