"""Self-contained HTML pages: inline PNG figures and wav clips (base64), tables, a page skeleton.

Shared by `explore` (what is in a dataset) and the run report (what a run did). Pages need no network and
no files beside them: every image and clip is a `data:` URI. A `MediaBudget` keeps pages to a few MB.
"""

from __future__ import annotations

import base64
import html
import io
import wave
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from asd.folders import atomic_file

DPI = 80


def esc(value: object) -> str:
    """HTML-escaped text of any value."""
    return html.escape(str(value), quote=True)


def slug(text: str) -> str:
    """An id-safe version of `text` (letters, digits and dashes)."""
    out = "".join(c if c.isalnum() else "-" for c in str(text).lower())
    return "-".join(part for part in out.split("-") if part) or "x"


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a matplotlib figure drawn on the Agg canvas (no pyplot, no display)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def figure_jpeg(fig: Figure, quality: int = 80) -> bytes:
    """JPEG bytes of a figure: spectrograms are noise-like images that PNG compresses poorly."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="jpeg", dpi=DPI, pil_kwargs={"quality": quality})
    return buffer.getvalue()


def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """A 16-bit mono wav file in memory."""
    samples = np.asarray(samples, dtype=np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(rate))
        out.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


class MediaBudget:
    """Counts the bytes embedded in a page. Images are always embedded (they are small); audio stops
    being embedded once the page holds `audio_share` of `max_bytes`, leaving room for the figures that
    come after it."""

    def __init__(self, max_bytes: int, audio_share: float = 0.75) -> None:
        self.max_bytes = int(max_bytes)
        self.audio_limit = int(max_bytes * audio_share)
        self.used = 0
        self.refused = 0

    def img(self, payload: bytes, alt: str, css: str = "", mime: str = "image/png") -> str:
        """An <img> tag with the image inline (images are always embedded; they are small)."""
        self.used += len(payload) * 4 // 3
        klass = f' class="{css}"' if css else ""
        return f'<img{klass} alt="{esc(alt)}" src="{data_uri(payload, mime)}">'

    def figure(self, fig: Figure, alt: str, css: str = "") -> str:
        """A line plot or histogram, as PNG."""
        return self.img(figure_png(fig), alt, css)

    def picture(self, fig: Figure, alt: str, css: str = "") -> str:
        """An image-like figure (a spectrogram), as JPEG."""
        return self.img(figure_jpeg(fig), alt, css, mime="image/jpeg")

    def file_img(self, path: Path, alt: str, css: str = "") -> str:
        """An existing PNG file inline, or a note saying it is missing."""
        path = Path(path)
        if not path.is_file():
            return f'<p class="note">{esc(path.name)} was not written for this machine type.</p>'
        return self.img(path.read_bytes(), alt, css)

    def audio(self, samples: np.ndarray, rate: int, seconds: float) -> str:
        """An <audio> player of the first `seconds` of a clip, or a note when the budget is spent."""
        clip = np.asarray(samples)[: int(round(seconds * rate))]
        payload = wav_bytes(clip, rate)
        size = len(payload) * 4 // 3
        if self.used + size > self.audio_limit:
            self.refused += 1
            return '<span class="note">(audio left out: page size budget reached)</span>'
        self.used += size
        return (f'<audio controls preload="none" title="first {len(clip) / rate:.1f} s">'
                f'<source type="audio/wav" src="{data_uri(payload, "audio/wav")}"></audio>')


def spectrogram_figure(logmel: np.ndarray, rate: int, hop_length: int, title: str) -> Figure:
    """A small log-mel spectrogram image (mel bins up, time in seconds across)."""
    fig = Figure(figsize=(4.2, 1.9))
    ax = fig.add_subplot()
    seconds = logmel.shape[1] * hop_length / rate
    ax.imshow(logmel, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, logmel.shape[0]))
    ax.set_title(title, fontsize=7)
    ax.set_xlabel("s", fontsize=7)
    ax.set_ylabel("mel bin", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.tight_layout(pad=0.3)
    return fig


def fmt_cell(value: object, digits: int = 4, na: str = "n/a") -> str:
    if isinstance(value, (float, np.floating)):
        return na if not np.isfinite(value) else f"{float(value):.{digits}f}"
    return str(value)


def table(frame: pd.DataFrame, table_id: str = "", digits: int = 4, index: bool = False,
          highlight: Sequence[int] | None = None, na: str = "n/a") -> str:
    """A plain HTML table. Numeric cells carry their exact value in `data-value` (repr of the double),
    so a page can be read back and checked against the CSV it was made from."""
    if index:
        frame = frame.reset_index()
    head = "".join(f"<th>{esc(c if not isinstance(c, tuple) else ' / '.join(str(x) for x in c if str(x)))}</th>"
                   for c in frame.columns)
    rows = []
    for position, row in enumerate(frame.itertuples(index=False)):
        cells = []
        for value in row:
            if isinstance(value, (float, np.floating, int, np.integer)) and not isinstance(value, bool):
                cells.append(f'<td class="num" data-value="{float(value)!r}">{esc(fmt_cell(value, digits, na))}</td>')
            else:
                cells.append(f"<td>{esc('' if value is None else value)}</td>")
        klass = ' class="hl"' if highlight is not None and position in highlight else ""
        rows.append(f"<tr{klass}>{''.join(cells)}</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return (f'<div class="scroll"><table class="data"{ident}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1250px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:2px solid #ddd;margin-top:2em}h3{margin-top:1.4em}
table.data{border-collapse:collapse;font-size:.85em;margin:.5em 0}
table.data th,table.data td{border:1px solid #ccc;padding:2px 6px}
table.data th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.hl td{background:#fff4cc}.scroll{overflow-x:auto}.note{color:#777;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;padding:6px;font-size:.8em}
.card img{display:block}img.plot{width:400px;height:auto}nav{font-size:.9em;columns:3}code{background:#f5f5f5}
"""


def page(title: str, intro: str, sections: Iterable[tuple[str, str]]) -> str:
    """A whole HTML document: title, an introduction, a table of contents and the (heading, body) sections."""
    sections = list(sections)
    nav = "".join(f'<li><a href="#s-{slug(h)}">{esc(h)}</a></li>' for h, _ in sections)
    body = "".join(f'<h2 id="s-{slug(h)}">{esc(h)}</h2>\n{content}\n' for h, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body><h1>{esc(title)}</h1>{intro}<nav><ul>{nav}</ul></nav>\n"
            f"{body}</body></html>\n")


def write_page(path: Path, text: str) -> Path:
    """Write a page atomically (a reader never sees half a page; a write that fails, e.g. at a file size
    limit, leaves nothing and raises BadState naming the page)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
