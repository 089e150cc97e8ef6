"""Pictures of entropy patching (paper Figure 4 style) and of evaluation reports.

Pure host-side code (numpy + matplotlib, Agg backend); nothing here runs a model.  The data to draw
comes from ``bltjax.entropy_tools.patch_plot_data`` (entropies, scores, boundaries) and
``bltjax.eval`` (per-file rows).

Byte labels.  Every token position gets a short label for the x axis: a UTF-8 character is written
at its *first* byte (its continuation bytes get an empty label), spaces / newlines / tabs become
visible symbols, control bytes and bytes that are not part of valid UTF-8 become hex escapes
(``\\xC3``), combining marks are drawn on a dotted circle, and characters that no installed font
can draw become ``U+XXXX``.  Fonts: DejaVu Sans (shipped with matplotlib) first, then any installed
wide-coverage fonts (Noto, WenQuanYi, Droid Sans Fallback, ...) as matplotlib fallbacks.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import pathlib
import re
import unicodedata
from collections.abc import Sequence
from typing import Optional

import numpy as np

from bltjax.tokenizer import BOE_ID, BOS_ID, BPE_ID, EOS_ID, OFFSET

SPECIAL_LABELS = {BOE_ID: "PAD", BOS_ID: "BOS", EOS_ID: "EOS", BPE_ID: "BPE"}
_WHITESPACE_SYMBOLS = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
# Installed font families tried after DejaVu Sans, in order (regex on the family name).
_FALLBACK_FONT_PATTERNS = (r"^Noto Sans$", r"^Noto Sans CJK", r"^Noto Sans [A-Z]", r"^Noto Serif CJK",
                           r"^WenQuanYi", r"^Droid Sans Fallback$", r"^Arial Unicode", r"^Unifont",
                           r"^Code2000$", r"^FreeSans$", r"^Symbola$")

# Figure geometry (inches): one column per token position plus fixed margins.
INCH_PER_POSITION = 0.16
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_BOTTOM, MARGIN_TOP = 0.85, 0.25, 0.7, 0.5
MIN_WIDTH_IN = 4.0
FIG_HEIGHT_IN = 3.4


@dataclasses.dataclass(frozen=True)
class PatchPlotData:
    """Everything a patching figure shows; returned by ``bltjax.entropy_tools.patch_plot_data``.

    ``entropies[i]`` is the entropy model's H_i (natural log, uncertainty about token i+1).
    ``scores[j]`` is the number the patcher compares with ``threshold`` to decide whether position
    ``j`` starts a patch: ``H_{j-1}`` (global mode) or ``H_{j-1} - H_{j-2}`` (monotonic mode); NaN
    where no comparison is made (positions that always start).  ``boundaries`` are the patch start
    positions (always including 0), ``patch_lengths`` the patcher's lengths (sum = number of tokens).
    """

    tokens: np.ndarray  # int32 [N]
    labels: tuple[str, ...]  # [N]
    entropies: np.ndarray  # float32 [N]
    scores: np.ndarray  # float32 [N]
    threshold: float
    mode: str  # "global" | "monotonic"
    patch_lengths: np.ndarray  # int32 [P]
    boundaries: np.ndarray  # int32 [P]

    @property
    def n_positions(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def patch_ids(self) -> np.ndarray:
        """Patch index of every position, int32 [N]."""
        return np.repeat(np.arange(len(self.patch_lengths), dtype=np.int32), self.patch_lengths)


# ----------------------------------------------------------------------------- labels


@functools.lru_cache(maxsize=1)
def font_families() -> tuple[str, ...]:
    """Installed font families for labels: DejaVu Sans, then wide-coverage fallbacks if present."""
    from matplotlib import font_manager

    installed = sorted({f.name for f in font_manager.fontManager.ttflist})
    out = ["DejaVu Sans"]
    for pattern in _FALLBACK_FONT_PATTERNS:
        out += [name for name in installed if re.search(pattern, name) and name not in out]
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _covered_codepoints() -> frozenset[int]:
    """Code points with a glyph in at least one of ``font_families()``."""
    from matplotlib import font_manager, ft2font

    covered: set[int] = set()
    for family in font_families():
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=family),
                                         fallback_to_default=False)
            covered.update(ft2font.FT2Font(path).get_charmap())
        except Exception:  # a broken / unreadable font file: skip it
            continue
    return frozenset(covered)


def glyph_available(ch: str) -> bool:
    """True if some installed label font can draw every code point of ``ch``."""
    covered = _covered_codepoints()
    return all(ord(c) in covered for c in ch)


def _utf8_width(lead: int) -> int:
    """Bytes of the UTF-8 sequence a lead byte announces (0: not a valid lead byte)."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def split_utf8(data: bytes) -> list[tuple[int, int, Optional[str]]]:
    """Cut bytes into ``(start, length, char)`` units: valid UTF-8 characters (``char`` set) or
    single bytes that are not part of a valid character (``char`` None)."""
    units, i = [], 0
    while i < len(data):
        width = _utf8_width(data[i])
        if width:
            try:
                ch = data[i:i + width].decode("utf-8")
                units.append((i, width, ch))
                i += width
                continue
            except UnicodeDecodeError:
                pass
        units.append((i, 1, None))
        i += 1
    return units


