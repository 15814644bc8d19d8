from __future__ import annotations

import pytest

from vaccel_core import InvalidArgumentError
from vaccel_core.config import (
    DEFAULT_RPC_ADDRESS,
    Config,
    parse_plugin_list,
    parse_vaccel_config,
    plugin_name,
)


@pytest.mark.parametrize(
    ("item", "name"),
    [
        ("noop", "noop"),
        ("libvaccel-noop.so", "noop"),
        ("/usr/local/lib/libvaccel-jetson.so", "jetson"),
        ("libvaccel-torch.so.0.1", "torch"),
        ("  onnxruntime ", "onnxruntime"),
        ("/opt/x/libvaccel-rpc.so", "rpc"),
    ],
)
def test_plugin_name_maps_upstream_library_names(item: str, name: str) -> None:
    assert plugin_name(item) == name


def test_plugin_list_accepts_colons_commas_and_keeps_order() -> None:
    kata = "/usr/local/lib/libvaccel-jetson.so:/usr/local/lib/libvaccel-noop.so"
    assert parse_plugin_list(kata) == ["jetson", "noop"]
    assert parse_plugin_list("onnxruntime,noop:noop") == ["onnxruntime", "noop"]
    assert parse_plugin_list(" : ,") == []


def test_vaccel_config_string() -> None:
    cfg = parse_vaccel_config("plugins=libvaccel-noop.so,log_level=4")
    assert cfg == {"plugins": "libvaccel-noop.so", "log_level": "4"}
    # an item without "=" continues the previous value
    assert parse_vaccel_config("plugins=a.so,b.so,log-level=2")["plugins"] == "a.so,b.so"
    with pytest.raises(InvalidArgumentError, match="expected key=value"):
        parse_vaccel_config("noequals")


def test_config_from_env_prefers_new_names_and_reads_old_ones() -> None:
    old = Config.from_env(
        {
            "VACCEL_BACKENDS": "libvaccel-noop.so",
            "VACCEL_DEBUG_LEVEL": "4",
            "VACCEL_VSOCK": "vsock://2:2048",
        }
    )
    assert old.plugins == ["noop"]
    assert old.log_level == 4
    assert old.rpc_address == "vsock://2:2048"
    new = Config.from_env(
        {
            "VACCEL_PLUGINS": "onnxruntime",
            "VACCEL_BACKENDS": "noop",
            "VACCEL_LOG_LEVEL": "2",
            "VACCEL_DEBUG_LEVEL": "4",
            "VACCEL_RPC_ADDRESS": "unix:///x",
            "VACCEL_VSOCK": "vsock://2:1",
            "VACCEL_PROFILING_ENABLED": "1",
            "VACCEL_PLUGINS_STRICT": "1",
        }
    )
    assert new.plugins == ["onnxruntime"]
    assert new.log_level == 2
    assert new.rpc_address == "unix:///x"
    assert new.profiling and new.strict_plugins
    default = Config.from_env({})
    assert default.plugins is None and default.log_level == 1
    assert default.rpc_address == DEFAULT_RPC_ADDRESS == "tcp://127.0.0.1:65500"


def test_bad_log_level_is_named() -> None:
    with pytest.raises(InvalidArgumentError, match="VACCEL_LOG_LEVEL: expected a level 1-4"):
        Config.from_env({"VACCEL_LOG_LEVEL": "loud"})
    assert Config.from_env({"VACCEL_LOG_LEVEL": "9"}).log_level == 4


def test_apply_vaccel_config() -> None:
    cfg = Config()
    cfg.apply(parse_vaccel_config("plugins=libvaccel-noop.so,log_level=4,custom=x"))
    assert cfg.plugins == ["noop"] and cfg.log_level == 4 and cfg.extra == {"custom": "x"}
