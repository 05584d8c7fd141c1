"""Small pure helpers of the HTTP source: secrets, URLs, status codes, errors, header parsing, backoff.

The attempt outcomes (Retryable, Restart, Refused, Aborted, SizeConflict) live in
datasetd.errors with every other error; `transport_error` is the one table that maps
httpx's exceptions onto them.
"""

from __future__ import annotations

import base64
import email.utils
import random
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import httpx

from datasetd.config.manifest import HttpAuth
from datasetd.errors import Aborted, PermanentError, Refused, Retryable, TransferError

MASK = "***"
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


# httpx's exception tree onto ours: what a failed request means for the next attempt (first match wins).
_TRANSPORT_ERRORS: tuple[tuple[type[httpx.HTTPError], str], ...] = (
    (httpx.TimeoutException, "stalled"),
    (httpx.ConnectError, "cannot connect"),
    (httpx.RemoteProtocolError, "broke off the response"),
    (httpx.HTTPError, "failed"),
)


def transport_error(e: httpx.HTTPError, method: str, url_r: str, scrub: Scrubber, cut: str | None) -> TransferError:
    """The attempt outcome for an httpx error; `cut` is the supervisor's reason when it cut the socket."""
    if cut is not None:
        return Aborted(cut)
    bad_cert = _cause(e, ssl.SSLCertVerificationError)
    if bad_cert is not None:
        # Not a network blip: the same certificate fails again on every retry.
        reason = getattr(bad_cert, "verify_message", "") or str(bad_cert)
        return Refused(PermanentError(
            f"{method} {url_r}: the server's TLS certificate failed verification ({scrub(reason)}); check "
            "the URL, or add the CA that signs it to the system's store (or point SSL_CERT_FILE at it)"))
    said = next(text for kind, text in _TRANSPORT_ERRORS if isinstance(e, kind))
    return Retryable(f"{method} {url_r} {said}: {type(e).__name__}: {scrub(str(e))}".rstrip(": "))


def _cause(e: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in the chain that raised `e` (httpx wraps httpcore wraps ssl)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def redact_url(url: str) -> str:
    """The URL without user:password@ and with every query value masked (signed URLs carry secrets)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    host = parts.netloc.rpartition("@")[2]
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = "&".join(f"{quote(k, safe='')}={MASK}" if v else quote(k, safe="") for k, v in pairs)
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def url_secrets(url: str) -> list[str]:
    """Pieces of `url` that must never be shown: userinfo and query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = [v for _, v in parse_qsl(parts.query, keep_blank_values=True) if v]
    if parts.username:
        found.append(parts.username)
    if parts.password:
        found.append(parts.password)
    return found


class Scrubber:
    """Masks every known secret in text that may reach a log, a message or status."""

    def __init__(self, secrets: list[str]) -> None:
        # Longest first so a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, MASK)
        return text


@dataclass(frozen=True)
class Credentials:
    headers: Mapping[str, str]
    hint: str  # what to check on 401/403, naming env vars, never values
    secrets: tuple[str, ...]


def credentials(auth: HttpAuth | None, env: Mapping[str, str], what: str) -> Credentials:
    """Read the secrets named by the manifest from `env` now (not at manifest load)."""
    if auth is None:
        return Credentials({}, "the manifest's auth (none is set: add auth.bearer_env, "
                               "or auth.user_env and auth.password_env)", ())
    if auth.bearer_env:
        token = _env(env, auth.bearer_env, what)
        return Credentials({"Authorization": f"Bearer {token}"},
                           f"the credentials in env var {auth.bearer_env}", (token,))
    if auth.user_env and auth.password_env:
        user = _env(env, auth.user_env, what)
        password = _env(env, auth.password_env, what)
        basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return Credentials({"Authorization": f"Basic {basic}"},
                           f"the credentials in env vars {auth.user_env} and {auth.password_env}",
                           (user, password, basic))
    return Credentials({}, "the manifest's auth table", ())


def _env(env: Mapping[str, str], name: str, what: str) -> str:
    value = env.get(name)
    if not value:
        raise PermanentError(f"{what}: env var {name} is not set or empty; export it with the credentials")
    return value


def status_error(status: int, phrase: str, method: str, url_r: str, what: str,
                 cred_hint: str, retry_after: str | None) -> Exception | None:
    """None when the status is usable (200/206); else a Refused or a Retryable."""
    if status in (200, 206):
        return None
    said = f"{method} {url_r} answered {status} {phrase}".rstrip()
    if status in (401, 403):
        return Refused(PermanentError(f"{what}: {said}; check {cred_hint}"))
    if status in (404, 410):
        return Refused(PermanentError(f"{what}: {said}; check the URL"))
    if status in (408, 425, 429) or status >= 500:
        return Retryable(said, parse_retry_after(retry_after))
    return Refused(PermanentError(f"{what}: {said}; check the URL and the server"))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent or malformed."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """`bytes a-b/total` as (a, b inclusive, total or None for '*'); None if absent or malformed."""
    m = _CONTENT_RANGE_RE.match(value or "")
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def strong_etag(etag: str | None) -> str | None:
    """If-Range needs a strong validator (RFC 9110 13.1.5); a weak ETag cannot be used."""
    if etag and not etag.startswith(("W/", "w/")):
        return etag
    return None


def backoff(failures: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: spread reconnects of many clients after an outage."""
    ceiling = min(cap, base * (2.0 ** max(0, failures - 1)))
    return ceiling * random.uniform(0.5, 1.0)
