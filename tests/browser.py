"""What a person sees on a report page, measured in headless Chromium: numbers wrapped in table cells,
text labels of a figure that overlap (the DOM's bounding boxes), mode-bar buttons that send a chart
elsewhere. A script is added to a copy of the page; it writes its findings into the DOM, which
Chromium dumps."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

CHECK = """
<script>
window.addEventListener("load", () => setTimeout(() => {
  const out = {width: window.innerWidth, wrapped: [], overlaps: [], cloud: [], figures: 0, texts: 0};
  for (const td of document.querySelectorAll("td")) {
    if (!/^[-+\\u2212]?\\d/.test(td.textContent.trim())) continue;
    const range = document.createRange();
    range.selectNodeContents(td);
    const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
    if (tops.size > 1) out.wrapped.push(td.textContent.trim());
  }
  for (const fig of document.querySelectorAll("figure")) {
    out.figures += 1;
    const boxes = [...fig.querySelectorAll("svg text")]
      .filter(t => t.textContent.trim() && getComputedStyle(t).visibility !== "hidden")
      .filter(t => getComputedStyle(t).opacity !== "0")
      .map(t => [t.textContent.trim(), t.getBoundingClientRect()])
      .filter(([, b]) => b.width > 0 && b.height > 0);
    out.texts += boxes.length;
    const bar = fig.querySelector(".modebar"), title = fig.querySelector(".gtitle");
    if (bar && title) {  // the mode bar's buttons sit over the title's end where both are wide
      const a = bar.getBoundingClientRect(), b = title.getBoundingClientRect();
      const dx = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const dy = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (dx > 1 && dy > 1) out.overlaps.push([fig.id, "mode bar", title.textContent.trim()]);
    }
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const [ta, a] = boxes[i], [tb, b] = boxes[j];
        const dx = Math.min(a.right, b.right) - Math.max(a.left, b.left);
        const dy = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
        if (dx > 1 && dy > 1) out.overlaps.push([fig.id, ta, tb]);
      }
    }
  }
  for (const b of document.querySelectorAll(".modebar-btn")) {
    const what = (b.getAttribute("data-title") || "") + " " + (b.getAttribute("href") || "");
    if (/cloud|share|studio|plotly|edit/i.test(what)) out.cloud.push(what.trim());
  }
  const pre = document.createElement("pre");
  pre.id = "page-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 4000));
</script>
"""


def check_page(page: Path, width: int, extra_args: tuple[str, ...] = ()) -> dict:
    """The findings for page at a window `width` px wide (a copy of the page carries the script)."""
    probe = page.absolute().with_name(f".check-{width}-{page.name}")
    probe.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    try:
        dom = subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={width},1000", *extra_args, "--virtual-time-budget=30000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=180,
        ).stdout  # fmt: skip
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'<pre id="page-check">(.*?)</pre>', dom, flags=re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))
