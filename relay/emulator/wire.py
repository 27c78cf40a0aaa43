"""Wire-format helpers: form decoding, JSON encoding, ids and credentials.

Kept free of aiohttp so the hot path stays cheap: bodies are read as bytes once and parsed
by hand (`urllib.parse.parse_qsl`) instead of through `request.post()`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
from typing import Any
from urllib.parse import parse_qsl

_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)

JSON_CONTENT_TYPE = "application/json"


def new_id(prefix: str) -> str:
    """A unique, Stripe-looking id such as `req_1a2b3c4d0000002a`.

    A per-process random prefix plus a counter is unique and far cheaper than `secrets`.
    """
    return f"{prefix}_{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes, the response body format (stored verbatim for replays)."""
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_form(body: bytes) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    """Decode a v1 form body into nested params plus a canonical fingerprint.

    `payload[k]=v` becomes `{"payload": {"k": "v"}}`; `a[b][c]=v` nests further. The
    fingerprint (sorted pairs) is what the idempotency layer compares: the same params sent
    in a different order are the same request.
    """
    pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    params: dict[str, Any] = {}
    for key, value in pairs:
        _assign(params, key, value)
    return params, tuple(sorted(pairs))


def parse_query(query: str) -> dict[str, Any]:
    """Decode a query string with the same bracket nesting as form bodies."""
    params: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        _assign(params, key, value)
    return params


def _assign(params: dict[str, Any], key: str, value: str) -> None:
    bracket = key.find("[")
    if bracket <= 0 or not key.endswith("]"):
        params[key] = value
        return
    parts = [key[:bracket], *key[bracket + 1 : -1].split("][")]
    target = params
    for part in parts[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = {}
            target[part] = child
        target = child
    target[parts[-1]] = value


def indexed_list(value: Any) -> list[Any]:
    """Turn `types[0]=a&types[1]=b` (decoded as {"0": a, "1": b}) back into a list."""
    if isinstance(value, dict):
        return [value[k] for k in sorted(value, key=lambda k: int(k) if k.isdigit() else 0)]
    if value is None:
        return []
    return [value]


def bearer_credential(authorization: str | None) -> str | None:
    """Extract the API key from `Bearer <key>` or HTTP Basic `<key>:` (curl's `-u sk_...:`)."""
    if not authorization:
        return None
    scheme, _, credential = authorization.partition(" ")
    scheme = scheme.lower()
    credential = credential.strip()
    if scheme == "bearer":
        return credential or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credential, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def key_mode(api_key: str) -> bool | None:
    """Livemode of a secret or restricted key: True for `sk_live_`/`rk_live_`, False for
    `sk_test_`/`rk_test_`, None otherwise."""
    if api_key.startswith(("sk_live_", "rk_live_")) and len(api_key) > 8:
        return True
    if api_key.startswith(("sk_test_", "rk_test_")) and len(api_key) > 8:
        return False
    return None
