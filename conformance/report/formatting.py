"""How values read on the page: numbers in a few significant digits, JSON as text, which links are safe."""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlsplit


def number(value: float | None, digits: int = 3) -> str:
    """'1.2e-7', '0.05', 'NaN', '∞'; a dash for a value that was not measured."""
    if value is None:
        return "–"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{digits}g}".replace("e+", "e").replace("e0", "e").replace("e-0", "e-")


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s" if value < 100 else f"{value:.0f} s"


def json_text(value: Any) -> str:
    """A counterexample as its JSON, on one line when short, indented when not."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 100 else json.dumps(value, ensure_ascii=False, indent=2)


def web_link(text: str | None) -> str | None:
    """The text when it is an http(s) URL, so a citation can be a link; never a javascript: or data: one."""
    if not text or any(char.isspace() for char in text.strip()):
        return None
    parts = urlsplit(text.strip())
    return text.strip() if parts.scheme in ("http", "https") and parts.netloc else None
