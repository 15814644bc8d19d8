"""Small in-test backends and a registry builder for core tests."""

from __future__ import annotations

import types
from typing import Any

from vaccel_core import Backend, Config, PluginRegistry, PluginType, Resource, Session, hookimpl
from vaccel_plugins import noop


class RecordingBackend(Backend):
    """A CPU backend that implements classify only and records lifecycle calls."""

    name = "recorder"
    type = PluginType.CPU
    events: list[tuple[str, Any]] = []

    def session_init(self, session: Session) -> None:
        self.events.append(("session_init", session.id))

    def session_release(self, session: Session) -> None:
        self.events.append(("session_release", session.id))

    def resource_register(self, session: Session, resource: Resource) -> None:
        self.events.append(("resource_register", resource.id))

    def resource_unregister(self, session: Session, resource: Resource) -> None:
        self.events.append(("resource_unregister", resource.id))

    def classify(self, session: Session, image: bytes) -> tuple[str, str]:
        return f"recorded {len(image)} bytes", "recorder.png"


class FailingBackend(Backend):
    """A GPU backend whose classify raises an unexpected exception."""

    name = "failing"
    type = PluginType.GPU

    def classify(self, session: Session, image: bytes) -> tuple[str, str]:
        raise RuntimeError("device on fire")


class UnavailableBackend(Backend):
    name = "ghost"
    type = PluginType.GPU

    @classmethod
    def probe(cls) -> str | None:
        return "ghostlib is not installed"


def plugin_module(name: str, *backends: type[Backend]) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def vaccel_register_backends(register: Any) -> None:
        for cls in backends:
            register(cls)

    module.vaccel_register_backends = vaccel_register_backends  # type: ignore[attr-defined]
    return module


def make_registry(*backends: type[Backend], with_noop: bool = True) -> PluginRegistry:
    registry = PluginRegistry()
    if with_noop:
        registry.register_plugin(noop, "noop")
    for i, cls in enumerate(backends):
        registry.register_plugin(plugin_module(f"p{i}", cls), f"p{i}")
    return registry


def session(
    registry: PluginRegistry, plugins: list[str] | None = None, flags: int = 0, **cfg: Any
) -> Session:
    return Session(flags, config=Config(plugins=plugins, **cfg), registry=registry)
