"""HTML and PNG helpers shared by every report: figures, PNG bytes, data-URI images, tables, CSS, number formatting."""
from __future__ import annotations

import base64
import html
import io
import json
import math

# Base look of every HTML page (compare, sweep, run report); a page may append its own rules.
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.45}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f6f8fa}.best{color:#1a7f37;font-weight:600}
.meta{color:#57606a}img{max-width:100%}code{background:#f6f8fa;padding:.1em .3em;border-radius:3px}
"""


def is_number(x) -> bool:
    """An int or float that is not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def esc(text) -> str:
    """HTML-escaped ``str(text)`` (quotes too, so it is safe inside attributes)."""
    return html.escape(str(text), quote=True)


def fmt(v) -> str:
    """A value for a table cell: 4 significant digits, thousands separators, yes/no, JSON for lists."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e3 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def html_table(header: list[str], rows: list[list], best: list[int | None] | None = None, *,
               attrs: str = "") -> str:
    """``<table>`` with a header row; string cells are shown as they are, other values through `fmt`.
    ``best[i]`` marks the value column (0 = the first after the row label) of row ``i`` as the best."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            cls = ' class="best"' if best and best[i] is not None and j == best[i] + 1 else ""
            cells.append(f"<td{cls}>{esc(v if isinstance(v, str) else fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_page(title: str, parts: list[str], css: str = CSS) -> str:
    """A self-contained HTML document: ``parts`` joined by newlines inside ``<body>``."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{css}</style></head><body>" + "\n".join(parts) + "\n</body></html>")


def img_tag(png: bytes | None, alt: str) -> str:
    """``<img>`` with the PNG inlined as a data URI; "" without a PNG."""
    if not png:
        return ""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def figure(w: float = 7.0, h: float = 3.6):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    """The figure laid out tightly, as PNG bytes without the Software metadata (reproducible)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


__all__ = ["CSS", "esc", "figure", "fmt", "html_page", "html_table", "img_tag", "is_number", "png_bytes"]