def char_label(ch: str, check_font: bool = True) -> str:
    """Display form of one character (see module doc)."""
    if ch in _WHITESPACE_SYMBOLS:
        return _WHITESPACE_SYMBOLS[ch]
    cat = unicodedata.category(ch)
    if cat == "Cc":
        return f"\\x{ord(ch):02X}" if ord(ch) < 0x100 else f"U+{ord(ch):04X}"
    if cat in ("Cf", "Zl", "Zp", "Zs", "Co", "Cn"):  # invisible or unassigned
        return f"U+{ord(ch):04X}"
    label = "\u25cc" + ch if cat in ("Mn", "Mc", "Me") else ch
    if check_font and not glyph_available(label):
        return f"U+{ord(ch):04X}"
    return label


def byte_labels(data: bytes, check_font: bool = True) -> list[str]:
    """One label per byte: characters at their first byte, "" for continuation bytes, ``\\xNN`` for
    bytes that do not belong to valid UTF-8."""
    labels = [""] * len(data)
    for start, _, ch in split_utf8(data):
        labels[start] = f"\\x{data[start]:02X}" if ch is None else char_label(ch, check_font)
    return labels


def token_labels(tokens: Sequence[int], check_font: bool = True) -> list[str]:
    """One label per token: specials by name (BOS, EOS, PAD, BPE), byte runs via ``byte_labels``."""
    tokens = [int(t) for t in tokens]
    labels: list[str] = [""] * len(tokens)
    i = 0
    while i < len(tokens):
        if tokens[i] < OFFSET:
            labels[i] = SPECIAL_LABELS.get(tokens[i], f"<{tokens[i]}>")
            i += 1
            continue
        j = i
        while j < len(tokens) and tokens[j] >= OFFSET:
            j += 1
        labels[i:j] = byte_labels(bytes(t - OFFSET for t in tokens[i:j]), check_font)
        i = j
    return labels


# ----------------------------------------------------------------------------- patching figure


def figure_size_px(n_positions: int, dpi: int = 100) -> tuple[int, int]:
    """Pixel size ``(width, height)`` of the patching figure for ``n_positions`` tokens."""
    width_in = max(MIN_WIDTH_IN, MARGIN_LEFT + MARGIN_RIGHT + INCH_PER_POSITION * n_positions)
    return int(round(width_in * dpi)), int(round(FIG_HEIGHT_IN * dpi))


_PATCH_COLORS = ("#4C72B0", "#DD8452")


