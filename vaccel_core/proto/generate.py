"""Regenerate the protobuf modules from ``agent.proto``: ``python -m vaccel_core.proto.generate``.

Needs grpcio-tools (a development tool, not a runtime dependency). The .proto is compiled under
its package path (``vaccel_core/proto/agent.proto``) so that its descriptor name cannot clash
with another ``agent.proto`` in the same process.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent.parent
PROTO_NAME = "vaccel_core/proto/agent.proto"
OUTPUTS = ("agent_pb2.py", "agent_pb2.pyi")


#: First line of agent_pb2.py: the sha256 of the agent.proto it was generated from, so that a
#: test can tell a stale module even where grpcio-tools is not installed.
SOURCE_MARK = "# agent.proto sha256: "


def proto_digest() -> str:
    """sha256 of agent.proto as it is now."""
    return hashlib.sha256((ROOT / PROTO_NAME).read_bytes()).hexdigest()


def recorded_digest(module: Path = PROTO_DIR / "agent_pb2.py") -> str | None:
    """The agent.proto digest recorded in a generated module (None if absent)."""
    first = module.read_text().split("\n", 1)[0]
    return first[len(SOURCE_MARK) :] if first.startswith(SOURCE_MARK) else None


def generate(out_dir: Path) -> list[Path]:
    """Compile agent.proto into ``out_dir``; returns the files written."""
    from grpc_tools import protoc  # development dependency

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                str(ROOT / PROTO_NAME),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit status {rc} on {PROTO_NAME}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in OUTPUTS:
            target = out_dir / name
            text = (Path(tmp) / "vaccel_core" / "proto" / name).read_text()
            if name.endswith(".pyi"):
                text = "# ruff: noqa\n" + text  # generated stubs: not ours to lint
            else:
                text = f"{SOURCE_MARK}{proto_digest()}\n" + text
            target.write_text(text)
            written.append(target)
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
