"""Small PNG line plots drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

# tab10's first five, then its other five (a legend of up to ten series stays unambiguous)
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def draw_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
               series: dict[str, tuple[Sequence[float], Sequence[float]]]) -> None:
    """One axes box with a title, min/max labels and one polyline per series."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys)]
    if not points:
        draw.text((x0 + 10, y0 + 10), "no data", fill=(120, 120, 120))
        return
    xmin, xmax = min(p[0] for p in points), max(p[0] for p in points)
    ymin, ymax = min(p[1] for p in points), max(p[1] for p in points)
    if ymax == ymin:
        ymin, ymax = ymin - 0.5, ymax + 0.5
    xmax = xmax if xmax > xmin else xmin + 1
    pad = 6

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = x0 + pad + (x - xmin) / (xmax - xmin) * (x1 - x0 - 2 * pad)
        py = y1 - pad - (y - ymin) / (ymax - ymin) * (y1 - y0 - 2 * pad)
        return px, py

    for i, (label, (xs, ys)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = [to_px(x, y) for x, y in zip(xs, ys)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for p in pts if len(pts) < 30 else []:
            draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colour)
        if len(series) > 1:
            draw.text((x1 - 120, y0 + 4 + 12 * i), label, fill=colour)
    draw.text((x0 - 2, y1 + 2), _fmt(xmin), fill=(0, 0, 0))
    draw.text((x1 - 30, y1 + 2), _fmt(xmax), fill=(0, 0, 0))
    draw.text((x0 + 4, y0 + 2), _fmt(ymax), fill=(90, 90, 90))
    draw.text((x0 + 4, y1 - 14), _fmt(ymin), fill=(90, 90, 90))


def plot_panels(path: str | Path, panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]],
                title: str = "", axes: dict[str, tuple[str, str]] | None = None) -> Path:
    """Panels side by side; each is ``{series label: (xs, ys)}``. ``axes``: ``{panel: (x label,
    y label)}``, written under the panel. Written atomically."""
    width, height, margin = 330, 260, 40
    image = Image.new("RGB", (margin + len(panels) * (width + margin), height + 2 * margin), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((margin, 6), title, fill=(0, 0, 0))
    for i, (name, series) in enumerate(panels.items()):
        left = margin + i * (width + margin)
        draw_panel(draw, (left, margin, left + width, margin + height - 20), name, series)
        if axes and name in axes:
            draw.text((left + 110, margin + height - 4), f"x: {axes[name][0]}", fill=(0, 0, 0))
            draw.text((left + 4, margin + height + 12), f"y: {axes[name][1]}", fill=(0, 0, 0))
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    image.save(tmp)
    tmp.replace(path)
    return path


def bar_chart(path: str | Path, title: str, bars: dict[str, float]) -> Path:
    """A labelled bar chart (e.g. reference vs policy)."""
    width, height = 120 * len(bars) + 80, 300
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((20, 8), title, fill=(0, 0, 0))
    top = max([abs(v) for v in bars.values()] + [1e-9])
    base = height - 40
    for i, (label, value) in enumerate(bars.items()):
        x = 50 + 120 * i
        h = (abs(value) / top) * (height - 90)
        draw.rectangle((x, base - h, x + 70, base), fill=COLOURS[i % len(COLOURS)])
        draw.text((x, base + 6), label, fill=(0, 0, 0))
        draw.text((x, base - h - 14), _fmt(value), fill=(0, 0, 0))
    path = Path(path)
    image.save(path)
    return path
