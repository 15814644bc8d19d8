"""Logging through the standard ``logging`` module, configured from VACCEL_LOG_LEVEL."""

from __future__ import annotations

import logging
import sys

from .config import Config

logger = logging.getLogger("vaccel")

_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG}
_HANDLER_MARK = "_vaccel_handler"
_configured = False


def ensure_logging(config: Config) -> None:
    """Configure logging once per process (the first session or registry does it)."""
    global _configured
    if not _configured:
        configure_logging(config)


def configure_logging(config: Config) -> None:
    """Attach one handler to the ``vaccel`` logger (stderr, or VACCEL_LOG_FILE) at the level.

    Idempotent: a second call replaces the handler this function added, never one a host
    application added itself.
    """
    global _configured
    _configured = True
    logger.setLevel(_LEVELS.get(config.log_level, logging.ERROR))
    for old in list(logger.handlers):
        if getattr(old, _HANDLER_MARK, False):
            logger.removeHandler(old)
            old.close()
    handler: logging.Handler
    if config.log_file:
        handler = logging.FileHandler(config.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03d - <%(levelname)s> %(message)s", "%Y.%m.%d-%H:%M:%S"
        )
    )
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.propagate = False
