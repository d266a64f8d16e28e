"""The report as one page: index.html holds summary.md's content (verdict, tables, settings, commands)
as HTML and then every figure inline with its caption, all sharing one local plotly.min.js, so it opens
offline. Each figure also gets a page of its own, titled, with a link back.

The Markdown here is the small subset summary.md uses (headings, paragraphs, tables, bullets, one code
block, bold, inline code, links), converted by hand: no Markdown package, and nothing unescaped.
"""

from __future__ import annotations

import html
import re
from typing import Any

from search.figures import FIGURES

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222;
       line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; }
figure { margin: 1.5rem 0 2.5rem; }
figcaption { color: #444; margin-top: 0.3rem; }
.plot { width: 100%; height: 520px; }
"""


def _inline(text: str) -> str:
    """Escape, then bold, inline code and links, the only inline Markdown summary.md writes."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', out)


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    head, body = cells[0], [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
    th = "".join(f"<th>{_inline(c)}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def markdown_html(lines: list[str]) -> str:
    """summary.md's lines as HTML, block by block."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1 : end])) + "</code></pre>")
            i = end + 1
            continue
        block = [line]
        kind = "table" if line.startswith("|") else "list" if line.startswith("- ") else "text"
        while i + 1 < len(lines) and lines[i + 1].strip() and kind != "text" and lines[i + 1][:1] == line[:1]:
            i += 1
            block.append(lines[i])
        if heading := re.match(r"(#+) (.*)", line):
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif kind == "table":
            out.append(_table(block))
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(b[2:])}</li>" for b in block) + "</ul>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def _document(title: str, body: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<script src="plotly.min.js"></script><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n'
    )


def _plot_div(fig: Any) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, default_width="100%", default_height="520px")


def index_page(study_name: str, summary_lines: list[str], figs: dict[str, Any], png_note: str) -> str:
    """The report: the summary's sections, then every figure with its caption."""
    parts = [markdown_html(summary_lines), "<h2>Figures</h2>", f"<p>{_inline(png_note)}</p>"]
    for name, fig in figs.items():
        title, caption = FIGURES[name]
        parts.append(
            f'<figure id="{name}">{_plot_div(fig)}<figcaption><strong>{html.escape(title)}.</strong> '
            f'{html.escape(caption)} <a href="{name}.html">Open alone</a>.</figcaption></figure>'
        )
    return _document(f"Study {study_name}: report", "\n".join(parts))


def figure_page(study_name: str, name: str, fig: Any) -> str:
    """One figure on a page of its own, with its caption and a link back to the report."""
    title, caption = FIGURES[name]
    body = (
        f'<p><a href="index.html">&larr; the report of study {html.escape(study_name)}</a></p>'
        f"<figure>{_plot_div(fig)}<figcaption>{html.escape(caption)}</figcaption></figure>"
    )
    return _document(f"{title}: study {study_name}", body)
