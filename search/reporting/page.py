"""The report as one page: index.html renders the report's blocks (search.reporting.document: verdict, tables,
settings, commands) with templates, then every figure inline with its caption, all sharing one local
plotly.min.js, so it opens offline. Each figure also gets a page of its own, titled, with a link back.
Every piece of text is escaped where it enters a template; nothing is parsed from Markdown.
"""

from __future__ import annotations

import html
import re
from string import Template
from typing import Any

from search.reporting.document import Block, Bullets, CodeBlock, Heading, Paragraph, Table
from search.reporting.figures import FIGURES

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 96rem; margin: 2rem auto; padding: 0 1rem; color: #222;
       line-height: 1.45; }
.table { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
td.num { white-space: nowrap; text-align: right; }
th { background: #f3f3f3; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; }
figure { margin: 1.5rem 0 2.5rem; }
figcaption { color: #444; margin-top: 0.3rem; }
.plot { width: 100%; height: 520px; }
"""


DOCUMENT = Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>$title</title>
<script src="plotly.min.js"></script><style>$style</style></head>
<body>
$body
</body></html>
"""
)
FIGURE = Template(
    '<figure id="$name">$plot<figcaption><strong>$title.</strong> $caption '
    '<a href="$name.html">Open alone</a>.</figcaption></figure>'
)
FIGURE_PAGE = Template(
    '<p><a href="index.html">&larr; the report of study $study</a></p>'
    "<figure>$plot<figcaption>$caption</figcaption></figure>"
)
SPAN = {"plain": Template("$text"), "bold": Template("<strong>$text</strong>"), "code": Template("<code>$text</code>")}
TABLE = Template('<div class="table"><table><thead><tr>$head</tr></thead><tbody>$rows</tbody></table></div>')
NUMBER = re.compile(r"^[-+−]?\d")  # a cell that starts with a number: never wrapped (11.63 ± 0.40 stays whole)
# plotly's mode bar without what sends a chart elsewhere (its cloud "share"/"edit in Chart Studio") or
# links to the vendor: a report of medical data keeps every byte of it on this machine
PLOT_CONFIG = {
    "displaylogo": False,
    "showSendToCloud": False,
    "modeBarButtonsToRemove": ["sendDataToCloud"],
}


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _spans(p: Paragraph) -> str:
    return "".join(SPAN[s.style].substitute(text=_e(s.text)) for s in p.spans)


def _cell(text: Any) -> str:
    return f'<td class="num">{_e(text)}</td>' if NUMBER.match(str(text)) else f"<td>{_e(text)}</td>"


def block_html(b: Block) -> str:
    """One block of the report as HTML."""
    if isinstance(b, Heading):
        return f"<h{b.level}>{_e(b.text)}</h{b.level}>"
    if isinstance(b, Paragraph):
        return f"<p>{_spans(b)}</p>"
    if isinstance(b, Table):
        head = "".join(f"<th>{_e(c)}</th>" for c in b.header)
        rows = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in b.rows)
        return TABLE.substitute(head=head, rows=rows)
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{_spans(i)}</li>" for i in b.items) + "</ul>"
    assert isinstance(b, CodeBlock)
    return "<pre><code>" + _e("\n".join(b.lines)) + "</code></pre>"


def _document(title: str, body: str) -> str:
    return DOCUMENT.substitute(title=_e(title), style=STYLE, body=body)


def _plot_div(fig: Any) -> str:
    return fig.to_html(
        full_html=False, include_plotlyjs=False, default_width="100%", default_height="520px", config=PLOT_CONFIG
    )


def index_page(study_name: str, blocks: list[Block], figs: dict[str, Any], png_note: str) -> str:
    """The report: its blocks, then every figure with its caption."""
    parts = [block_html(b) for b in blocks] + ["<h2>Figures</h2>", f"<p>{_e(png_note)}</p>"]
    for name, fig in figs.items():
        title, caption = FIGURES[name]
        parts.append(FIGURE.substitute(name=name, plot=_plot_div(fig), title=_e(title), caption=_e(caption)))
    return _document(f"Study {study_name}: report", "\n".join(parts))


def figure_page(study_name: str, name: str, fig: Any) -> str:
    """One figure on a page of its own, with its caption and a link back to the report."""
    title, caption = FIGURES[name]
    body = FIGURE_PAGE.substitute(study=_e(study_name), plot=_plot_div(fig), caption=_e(caption))
    return _document(f"{title}: study {study_name}", body)
