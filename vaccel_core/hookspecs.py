"""Plugin hooks, in the register-callback style of simonw/llm.

A plugin module (named by an entry point in the ``vaccel.backends`` or ``vaccel.transports``
group) implements one or both hooks::

    from vaccel_core import hookimpl

    @hookimpl
    def vaccel_register_backends(register):
        register(MyBackend)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "vaccel"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def vaccel_register_backends(register: Callable[[type[Any]], None]) -> None:
    """Register backend classes (subclasses of :class:`vaccel_core.backend.Backend`)."""


@hookspec
def vaccel_register_transports(register: Callable[[type[Any]], None]) -> None:
    """Register transport classes (subclasses of :class:`vaccel_core.transport.Transport`)."""


@hookspec
def vaccel_register_commands(register: Callable[..., None]) -> None:
    """Register ``vaccel`` subcommands: ``register(name, help, configure, run)``.

    ``configure(parser)`` adds the command's arguments to its ``argparse`` subparser; ``run(args)``
    runs it with the parsed namespace and returns the exit status. Keep both cheap to import:
    ``vaccel --help`` asks every plugin for its commands. A plugin whose hook (or ``configure``)
    raises loses its commands, and ``vaccel`` still runs.
    """
