"""What the explorer accepts from a browser, checked field by field.

Every request body is untrusted: a wrong type, a code of the wrong length, NaN or
infinity, a class or index out of range, an unknown field all end in ``BadRequest``
with one line naming the field, which the app sends back as HTTP 4xx JSON
(``{"error": "..."}``) and the page shows. Nothing malformed reaches the model.
"""

from __future__ import annotations

import json
import math

from vaelab.errors import VaelabError

MAX_JSON_BYTES = 1 << 20  # a 10,000-dimensional code is ~200 kB of JSON
MAX_ABS = 1e6  # codes far outside any trained region only overflow the decoder
MAX_IMAGES = 64  # per request: interpolation frames, samples


class BadRequest(VaelabError):
    """A request the explorer refuses; ``status`` is its HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _no_constants(name: str):
    # Python's json accepts NaN and Infinity, which JSON does not: refuse them by name.
    raise BadRequest(f"the request holds {name}, which is not a number JSON allows")


def parse_json(body: bytes) -> dict:
    if len(body) > MAX_JSON_BYTES:
        raise BadRequest(f"the request body is larger than {MAX_JSON_BYTES // 1024} kB", 413)
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except BadRequest:
        raise
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"the request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def only(body: dict, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; this request takes {', '.join(sorted(allowed))}")


def number(value, name: str, lo: float = -MAX_ABS, hi: float = MAX_ABS) -> float:
    # bool is an int in Python, never a number here
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name} must be a number, got {_show(value)}")
    try:
        v = float(value)
    except OverflowError:  # an integer of hundreds of digits
        v = math.inf
    if not math.isfinite(v) or not lo <= v <= hi:
        raise BadRequest(f"{name} must be a finite number in [{lo:g}, {hi:g}], got {_show(value)}")
    return v


def integer(value, name: str, lo: int, hi: int) -> int:
    """An int in [lo, hi] (inclusive); 3.0 is not an int, and neither is True."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be a whole number, got {_show(value)}")
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def vector(value, name: str, length: int) -> list[float]:
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of {length} numbers, got {_show(value)}")
    if len(value) != length:
        raise BadRequest(f"{name} must have {length} numbers (one per dimension), got {len(value)}")
    return [number(v, f"{name}[{i}]") for i, v in enumerate(value)]


def numbers(value, name: str, lo: float, hi: float, most: int = MAX_IMAGES) -> list[float]:
    if not isinstance(value, list) or not 1 <= len(value) <= most:
        raise BadRequest(f"{name} must be a list of 1 to {most} numbers, got {_show(value)}")
    return [number(v, f"{name}[{i}]", lo, hi) for i, v in enumerate(value)]


def choice(value, name: str, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise BadRequest(f"{name} must be one of {', '.join(options)}, got {_show(value)}")
    return value


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
