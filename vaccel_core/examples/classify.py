"""``classify IMAGE [ITERATIONS] [MODEL]``: upstream vAccel's image classification example.

Prints the lines upstream's example prints; for the bundled ``examples/photos/dog.jpg`` with the
onnxruntime backend::

    Initialized session with id: 1
    Image size: 163759B
    classification tags: 37.816% malamute

The backend comes from ``VACCEL_PLUGINS`` (``onnxruntime`` locally, ``rpc`` through an agent).
With MODEL, that file is registered with the session as a MODEL resource and classifies
instead of the backend's default model. With ``VACCEL_PROFILING_ENABLED=1`` the session's
timing regions are printed at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "classify"


class UsageError(Exception):
    """A bad command-line argument (reported without a traceback, exit status 1)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Classify an image with vAccel (ImageNet classes), printing upstream's "
        "example lines.",
        epilog="The backend comes from VACCEL_PLUGINS (onnxruntime locally; rpc through an "
        "agent, found at VACCEL_RPC_ADDRESS, e.g. unix:///run/vaccel.sock). "
        "VACCEL_PROFILING_ENABLED=1 prints the timing regions.",
    )
    from vaccel_core import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("image", metavar="IMAGE", help="image file (JPEG, PNG, ...)")
    parser.add_argument(
        "iterations", metavar="ITERATIONS", nargs="?", default="1", help="times to run (default 1)"
    )
    parser.add_argument(
        "model", metavar="MODEL", nargs="?", default=None, help="ONNX classifier to use instead"
    )
    return parser


def _iterations(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"ITERATIONS: expected a positive integer, got {text!r}") from None
    if value < 1:
        raise UsageError(f"ITERATIONS: expected a positive integer, got {value}")
    return value


def _read(path: str, what: str) -> bytes:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{what}: {path!r} does not exist or is not a file")
    try:
        return file.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {path!r}: {exc.strerror or exc}") from None


def run(image_path: str, iterations: int, model: str | None) -> int:
    """Open a session, optionally register MODEL, classify ITERATIONS times, print the tags."""
    from vaccel_core import Resource, ResourceType, Session

    image = _read(image_path, "IMAGE")
    if model is not None and not Path(model).is_file():
        raise UsageError(f"MODEL: {model!r} does not exist or is not a file")
    with Session() as session:
        print(f"Initialized session with id: {session.id}", flush=True)
        if model is not None:
            Resource(model, ResourceType.MODEL).register(session)
        print(f"Image size: {len(image)}B", flush=True)
        for i in range(iterations):
            tags, _imgname = session.classify(image)
            if i == 0:
                print(f"classification tags: {tags}", flush=True)
        if session.profiler is not None:
            for region in session.profile():
                print(region.format())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point; returns the exit status."""
    from vaccel_core.errors import VaccelError

    args = _parser().parse_args(argv)
    try:
        return run(args.image, _iterations(args.iterations), args.model)
    except (UsageError, VaccelError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
