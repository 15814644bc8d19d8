"""Our agent's sessions and resources as upstream's RPCs name them.

Sessions are the agent's own (:class:`vaccel_agent.service.AgentService`), owned by the connection
that created them: another client's session is "Unknown session", exactly as one that does not
exist. Upstream ids are positive (a non-positive one is ``Invalid ID``, as upstream's
``VaccelId``).

Resources: upstream's are global and may be registered with several sessions; ours belong to
one session each. Registering an existing upstream resource with another session of the same
client (``RegisterRequest.resource_id`` > 0) gives that session its own registration of the same
files (the blobs are shared, nothing is copied), recorded under the guest's id as an alias in
the session (``Session.meta``), so every later call names it by the id the guest knows. A
resource id is valid for a client while any of its sessions holds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vaccel_core.errors import NotFoundError
from vaccel_core.resource import Resource
from vaccel_core.transport import Peer

from . import errors

if TYPE_CHECKING:
    from vaccel_agent.service import AgentService, _AgentResource, _AgentSession

#: ``Session.meta`` key: the guest's resource id -> our id, for resources registered again.
ALIASES = "upstream_resource_aliases"


def check_id(value: int) -> int:
    """An upstream id must be positive (``VaccelId::try_from``)."""
    if value <= 0:
        raise errors.invalid_id(value)
    return value


class State:
    """Lookups of sessions and resources for one agent, in upstream's terms."""

    def __init__(self, agent: AgentService) -> None:
        self.agent = agent

    def session(self, session_id: int, peer: Peer) -> _AgentSession:
        """The caller's session, or NOT_FOUND ``Unknown session <id>``."""
        check_id(session_id)
        try:
            return self.agent._session(session_id, peer, "upstream")
        except NotFoundError:
            raise errors.not_found(f"Unknown session {session_id}") from None

    @staticmethod
    def aliases(record: _AgentSession) -> dict[int, int]:
        """The session's aliases (guest id -> our id), created on first use."""
        meta: dict[str, Any] = record.session.meta
        table: dict[int, int] = meta.setdefault(ALIASES, {})
        return table

    def in_session(self, record: _AgentSession, resource_id: int) -> _AgentResource | None:
        """The session's registration of the guest's resource ``resource_id``, or None."""
        found = record.resources.get(resource_id)
        if found is not None:
            return found
        ours = self.aliases(record).get(resource_id)
        return record.resources.get(ours) if ours is not None else None

    def registrations(self, resource_id: int, peer: Peer) -> Iterator[tuple[Any, Any]]:
        """Every (session, registration) of the caller that holds the guest's resource."""
        for record in self.agent._sessions_of(peer.id):
            found = self.in_session(record, resource_id)
            if found is not None:
                yield record, found

    def any_registration(self, resource_id: int, peer: Peer, what: str) -> _AgentResource:
        """One registration of the caller's resource ``resource_id`` (any session), or
        NOT_FOUND ``Unknown <what> <id>``."""
        check_id(resource_id)
        for _, found in self.registrations(resource_id, peer):
            return found
        raise errors.not_found(f"Unknown {what} {resource_id}")

    def resource_for(
        self, record: _AgentSession, resource_id: int, peer: Peer, what: str
    ) -> tuple[Resource, bool]:
        """The resource the guest calls ``resource_id`` for an operation of ``record``: the
        session's own registration, else another session's (then not registered here: the
        operation refuses it), else NOT_FOUND."""
        mine = self.in_session(record, resource_id)
        if mine is not None:
            return mine.resource, True
        return self.any_registration(resource_id, peer, what).resource, False

    def our_id(self, record: _AgentSession, resource_id: int) -> int | None:
        """Our id of the session's registration of the guest's ``resource_id``."""
        found = self.in_session(record, resource_id)
        return found.resource.id if found is not None else None
