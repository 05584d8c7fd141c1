"""Typed reads from a parsed TOML table, each error naming its dotted key path."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from datasetd.errors import ManifestError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_INT = 2**63 - 1
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def parse_duration(value: str) -> float | None:
    """'90s', '10m', '1.5h', '7d', '2w' or a bare number of seconds; None if malformed."""
    m = _DURATION_RE.match(value)
    if not m:
        return None
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _type_name(value: object) -> str:
    return {
        bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Reader:
    """One TOML table plus where it sits, so every error can say `components.train.size`."""

    def __init__(self, file: str, prefix: str, data: Mapping[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.data = data

    def key(self, name: str) -> str:
        # Quoted like JSON unless bare, so an odd key keeps the message on one line and is never empty.
        shown = name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)
        return f"{self.prefix}.{shown}" if self.prefix else shown

    def keys(self) -> list[str]:
        return list(self.data)

    def fail(self, name: str, problem: str, fix: str = "") -> ManifestError:
        return ManifestError(self.file, self.key(name), problem, fix)

    def done(self, known: Iterable[str]) -> None:
        """Reject keys nobody read: a typo must not be silently ignored."""
        known = set(known)
        for name in self.data:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                fix = f"did you mean {close[0]!r}?" if close else (
                    "allowed here: " + ", ".join(sorted(known)) if known else "remove it")
                raise self.fail(name, "unknown key", fix)

    def _get(self, name: str, required: bool) -> Any:
        if name not in self.data:
            if required:
                typo = difflib.get_close_matches(name, [k for k in self.data if isinstance(k, str)], n=1)
                if typo:  # checked before `done`: the typo is what the user wrote, name it
                    raise self.fail(typo[0], "unknown key", f"did you mean {name!r}?")
                raise self.fail(name, "missing required key", "add it")
            return None
        return self.data[name]

    def _wrong(self, name: str, want: str, value: object) -> ManifestError:
        return self.fail(name, f"expected {want}, got {_type_name(value)} {_show(value)}")

    def table(self, name: str) -> Reader:
        value = self._get(name, False)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self._wrong(name, "a table", value)
        return Reader(self.file, self.key(name), value)

    def string(self, name: str, required: bool = False) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._wrong(name, "a string", value)
        if "\x00" in value or any(ord(ch) < 32 and ch != "\t" for ch in value):
            raise self.fail(name, "contains control characters", "remove them")
        return value

    def integer(self, name: str, required: bool = False, minimum: int | None = None,
                maximum: int = _MAX_INT) -> int | None:
        value = self._get(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(name, "an integer", value)
        if (minimum is not None and value < minimum) or value > maximum:
            lo = "" if minimum is None else f"{minimum} "
            raise self.fail(name, f"{value} is out of range", f"use {lo}to {maximum}")
        return value

    def number(self, name: str) -> float | None:
        value = self._get(name, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(name, "a number", value)
        if not math.isfinite(value) or value < 0:
            raise self.fail(name, f"{value} is not a finite non-negative number")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._wrong(name, "true or false", value)
        return value

    def duration(self, name: str, default: float) -> float:
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self._wrong(name, 'a duration such as "10m" or seconds', value)
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
        if seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= 10 * 365 * 86400:
            raise self.fail(name, f"{_show(value)} is not a duration",
                            'use e.g. "30s", "10m", "6h", "7d" or a number of seconds')
        return seconds

    def choice(self, name: str, options: tuple[str, ...], required: bool = False) -> str | None:
        value = self.string(name, required)
        if value is not None and value not in options:
            close = difflib.get_close_matches(value, options, n=1)
            raise self.fail(name, f"{value!r} is not one of {', '.join(map(repr, options))}",
                            f"did you mean {close[0]!r}?" if close else "")
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self._get(name, False)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong(name, "an array of strings", value)
        return tuple(value)

    def hexdigest(self, name: str, length: int) -> str | None:
        value = self.string(name)
        if value is None:
            return None
        if len(value) != length or not re.fullmatch(r"[0-9a-fA-F]+", value):
            raise self.fail(name, f"{_show(value)} is not a {length}-digit hex digest",
                            "copy the digest exactly as published")
        return value.lower()

    def url(self, name: str, required: bool = False) -> str | None:
        value = self.string(name, required)
        if value is not None:
            self._check_url(name, value)
        return value

    def urls(self, name: str) -> tuple[str, ...]:
        values = self.strings(name)
        for v in values:
            self._check_url(name, v)
        return values

    def _check_url(self, name: str, value: str) -> None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.fail(name, f"{_show(value)} is not an http(s) URL")
        if parts.username or parts.password:
            raise self.fail(name, "credentials inside the URL",
                            "put them in environment variables named by auth")

    def env_name(self, name: str) -> str | None:
        value = self.string(name)
        if value is not None and not _ENV_RE.fullmatch(value):
            raise self.fail(name, f"{_show(value)} is not an environment variable name",
                            "name the variable that holds the secret, not the secret")
        return value
