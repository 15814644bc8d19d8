"""The rpc backends' settings from the environment: numbers (timeouts, sizes) and the transport
options of the guest side (TLS, bearer token)."""

from __future__ import annotations

import os
from typing import Any

from vaccel_core.errors import InvalidArgumentError
from vaccel_core.transport import TlsOptions, TransportOptions


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise InvalidArgumentError(f"{name}: expected a number of seconds, got {value!r}") from None


def env_file(name: str) -> bytes | None:
    """The credential file the environment variable ``name`` names, or None when unset."""
    from vaccel_core.auth import read_credential

    path = os.environ.get(name)
    return read_credential(path, name) if path else None


def client_options(dns_name: str | None = None, **kwargs: Any) -> TransportOptions:
    """Transport options of the guest side from the environment: TLS
    (``VACCEL_RPC_TLS_CA``, ``VACCEL_RPC_TLS_CERT``, ``VACCEL_RPC_TLS_KEY``, PEM files;
    ``VACCEL_RPC_TLS=1`` for TLS with the system's roots; ``VACCEL_RPC_TLS_SERVER_NAME`` to
    check another name in the agent's certificate) and the bearer token
    (``VACCEL_RPC_TOKEN_FILE``). ``dns_name``: the name an agent dialled by IP address was
    found under, checked in its certificate unless ``VACCEL_RPC_TLS_SERVER_NAME`` says
    otherwise."""
    from vaccel_core.auth import read_token

    ca = env_file("VACCEL_RPC_TLS_CA")
    cert = env_file("VACCEL_RPC_TLS_CERT")
    key = env_file("VACCEL_RPC_TLS_KEY")
    if (cert is None) != (key is None):
        raise InvalidArgumentError(
            "VACCEL_RPC_TLS_CERT and VACCEL_RPC_TLS_KEY: expected both (the client's "
            "certificate and its key, for mutual TLS) or neither"
        )
    server_name = os.environ.get("VACCEL_RPC_TLS_SERVER_NAME") or None
    wanted = os.environ.get("VACCEL_RPC_TLS", "").strip().lower() in {"1", "true", "yes"}
    tls = None
    if wanted or ca is not None or cert is not None or server_name:
        tls = TlsOptions(cert=cert, key=key, ca=ca, server_name=server_name or dns_name)
    token_file = os.environ.get("VACCEL_RPC_TOKEN_FILE")
    token = read_token(token_file, "VACCEL_RPC_TOKEN_FILE") if token_file else None
    return TransportOptions(tls=tls, token=token, **kwargs)
