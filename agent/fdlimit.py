"""Room for the connections the agent's limits allow: raise the soft limit on open files.

Every connection costs the agent a file descriptor (two for a relayed vsock one). With the
common soft limit of 1024, 1000 idle connections once locked every new client out; the agent
therefore raises its soft limit to what its ``--max-connections`` per listener needs (at most
the hard limit) and warns when even the hard limit is too low.
"""

from __future__ import annotations

import logging

#: File descriptors kept for everything but client connections (blobs, logs, backends).
RESERVED = 256

logger = logging.getLogger("vaccel.agent")


def ensure_fd_room(listeners: int, max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to fit ``listeners`` x ``max_connections`` relayed
    connections plus :data:`RESERVED`; returns how many connections per listener fit now
    (``max_connections``, or fewer when even the hard limit is too low)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return max_connections
    listeners = max(1, listeners)
    needed = listeners * max_connections * 2 + RESERVED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = hard == resource.RLIM_INFINITY
    target = needed if unlimited else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-files limit to %d: %s", target, exc)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return max_connections
    fits = max(1, (soft - RESERVED) // (2 * listeners))
    logger.warning(
        "the open-files limit (%d) is below what %d listener(s) x --max-connections %d need "
        "(%d): serving at most %d connections per listener (raise the hard limit, e.g. "
        "LimitNOFILE=, or lower --max-connections)",
        soft,
        listeners,
        max_connections,
        needed,
        fits,
    )
    return fits
