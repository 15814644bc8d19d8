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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import NotSupportedError
from .flags import PluginType
from .ops import CATALOG, Op

if TYPE_CHECKING:
    from .batching import BatchItem
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
    #: Operations this backend can run in batches (:meth:`prepare_batch`, :meth:`run_batch`);
    #: empty: it never batches. See docs/plugins.md, "Batched execution".
    batch_operations: ClassVar[frozenset[Op]] = frozenset()

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

    # Batched execution (optional; used only for the operations in batch_operations).
    def prepare_batch(self, session: Session, op: Op, args: tuple[Any, ...]) -> BatchItem | None:
        """Check and prepare one call of ``op`` (arguments already validated against the
        catalog) for a batch, in the caller's thread: decode, preprocess, check shapes. Raise
        a VaccelError for a bad input (only this call fails); return None when this call
        cannot batch (e.g. a model without a batch dimension): it then runs alone."""
        return None

    def run_batch(self, op: Op, items: Sequence[BatchItem]) -> Sequence[Any]:
        """Run prepared calls of ``op`` (all with the same :attr:`BatchItem.key`) as one
        batch; one result per item, in order, each exactly what the operation's own method
        returns for that call alone. An exception fails the batch: each call is then run
        again alone (``run_batch`` with one item), so that only a culprit fails."""
        raise NotSupportedError(f"{op.spec.method}: backend {self.name!r} does not batch")
