"""The report as data: blocks (headings, paragraphs, tables, lists, a code block) built once from a
study's results, then written two ways, as Markdown (summary.md, the dashboard note) here and as HTML
(index.html) by search.reporting.page. No text is parsed back: a paragraph holds its bold and code spans as
parts, so each renderer marks them up (and the HTML one escapes them) on its own terms.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A run of text: plain, bold or code."""

    text: str
    style: str = "plain"  # plain | bold | code


def bold(text: str) -> Span:
    return Span(text, "bold")


def code(text: str) -> Span:
    return Span(text, "code")


@dataclass(frozen=True)
class Paragraph:
    spans: tuple[Span, ...]


def para(*parts: str | Span) -> Paragraph:
    """A paragraph from plain strings and spans, in order."""
    return Paragraph(tuple(p if isinstance(p, Span) else Span(p) for p in parts))


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def table(header: list[str], rows: list[list[str]]) -> Table:
    return Table(tuple(header), tuple(tuple(r) for r in rows))


@dataclass(frozen=True)
class Bullets:
    items: tuple[Paragraph, ...]


def bullets(*items: Paragraph | str) -> Bullets:
    return Bullets(tuple(i if isinstance(i, Paragraph) else para(i) for i in items))


@dataclass(frozen=True)
class CodeBlock:
    lines: tuple[str, ...]


Block = Heading | Paragraph | Table | Bullets | CodeBlock


def _md_spans(p: Paragraph) -> str:
    marks = {"plain": "{}", "bold": "**{}**", "code": "`{}`"}
    return "".join(marks[s.style].format(s.text) for s in p.spans)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: list[Block]) -> list[str]:
    """The blocks as Markdown lines, a blank line after each block."""
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Paragraph):
            lines.append(_md_spans(b))
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(_md_cell(c) for c in b.header) + " |")
            lines.append("|" + "---|" * len(b.header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        elif isinstance(b, Bullets):
            lines += [f"- {_md_spans(i)}" for i in b.items]
        else:
            lines += ["```", *b.lines, "```"]
        lines.append("")
    return lines


def plural(n: int, word: str) -> str:
    """'1 seed', '3 seeds': a count and its noun, never 'seed(s)' or '1 epochs'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
