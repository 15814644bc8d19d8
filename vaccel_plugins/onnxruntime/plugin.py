"""Entry point of the onnxruntime backend (``vaccel.backends``: ``onnxruntime``).

Cheap to import: neither onnxruntime nor the backend module is imported here; the backend
class is loaded when plugins register, and onnxruntime when the backend first runs a model.
"""

from __future__ import annotations

from typing import Any

from vaccel_core import hookimpl


@hookimpl
def vaccel_register_backends(register: Any) -> None:
    from .backend import OnnxRuntimeBackend

    register(OnnxRuntimeBackend)


def _configure_models(parser: Any) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=["list", "build", "verify"],
        help="list: each model, its weights and whether it is built and intact (default); "
        "build: convert the weights into the cache folder once; verify: re-hash the cached "
        "file and run it once in onnxruntime",
    )
    parser.add_argument(
        "name",
        nargs="?",
        default=None,
        metavar="NAME",
        help="one model (e.g. efficientnet-lite0); default every known model",
    )
    parser.epilog = "Models are cached in VACCEL_CACHE_DIR (default ~/.cache/vaccel/models)."


def _run_models(args: Any) -> int:
    import sys

    try:
        from . import cli
    except ImportError as exc:
        print(f"vaccel models: the onnxruntime backend is not available: {exc}", file=sys.stderr)
        return 1

    return int(cli.run(args))


@hookimpl
def vaccel_register_commands(register: Any) -> None:
    register(
        "models",
        "list, build and verify the models the onnxruntime backend knows",
        _configure_models,
        _run_models,
    )
