"""SVG badges and shields.io endpoint JSON for one probe's window (DESIGN.md ``/badge/...``).

:func:`badge_values` turns a window W of the snapshot into a label, a message and a colour;
:func:`badge_svg` draws them as a flat shields-style badge (no external font: widths come from
a table of Verdana 11px advances, and the viewer falls back to its own sans-serif);
:func:`shields_json` gives the same values in the schema of shields.io's endpoint badge.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

from modelwatch.status.html import fmt_latency, fmt_percent

METRICS = {"availability": "availability", "ttft_p50": "TTFT p50", "ttft_p95": "TTFT p95"}
NO_DATA = "no data"
DEFAULT_THRESHOLDS = {"degraded": 0.99, "partial_outage": 0.9, "major_outage": 0.5}

# Shields' named colours, and their hex values for our own SVG.
COLORS = {
    "brightgreen": "#4c1", "green": "#97ca00", "yellowgreen": "#a4a61d", "yellow": "#dfb317",
    "orange": "#fe7d37", "red": "#e05d44", "blue": "#007ec6", "lightgrey": "#9f9f9f",
    "grey": "#555", "informational": "#007ec6", "inactive": "#9f9f9f",
}
STATE_COLORS = {"operational": "brightgreen", "degraded": "yellow", "partial_outage": "orange",
                "major_outage": "red"}
LATENCY_COLOR = "blue"
NO_DATA_COLOR = "lightgrey"
_HEX = re.compile(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
# Characters XML 1.0 does not allow at all (escaping cannot save them).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

# Advance widths of Verdana at 11px for printable ASCII (space .. ~); others count as WIDE.
_ASCII_WIDTHS = (
    3.87, 4.33, 5.05, 9.00, 6.99, 11.84, 7.99, 2.95, 4.99, 4.99, 6.99, 9.00, 4.00, 4.99, 4.00, 4.99,
    6.99, 6.99, 6.99, 6.99, 6.99, 6.99, 6.99, 6.99, 6.99, 6.99, 4.99, 4.99, 9.00, 9.00, 9.00, 6.00,
    11.00, 7.52, 7.54, 7.68, 8.48, 6.96, 6.32, 8.53, 8.27, 4.63, 5.00, 7.62, 6.12, 9.27, 8.23, 8.66,
    6.63, 8.66, 7.65, 7.52, 6.78, 8.05, 7.52, 10.88, 7.54, 6.77, 7.54, 4.99, 4.99, 4.99, 9.00, 6.99,
    6.99, 6.61, 6.85, 5.73, 6.85, 6.55, 3.87, 6.85, 6.96, 3.02, 3.79, 6.51, 3.02, 10.70, 6.96, 6.68,
    6.85, 6.85, 4.69, 5.73, 4.33, 6.96, 6.51, 9.00, 6.51, 6.51, 5.77, 6.98, 4.99, 6.98, 9.00,
)
WIDE = 11.0
PADDING = 10  # px on each side of a half's text, in total


def text_width(text: str) -> float:
    """The width of ``text`` in Verdana 11px, near enough to size a badge."""
    return sum(_ASCII_WIDTHS[ord(c) - 32] if 32 <= ord(c) < 127 else WIDE for c in text)


def xml_text(value: object) -> str:
    """Text safe in XML text and quoted attributes."""
    return escape(_NOT_XML.sub("", str(value)), {'"': "&quot;", "'": "&apos;"})


def svg_color(color: str) -> str:
    """A shields colour name or hex value as a fill; grey for anything else."""
    if color in COLORS:
        return COLORS[color]
    match = _HEX.fullmatch(color or "")
    return f"#{match.group(1)}" if match else COLORS["lightgrey"]


def badge_svg(label: str, message: str, color: str) -> str:
    """A flat shields-style badge: grey label, coloured message, ``<title>`` for screen readers."""
    label_w = round(text_width(label) + PADDING)
    message_w = round(text_width(message) + PADDING)
    width = label_w + message_w
    title = xml_text(f"{label}: {message}")
    label_x, message_x = label_w / 2, label_w + message_w / 2
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{title}"><title>{title}</title>'
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        '<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{label_w}" height="20" fill="#555"/>'
        f'<rect x="{label_w}" width="{message_w}" height="20" fill="{svg_color(color)}"/>'
        f'<rect width="{width}" height="20" fill="url(#s)"/></g>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" '
        'font-size="11">'
        f'{_shadowed(label_x, label)}{_shadowed(message_x, message)}</g></svg>'
    )


def _shadowed(x: float, text: str) -> str:
    """One half's text with the flat style's 1px shadow under it."""
    t = xml_text(text)
    return (f'<text x="{x:g}" y="15" fill="#010101" fill-opacity=".3">{t}</text>'
            f'<text x="{x:g}" y="14">{t}</text>')


def availability_color(availability: float, thresholds: dict) -> str:
    """The colour of the state an availability falls in (below a threshold = that state)."""
    for state in ("major_outage", "partial_outage", "degraded"):
        if availability < thresholds.get(state, DEFAULT_THRESHOLDS[state]):
            return STATE_COLORS[state]
    return STATE_COLORS["operational"]


def badge_values(window: dict, metric: str, window_name: str, kind: str,
                 thresholds: dict | None = None) -> tuple[str, str, str]:
    """Label, message and colour of ``metric`` over a window W, e.g. ("rest availability 24h", "99.20%", "brightgreen").

    ``kind`` leads the label (pass "" to leave it out). A window without enough data says
    "no data" in grey; availability is coloured by ``thresholds`` (the snapshot's), latency blue.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    label = " ".join(part for part in (kind, METRICS[metric], window_name) if part)
    value = (window or {}).get("availability" if metric == "availability" else f"{metric}_s")
    if not (window or {}).get("enough_data") or value is None:
        return label, NO_DATA, NO_DATA_COLOR
    if metric == "availability":
        return label, fmt_percent(value), availability_color(value, thresholds or DEFAULT_THRESHOLDS)
    return label, fmt_latency(value), LATENCY_COLOR


def shields_json(label: str, message: str, color: str, *, no_data: bool | None = None) -> dict:
    """The shields.io endpoint schema; ``isError`` only when there is no data.

    ``no_data`` defaults to whether ``message`` is the no-data message of :func:`badge_values`.
    """
    answer = {"schemaVersion": 1, "label": label, "message": message, "color": color}
    if no_data if no_data is not None else message == NO_DATA:
        answer["isError"] = True
    return answer
