"""Self-contained HTML pages with embedded PNGs: what the benchmark report and the demo report
share (the style sheet, PNG data URIs, matplotlib figures, display images, tables, image
panels, the page).

Leaf module: numpy, PIL and matplotlib only.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1400px}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0 16px 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}
tr.failed td{background:#fde8e8}td.best{font-weight:bold;background:#e6f6e6}
.err{color:#b00;font-family:monospace;font-size:0.85em;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:12px}
.panel{text-align:center;font-size:0.8em}.panel img{width:300px;image-rendering:pixelated;
border:1px solid #999}
pre{background:#f7f7f7;padding:8px;font-size:0.8em;overflow:auto;max-height:300px}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;
vertical-align:middle}
.muted{color:#777}
"""


# ---- images -------------------------------------------------------------------------------------
def png_uri(data: bytes) -> str:
    """PNG bytes -> ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def png_base64(rgb: np.ndarray) -> str:
    """uint8 H x W (x 3) array -> ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return png_uri(buf.getvalue())


def display_image(image: np.ndarray) -> np.ndarray:
    """H x W (x C) image of any dtype -> uint8 RGB for display (the first three channels
    averaged, then stretched from the 1st to the 99.8th percentile)."""
    x = np.asarray(image).astype(np.float32)
    if x.ndim == 3:
        x = x[..., : 3 if x.shape[-1] >= 3 else x.shape[-1]].mean(axis=-1)
    lo, hi = np.percentile(x, (1, 99.8))
    x = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
    g = np.rint(x * 255).astype(np.uint8)
    return np.stack([g, g, g], axis=-1)


# ---- figures ------------------------------------------------------------------------------------
def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_uri(fig) -> str:
    """Render a matplotlib figure to a PNG data URI and close it."""
    plt = pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return png_uri(buf.getvalue())


# ---- html ---------------------------------------------------------------------------------------
def escape(x) -> str:
    return html.escape(str(x))


def number(x, digits=3) -> str:
    """A table cell's number: ints as they are, floats with ``digits`` decimals, "–" for None
    and NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def html_table(header, rows, left=1, best_cols=(), row_class=None, left_cols=()) -> str:
    """HTML table; the best (max) value of each column index in ``best_cols`` is highlighted.
    The first ``left`` columns and those with an index in ``left_cols`` are left-aligned."""
    best = {}
    for c in best_cols:
        vals = [r[c] for r in rows if isinstance(r[c], (int, float)) and r[c] == r[c]]
        if vals:
            best[c] = max(vals)
    out = ["<table><tr>"]
    out += [
        f"<th class='l'>{escape(h)}</th>" if i < left or i in left_cols else f"<th>{escape(h)}</th>"
        for i, h in enumerate(header)
    ]
    out.append("</tr>")
    for k, r in enumerate(rows):
        cls = f" class='{row_class[k]}'" if row_class and row_class[k] else ""
        out.append(f"<tr{cls}>")
        for i, v in enumerate(r):
            classes = []
            if i < left or i in left_cols:
                classes.append("l")
            if i in best and isinstance(v, (int, float)) and v == best[i] and len(rows) > 1:
                classes.append("best")
            c = f" class='{' '.join(classes)}'" if classes else ""
            text = number(v) if isinstance(v, float) or v is None else escape(v)
            out.append(f"<td{c}>{text}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def panel_grid(panels) -> str:
    """Image panels side by side: ``panels`` is [(caption, data URI), ...]."""
    return (
        "<div class='grid'>"
        + "".join(
            f"<div class='panel'><img alt='{escape(cap)}' src='{uri}'><br>{escape(cap)}</div>"
            for cap, uri in panels
        )
        + "</div>"
    )


def html_page(title: str, body: str) -> str:
    """A whole self-contained page (the style sheet inline, no scripts, no links out)."""
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
        f"</title><style>{CSS}</style></head><body>{body}</body></html>"
    )
