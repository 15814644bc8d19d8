"""Upstream vAccel's agent service (``vaccel.sync.agent.AgentService``, vaccel-rust 0.5 /
vAccel 0.8) served by our agent, so that guests built on upstream's C library and RPC plugin
use our host backends. See docs/upstream.md, "Upstream guests on our agent"."""

from __future__ import annotations

from .service import UpstreamAgentService, services_for

__all__ = ["UpstreamAgentService", "services_for"]