def plot_patches(data: PatchPlotData, out_path: Optional[str | pathlib.Path] = None, *,
                 title: Optional[str] = None, dpi: int = 100):
    """Draw ``data`` like the paper's Figure 4 and return the matplotlib ``Figure``.

    Bars: ``scores`` (the value compared with the threshold), coloured alternately per patch; dashed
    red line: the threshold; dotted vertical lines: patch boundaries (before each start position > 0);
    x tick labels: the characters.  In monotonic mode a grey line also shows the entropy itself.
    The PNG written to ``out_path`` has exactly ``figure_size_px(n, dpi)`` pixels.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    n = data.n_positions
    w_px, h_px = figure_size_px(n, dpi)
    fig = Figure(figsize=(w_px / dpi, h_px / dpi), dpi=dpi)
    w_in, h_in = w_px / dpi, h_px / dpi
    ax = fig.add_axes((MARGIN_LEFT / w_in, MARGIN_BOTTOM / h_in,
                       1 - (MARGIN_LEFT + MARGIN_RIGHT) / w_in, 1 - (MARGIN_BOTTOM + MARGIN_TOP) / h_in))
    x = np.arange(n)
    heights = np.nan_to_num(np.asarray(data.scores, np.float64), nan=0.0)
    colors = [_PATCH_COLORS[p % 2] for p in data.patch_ids[:n]]
    ax.bar(x, heights, width=0.8, color=colors, zorder=2)
    if data.mode == "monotonic":
        ax.plot(x[1:], np.asarray(data.entropies, np.float64)[:-1], color="0.45", lw=1.0,
                marker=".", ms=3, zorder=3, label="entropy H (nats)")
        ax.axhline(0.0, color="0.3", lw=0.6)
    ax.axhline(data.threshold, color="#C44E52", ls="--", lw=1.2, zorder=4,
               label=f"threshold {data.threshold:.4g}")
    for s in data.boundaries:
        if s > 0:
            ax.axvline(s - 0.5, color="0.35", ls=":", lw=0.9, zorder=1)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xticks(x)
    families = list(font_families())
    ax.set_xticklabels(list(data.labels), fontsize=8, fontfamily=families)
    for tick, label in zip(ax.get_xticklabels(), data.labels):
        if len(label) > 2:
            tick.set_rotation(90)
            tick.set_fontsize(6)
    ax.tick_params(axis="x", length=0, pad=3)
    ylabel = r"$H(x_i)$ [nats]" if data.mode == "global" else r"$H(x_i) - H(x_{i-1})$ [nats]"
    ax.set_ylabel(ylabel, fontsize=9)
    mean = n / max(len(data.patch_lengths), 1)
    ax.set_title(title or f"{len(data.patch_lengths)} patches, {n} tokens ({mean:.2f} per patch), "
                          f"{data.mode} threshold", fontsize=10 if n >= 40 else 8)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.grid(axis="y", color="0.9", zorder=0)
    if out_path is not None:
        fig.savefig(str(out_path), dpi=dpi)
    return fig


# ----------------------------------------------------------------------------- HTML


def _svg_bars(data: PatchPlotData, col_px: int = 14, height_px: int = 120) -> str:
    """A small inline SVG: score bars per position, threshold line, patch boundaries."""
    n = data.n_positions
    scores = np.nan_to_num(np.asarray(data.scores, np.float64), nan=0.0)
    top = max(float(np.max(scores, initial=0.0)), data.threshold, 1e-6) * 1.1
    bottom = min(float(np.min(scores, initial=0.0)), 0.0) * 1.1
    span = top - bottom

    def y(v: float) -> float:
        return (top - v) / span * height_px

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{n * col_px}" height="{height_px + 4}" '
             f'role="img" aria-label="entropy per byte">']
    pid = data.patch_ids
    for i in range(n):
        v = scores[i]
        y0, y1 = sorted((y(0.0), y(v)))
        tip = f"{data.labels[i]} H={data.entropies[i]:.3f} score={v:.3f}"
        parts.append(f'<rect x="{i * col_px + 1}" y="{y0:.1f}" width="{col_px - 2}" height="{y1 - y0:.1f}" '
                     f'class="bar p{pid[i] % 2}"><title>{html.escape(tip)}</title></rect>')
    for s in data.boundaries:
        if s > 0:
            parts.append(f'<line x1="{s * col_px}" x2="{s * col_px}" y1="0" y2="{height_px}" class="boundary"/>')
    ty = y(data.threshold)
    parts.append(f'<line x1="0" x2="{n * col_px}" y1="{ty:.1f}" y2="{ty:.1f}" class="threshold"/>')
    parts.append("</svg>")
    return "".join(parts)


def _html_text(data: PatchPlotData) -> str:
    """The input as coloured spans, one per patch (escaped; invalid bytes as ``\\xNN``)."""
    tokens = [int(t) for t in data.tokens]
    pieces = []
    for p, (start, length) in enumerate(zip(data.boundaries, data.patch_lengths)):
        out = []
        for j in range(int(start), int(start + length)):
            if j >= len(tokens):
                break
            t = tokens[j]
            if t < OFFSET:
                out.append(f'<span class="special">{SPECIAL_LABELS.get(t, t)}</span>')
            elif data.labels[j]:
                out.append(_html_char(tokens, j, data.labels[j]))
        if not out:  # only UTF-8 continuation bytes: their character is drawn in an earlier patch
            hexes = " ".join(f"{tokens[j] - OFFSET:02X}" for j in range(int(start), int(start + length))
                             if j < len(tokens))
            out.append(f'<span class="cont" title="continuation bytes {hexes}">\u00b7</span>')
        title = f"patch {p}: {int(length)} tokens from position {int(start)}"
        pieces.append(f'<span class="patch p{p % 2}" title="{title}">{"".join(out)}</span>')
    return "".join(pieces)


def _html_char(tokens: list[int], j: int, label: str) -> str:
    """The raw character starting at token ``j`` (HTML-escaped), hex escapes kept as labels."""
    if label.startswith("\\x") and len(label) == 4:
        return f'<span class="hex">{html.escape(label)}</span>'
    run = []
    k = j
    while k < len(tokens) and tokens[k] >= OFFSET and len(run) < 4:
        run.append(tokens[k] - OFFSET)
        k += 1
    units = split_utf8(bytes(run))
    ch = units[0][2] if units else None
    if ch is None:
        return f'<span class="hex">{html.escape(label)}</span>'
    if ch == "\n":
        return '<span class="ws">\u21b5</span>\n'
    if ch == "\t":
        return '<span class="ws">\u21e5</span>\t'
    return html.escape(ch)


_CSS = """
body { font-family: "DejaVu Sans", "Noto Sans", sans-serif; margin: 1.5em; color: #222; }
.text { font-family: "DejaVu Sans Mono", "Noto Sans Mono", monospace; white-space: pre-wrap;
        line-height: 1.9; font-size: 15px; }
.patch { border-radius: 3px; padding: 1px 0; margin-right: 1px; }
.patch.p0 { background: #d6e2f3; } .patch.p1 { background: #f6dcc8; }
.hex { color: #a00; font-size: 80%; } .special { color: #666; font-size: 75%; }
.ws { color: #888; } .cont { color: #999; }
.bar.p0 { fill: #4C72B0; } .bar.p1 { fill: #DD8452; }
.boundary { stroke: #555; stroke-dasharray: 2 2; } .threshold { stroke: #C44E52; stroke-dasharray: 5 3; }
.chart { overflow-x: auto; border: 1px solid #eee; padding: 4px; }
"""


def patches_html(data: PatchPlotData, title: str = "BLT entropy patching") -> str:
    """A self-contained HTML page: summary, inline SVG of the scores, the text coloured per patch."""
    n, p = data.n_positions, len(data.patch_lengths)
    what = "entropy H" if data.mode == "global" else "entropy difference H(x_i) - H(x_{i-1})"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h2>{html.escape(title)}</h2>\n"
        f"<p>{n} tokens, {p} patches, {n / max(p, 1):.2f} tokens per patch; {data.mode} threshold "
        f"{data.threshold:.6g} on the {html.escape(what)} (nats). Bars: the value compared with the "
        "threshold at each position; dashed lines: patch boundaries.</p>\n"
        f'<div class="chart">{_svg_bars(data)}</div>\n'
        f'<h3>Patches</h3>\n<div class="text" id="patched-text">{_html_text(data)}</div>\n'
        "</body></html>\n")


# ----------------------------------------------------------------------------- report chart


def plot_report(rows: Sequence[dict], out_path: str | pathlib.Path, *, dpi: int = 100,
                title: str = "Per-file evaluation"):
    """Horizontal bar charts, one row per file: bits per byte, bytes per patch, patches per character.

    ``rows`` are dicts with keys ``name``, ``bits_per_byte``, ``avg_patch_size`` and
    ``patches_per_char`` (values may be None or NaN: drawn as empty).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    metrics = [("bits_per_byte", "bits per byte"), ("avg_patch_size", "bytes per patch"),
               ("patches_per_char", "patches per character")]
    names = [str(r["name"]) for r in rows]
    h_in = max(2.5, 0.22 * len(rows) + 1.2)
    fig = Figure(figsize=(12.0, h_in), dpi=dpi)
    axes = fig.subplots(1, len(metrics), sharey=True)
    y = np.arange(len(rows))
    for ax, (key, label) in zip(axes, metrics):
        vals = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], np.float64)
        ax.barh(y, np.nan_to_num(vals, nan=0.0), color="#4C72B0")
        ax.set_xlabel(label, fontsize=9)
        ax.set_axisbelow(True)
        ax.grid(axis="x", color="0.9")
        finite = vals[np.isfinite(vals)]
        if finite.size:
            ax.set_xlim(0, float(finite.max()) * 1.15 or 1.0)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(names, fontsize=7)
    axes[0].set_ylim(len(rows) - 0.5, -0.5)  # first file on top
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.14, right=0.98, top=1 - 0.45 / h_in, bottom=0.6 / h_in, wspace=0.08)
    fig.savefig(str(out_path), dpi=dpi)
    return fig


def png_size(path: str | pathlib.Path) -> tuple[int, int]:
    """``(width, height)`` of a PNG file, read from its IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


__all__ = ["PatchPlotData", "font_families", "glyph_available", "split_utf8", "char_label", "byte_labels",
           "token_labels", "figure_size_px", "plot_patches", "patches_html", "plot_report", "png_size"]
