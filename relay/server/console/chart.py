"""The overview's chart, drawn on the server as inline SVG: accepted calls per minute (bars)
and the error rate of each minute (a line), over the last hours.

No script and nothing fetched: the SVG is part of the page, so the console's Content Security
Policy stays `default-src 'none'` (inline SVG needs no source of its own). Every text in it is
a number or a time formatted here, never data from Stripe or an application.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup

from relay.db.queries import Minute

WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 44, 12, 24  # margins for the axes' labels
ACCEPTED_COLOUR, ERROR_COLOUR = "#1a7f4b", "#c0322b"


@dataclass(frozen=True)
class Chart:
    """The drawn SVG and the figures beside it (peak and totals of the span)."""

    svg: Markup
    minutes: int
    peak_accepted: int
    accepted: int
    calls: int
    errors: int
    stride: int  # 1: every call was read; n: one in n, the counts are estimates


def draw(points: Sequence[Minute], now: datetime, minutes: int) -> Chart:
    """The last `minutes` minutes up to `now` (a minute without calls is a gap at zero)."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    by_minute = {p.minute: p for p in points}
    slots = [by_minute.get(start + timedelta(minutes=i)) for i in range(minutes)]
    peak = max((p.accepted for p in slots if p), default=0)
    top = _nice(peak)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / minutes
    parts = [_axes(top, plot_w, plot_h, start, minutes)]
    for i, p in enumerate(slots):
        if p and p.accepted:
            h = plot_h * p.accepted / top
            parts.append(
                Markup(
                    '<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}"/>'
                ).format(
                    LEFT + i * step, TOP + plot_h - h, max(step - 0.5, 0.5), h, ACCEPTED_COLOUR
                )
            )
    line = [
        f"{LEFT + (i + 0.5) * step:.1f},{TOP + plot_h * (1 - p.errors / p.calls):.1f}"
        for i, p in enumerate(slots)
        if p and p.calls
    ]
    if len(line) == 1:  # a polyline of one point draws nothing: the first minute of an outage
        x, y = line[0].split(",")
        parts.append(
            Markup('<circle cx="{}" cy="{}" r="3" fill="{}" id="error-line"/>').format(
                x, y, ERROR_COLOUR
            )
        )
    elif line:
        parts.append(
            Markup(
                '<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5" id="error-line"/>'
            ).format(" ".join(line), ERROR_COLOUR)
        )
    svg = Markup(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" '
        'role="img" aria-label="accepted calls per minute and error rate" id="chart-svg">'
        "{body}</svg>"
    ).format(w=WIDTH, h=HEIGHT, body=Markup("").join(parts))
    present = [p for p in slots if p]
    return Chart(
        svg=svg,
        minutes=minutes,
        peak_accepted=peak,
        accepted=sum(p.accepted for p in present),
        calls=sum(p.calls for p in present),
        errors=sum(p.errors for p in present),
        stride=max((p.stride for p in points), default=1),
    )


def _nice(peak: int) -> int:
    """The left axis' top: 1, 2 or 5 times a power of ten, at least the peak (and 1)."""
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale >= peak:
                return m * scale
        scale *= 10


def _axes(top: int, plot_w: float, plot_h: float, start: datetime, minutes: int) -> Markup:
    """Frame, both axes' scales (accepted/min left, error rate right) and hour ticks below."""
    bottom = TOP + plot_h
    right = LEFT + plot_w
    parts = [
        Markup(
            '<rect x="{}" y="{}" width="{:.1f}" height="{:.1f}" fill="none" stroke="#dfe3ea"/>'
        ).format(LEFT, TOP, plot_w, plot_h),
        _label(LEFT - 4, TOP + 4, "end", f"{top:,}", ACCEPTED_COLOUR),
        _label(LEFT - 4, bottom, "end", "0", ACCEPTED_COLOUR),
        _label(right + 4, TOP + 4, "start", "100 %", ERROR_COLOUR),
        _label(right + 4, bottom, "start", "0 %", ERROR_COLOUR),
    ]
    step = plot_w / minutes
    for i in range(minutes):
        moment = start + timedelta(minutes=i)
        if moment.minute == 0:
            x = LEFT + i * step
            parts.append(
                Markup(
                    '<line x1="{x:.1f}" y1="{t}" x2="{x:.1f}" y2="{b:.1f}" stroke="#eef0f4"/>'
                ).format(x=x, t=TOP, b=bottom)
            )
            parts.append(_label(x, bottom + 15, "middle", moment.strftime("%H:%MZ"), "#5f6b7a"))
    return Markup("").join(parts)


def _label(x: float, y: float, anchor: str, text: str, colour: str) -> Markup:
    return Markup(
        '<text x="{:.1f}" y="{:.1f}" text-anchor="{}" font-size="11" fill="{}">{}</text>'
    ).format(x, y, anchor, colour, text)
