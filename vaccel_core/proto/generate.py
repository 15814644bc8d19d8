"""Regenerate the protobuf modules: ``python -m vaccel_core.proto.generate``.

Compiles ``agent.proto`` (our agent's schema) and the ``upstream/*.proto`` files (upstream
vAccel's schema, issue 11). Needs grpcio-tools (a development tool, not a runtime dependency).
Every .proto is compiled under its package path (``vaccel_core/proto/agent.proto``,
``vaccel_core/proto/upstream/session.proto``) so that its descriptor name cannot clash with
another file of the same name in the same process.

The first line of every generated ``*_pb2.py`` records the sha256 of the .proto it came from,
so that a test can tell a stale module even where grpcio-tools is not installed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

from .upstream import MODULES as UPSTREAM_PROTOS  # one list: each .proto is one module

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent.parent
PROTO_NAME = "vaccel_core/proto/agent.proto"
OUTPUTS = ("agent_pb2.py", "agent_pb2.pyi")

#: Upstream vAccel's schema (vaccel-rust 0.5.0 ``vaccel-rpc-proto/protos``), our own files
#: (UPSTREAM_PROTOS of them).
UPSTREAM_DIR = "vaccel_core/proto/upstream"

#: First line of agent_pb2.py: the sha256 of the agent.proto it was generated from.
SOURCE_MARK = "# agent.proto sha256: "


def source_mark(proto: str) -> str:
    """The first-line prefix of the module generated from ``proto`` (a path under ROOT)."""
    return SOURCE_MARK if proto == PROTO_NAME else f"# {Path(proto).name} sha256: "


def all_protos() -> list[str]:
    """Every .proto this script compiles, as paths relative to the repository root."""
    return [PROTO_NAME] + [f"{UPSTREAM_DIR}/{name}.proto" for name in UPSTREAM_PROTOS]


def module_path(proto: str, base: Path = ROOT) -> Path:
    """Where the ``*_pb2.py`` generated from ``proto`` lives under ``base``."""
    return base / proto.replace(".proto", "_pb2.py")


def proto_digest(proto: str = PROTO_NAME) -> str:
    """sha256 of a .proto (default agent.proto) as it is now."""
    return hashlib.sha256((ROOT / proto).read_bytes()).hexdigest()


def recorded_digest(
    module: Path = PROTO_DIR / "agent_pb2.py", proto: str = PROTO_NAME
) -> str | None:
    """The .proto digest recorded in a generated module (None if absent)."""
    mark = source_mark(proto)
    first = module.read_text().split("\n", 1)[0]
    return first[len(mark) :] if first.startswith(mark) else None


def _compile(proto: str, tmp: str) -> None:
    from grpc_tools import protoc  # development dependency

    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}", proto]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit status {rc} on {proto}")


def _write(proto: str, tmp: str, target_dir: Path) -> list[Path]:
    written = []
    stem = Path(proto).stem
    for name in (f"{stem}_pb2.py", f"{stem}_pb2.pyi"):
        text = (Path(tmp) / Path(proto).parent / name).read_text()
        if name.endswith(".pyi"):
            text = "# ruff: noqa\n" + text  # generated stubs: not ours to lint
        else:
            text = f"{source_mark(proto)}{proto_digest(proto)}\n" + text
        target = target_dir / name
        target.write_text(text)
        written.append(target)
    return written


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto: agent's modules into ``out_dir``, upstream's into
    ``out_dir / "upstream"``; returns the files written."""
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for proto in all_protos():
            _compile(proto, tmp)
            target_dir = out_dir if proto == PROTO_NAME else out_dir / "upstream"
            target_dir.mkdir(parents=True, exist_ok=True)
            written += _write(proto, tmp, target_dir)
    assert [p.name for p in written[:2]] == list(OUTPUTS)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_DIR, help="output folder")
    args = parser.parse_args(argv)
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        print("generate: needs grpcio-tools (pip install grpcio-tools)", file=sys.stderr)
        return 1
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
