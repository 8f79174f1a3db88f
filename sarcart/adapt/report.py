"""Self-contained HTML reports (figures embedded as base64 PNG and also saved as files).

A :class:`Report` collects sections of text, tables and figures and writes ``report.html`` plus
``figures/<name>.png``. Every page carries the "not for clinical use" label.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import sarcart
from sarcart.io.atomic import atomic_write_text

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#7a0000;color:#fff;padding:10px 18px;font-weight:600}
main{padding:8px 18px 40px}
h2{border-bottom:2px solid #ddd;padding-bottom:3px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#eee}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ccc;margin:6px 0;background:#000}
.flag{color:#b35c00;font-weight:600}
.ok{color:#137333}
.bad{color:#b00020;font-weight:600}
.note{color:#555;font-size:13px}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # NaN
            return "–"
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return html.escape(str(v))


@dataclass
class Report:
    """An HTML report under construction."""

    title: str
    out_dir: Path
    parts: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, *, css: str = "") -> None:
        cls = f' class="{css}"' if css else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def html(self, fragment: str) -> None:
        """Raw HTML (caller escapes)."""
        self.parts.append(fragment)

    def table(self, rows: Sequence[Mapping[str, Any]], *, columns: Sequence[str] | None = None) -> None:
        if not rows:
            self.text("(none)", css="note")
            return
        cols = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def figure(self, name: str, png: bytes, *, caption: str = "") -> None:
        """Embed a PNG and save it as ``figures/<name>.png``."""
        fig_dir = self.out_dir / "figures"
        fig_dir.mkdir(parents=True, exist_ok=True)
        (fig_dir / f"{name}.png").write_bytes(png)
        self.figures.append(name)
        data = base64.b64encode(png).decode("ascii")
        cap = f"<div class='note'>{html.escape(caption)}</div>" if caption else ""
        self.parts.append(f"<figure><img id='fig-{html.escape(name)}' alt='{html.escape(name)}' "
                          f"src='data:image/png;base64,{data}'>{cap}</figure>")

    def write(self, filename: str = "report.html") -> Path:
        notice = html.escape(sarcart.NOT_FOR_CLINICAL_USE)
        page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body><header>{notice} — {html.escape(self.title)}</header><main>"
                + "\n".join(self.parts) + f"<p class='note'>sarcart {sarcart.__version__}. {notice}.</p></main></body></html>")
        return atomic_write_text(self.out_dir / filename, page)


def flags_html(flags: Sequence[str]) -> str:
    """Inline HTML of a list of QA flags."""
    if not flags:
        return "<span class='ok'>no flags</span>"
    return "<span class='flag'>" + html.escape("; ".join(flags)) + "</span>"
