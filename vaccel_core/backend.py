"""The backend contract: what a plugin that runs operations provides.

A backend is a class. It declares its name, version, type flags and (by defining methods named
after the catalog's ``method`` names) the operations it implements. One instance serves the
whole process; per-session state lives in the backend, keyed by ``session.id``.

Every operation method receives the calling :class:`~vaccel_core.session.Session` first and then
the arguments already validated against the catalog (see :mod:`vaccel_core.ops`)::

    class MyBackend(Backend):
        name = "mine"
        type = PluginType.CPU

        def classify(self, session, image: bytes) -> tuple[str, str]:
            ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .flags import PluginType
from .ops import CATALOG, Op

if TYPE_CHECKING:
    from .resource import Resource
    from .session import Session


class Backend:
    """Base class of every backend plugin; override what you support."""

    #: Unique backend name, as used in ``VACCEL_PLUGINS`` (``libvaccel-NAME.so`` maps to it).
    name: ClassVar[str] = ""
    #: Version of the backend (shown by ``vaccel plugins``).
    version: ClassVar[str] = "0"
    #: Type flags (upstream values): a session's flags select backends by these bits.
    type: ClassVar[PluginType] = PluginType.NONE
    #: One-line description.
    description: ClassVar[str] = ""

    @classmethod
    def operations(cls) -> frozenset[Op]:
        """The operations this backend implements: those whose method the class overrides."""
        found = []
        for op, spec in CATALOG.items():
            impl = getattr(cls, spec.method, None)
            if impl is not None and impl is not getattr(Backend, spec.method, None):
                found.append(op)
        return frozenset(found)

    @classmethod
    def probe(cls) -> str | None:
        """Return why this backend cannot run here (e.g. "onnxruntime is not installed"),
        or None when it can. Must be cheap and must not raise."""
        return None

    def details(self) -> dict[str, Any]:
        """Extra facts for ``vaccel plugins`` (e.g. the execution providers in use)."""
        return {}

    # Lifecycle: init/fini once per process; session and resource hooks per session.
    def init(self) -> None:
        """Prepare the backend (called once, before its first session)."""

    def fini(self) -> None:
        """Release everything the backend holds (called once, at shutdown)."""

    def session_init(self, session: Session) -> None:
        """A session that may use this backend was created."""

    def session_release(self, session: Session) -> None:
        """The session is gone: free whatever was kept for it."""

    def resource_register(self, session: Session, resource: Resource) -> None:
        """A resource was registered with a session that uses this backend."""

    def resource_unregister(self, session: Session, resource: Resource) -> None:
        """The resource was unregistered from the session (free cached models etc.)."""
