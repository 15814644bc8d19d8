"""GetStatus: what the agent holds, the calls it served and its clients, as a StatusResponse.

Who sees what (docs/status.md). The operator, a caller that presented the agent's
``--admin-token-file`` token (``peer.admin``), sees the whole agent: every client, the calls of
all clients by (method, operation, backend) with their latency buckets, and the calls refused
per limit. Any other client sees only what is its own: its sessions and resources, and one
client entry, itself. It gets no call statistics and no rejections: those are counted for the
whole agent, so even their totals would tell one guest when and how much the others call.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from vaccel_core import __version__
from vaccel_core.transport import Peer

if TYPE_CHECKING:
    from .service import AgentService


def build_status(service: AgentService, peer: Peer) -> Any:
    """The StatusResponse for ``peer``: the operator's view when ``peer.admin``, else the
    client's own."""
    if peer.admin:
        return _operator_view(service, peer)
    return _client_view(service, peer)


def _common(service: AgentService) -> dict[str, Any]:
    return {
        "version": __version__,
        "backends": [i.name for i in service.registry.backends.values() if i.available],
        "session_ttl": service.session_ttl or 0.0,
        "uptime": time.monotonic() - service.started,
    }


def _held(service: AgentService) -> tuple[Counter[str], Counter[str]]:
    """Sessions and resources by the client that holds them."""
    sessions: Counter[str] = Counter()
    resources: Counter[str] = Counter()
    with service._lock:
        for record in service._sessions.values():
            sessions[record.owner] += 1
            resources[record.owner] += len(record.resources)
    return sessions, resources


def _client(pb: Any, peer_id: str, stats: Any, sessions: int, caller: bool) -> Any:
    return pb.ClientStatus(
        id=peer_id,
        description=stats.description,
        transport=stats.transport,
        sessions=sessions,
        calls=stats.calls,
        errors=stats.errors,
        in_flight=stats.in_flight,
        connected_at=stats.connected_at,
        caller=caller,
    )


def _operator_view(service: AgentService, peer: Peer) -> Any:
    """Everything the agent holds, every client and all calls (for its operator)."""
    from .telemetry import BUCKETS

    telemetry = service.telemetry
    pb = service.pb
    sessions, resources = _held(service)
    c = service.counts()
    reply = pb.StatusResponse(
        **_common(service),
        sessions=sum(sessions.values()),
        resources=sum(resources.values()),
        blobs=c["blobs"],
        blob_bytes=c["blob_bytes"],
        peers=c["peers"],
        blob_uploads=service.blobs.uploads_completed,
        blob_hits=service.blobs.hits,
        sessions_released=service.sessions_released,
        view_all=True,
        bucket_bounds=BUCKETS,
        rejections=telemetry.rejections(),
    )
    for (method, operation, backend), stats in sorted(telemetry.calls().items()):
        reply.calls.add(
            method=method,
            operation=operation,
            backend=backend,
            calls=stats.calls,
            errors=stats.errors,
            seconds=stats.seconds,
            buckets=stats.buckets,
        )
    peers = telemetry.peers()
    for peer_id in sorted(peers, key=lambda p: (peers[p].connected_at, p)):
        reply.clients.append(
            _client(pb, peer_id, peers[peer_id], sessions[peer_id], peer_id == peer.id)
        )
    return reply


def _client_view(service: AgentService, peer: Peer) -> Any:
    """What ``peer`` holds, and itself as the one client (nothing of the others)."""
    pb = service.pb
    with service._lock:
        mine = service._sessions_of(peer.id)
        attached = peer.id in service._peers
    own = service.telemetry.peer(peer.id)
    reply = pb.StatusResponse(
        **_common(service),
        sessions=len(mine),
        resources=sum(len(r.resources) for r in mine),
        peers=1 if attached else 0,
    )
    if own is not None:
        reply.clients.append(_client(pb, peer.id, own, len(mine), True))
    return reply
