"""Asking for the REMOTE backend with the default configuration says which variable to set."""

from __future__ import annotations

import pytest

from vaccel_core import PluginType, Session
from vaccel_core.errors import PluginError

from .test_cli_logging import _vaccel


def test_remote_session_with_default_config_names_the_variable() -> None:
    with pytest.raises(PluginError) as info:
        Session(PluginType.REMOTE)
    message = str(info.value)
    assert "no backend of type REMOTE is loaded" in message
    assert "set VACCEL_PLUGINS=rpc" in message and "VACCEL_RPC_ADDRESS" in message


def test_remote_session_with_local_plugins_says_add_rpc(monkeypatch: pytest.MonkeyPatch) -> None:
    from vaccel_core.config import set_config

    monkeypatch.setenv("VACCEL_PLUGINS", "noop")
    set_config(None)
    with pytest.raises(PluginError, match="add rpc to VACCEL_PLUGINS"):
        Session(PluginType.REMOTE)


def test_noop_remote_command_names_the_variable() -> None:
    out = _vaccel("noop", "--remote")
    assert out.returncode == 1
    assert "set VACCEL_PLUGINS=rpc" in out.stderr and "VACCEL_RPC_ADDRESS" in out.stderr
    assert "Traceback" not in out.stderr
