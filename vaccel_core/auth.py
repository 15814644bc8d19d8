"""Credentials shared by the agent and its clients: bearer tokens (``--token-file``,
``VACCEL_RPC_TOKEN_FILE``), read from a file and compared in constant time, and the files of
TLS certificates and keys."""

from __future__ import annotations

import hmac
from pathlib import Path

from .errors import InvalidArgumentError

#: Metadata key (gRPC) that carries the token, as ``Bearer <token>``.
TOKEN_METADATA = "authorization"
#: Shortest token accepted: a guessable token protects nothing.
MIN_TOKEN_BYTES = 16
MAX_TOKEN_BYTES = 4096


def read_credential(path: str | Path, what: str) -> bytes:
    """The bytes of a credential file (a token, a PEM certificate or key); ``what`` names the
    setting in errors (``--tls-cert``, ``VACCEL_RPC_TLS_KEY``, ...)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"{what}: cannot read {str(path)!r}: {exc.strerror}") from None


def read_token(path: str | Path, what: str) -> bytes:
    """The token in the first line of ``path`` (surrounding blanks removed). ``what`` names
    the setting in errors (``--token-file``, ``VACCEL_RPC_TOKEN_FILE``)."""
    raw = read_credential(path, what)[: MAX_TOKEN_BYTES + 1024]
    lines = raw.splitlines()
    token = lines[0].strip() if lines else b""
    if not MIN_TOKEN_BYTES <= len(token) <= MAX_TOKEN_BYTES:
        raise InvalidArgumentError(
            f"{what}: expected a token of {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} bytes on the "
            f"first line of {str(path)!r}, got {len(token)} bytes "
            f"(make one with: openssl rand -hex 32)"
        )
    if any(b < 0x21 or b > 0x7E for b in token):
        raise InvalidArgumentError(
            f"{what}: the token in {str(path)!r} must be printable ASCII without spaces"
        )
    return token


def bearer(token: bytes) -> str:
    """The metadata value a client sends."""
    return "Bearer " + token.decode("ascii")


def token_matches(expected: bytes, presented: str | bytes | None) -> bool:
    """Whether ``presented`` (a ``Bearer <token>`` metadata value) carries ``expected``;
    constant time in the token's content."""
    if presented is None:
        return False
    if isinstance(presented, str):
        presented = presented.encode("utf-8", "replace")
    scheme, _, value = presented.partition(b" ")
    ok_scheme = hmac.compare_digest(scheme.lower(), b"bearer")
    return hmac.compare_digest(value.strip(), expected) and ok_scheme
