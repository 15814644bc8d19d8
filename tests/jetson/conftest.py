"""Fixtures for the jetson backend: the stand-in modules, a networks folder, a registry.

The stand-in (``standin/``) replaces NVIDIA's jetson_inference / jetson_utils, which exist only
on a Jetson with JetPack; everything else (Pillow decoding, run folders, network files,
sessions, the registry) is real.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from vaccel_core import Config, PluginRegistry, Session

STANDIN_DIR = Path(__file__).parent / "standin"

#: Four ImageNet-style label lines: a solid image of value v is classified as class v % 4.
LABELS = [
    "n01440764 tench, Tinca tinca",
    "n01443537 goldfish, Carassius auratus",
    "n02099601 golden retriever",
    "n02123045 tabby, tabby cat",
]


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, ModuleType]]:
    """Put the stand-in modules on sys.path, freshly imported (counters at zero)."""
    pytest.importorskip("PIL", reason="Pillow is needed to decode images (extra 'onnx')")
    for name in ("jetson_inference", "jetson_utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(STANDIN_DIR))
    import jetson_inference
    import jetson_utils

    yield jetson_inference, jetson_utils
    for name in ("jetson_inference", "jetson_utils"):
        sys.modules.pop(name, None)


def _touch(path: Path, text: str = "stand-in network file\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def networks(tmp_path: Path) -> Path:
    """A networks folder: googlenet in upstream's flat layout, the other defaults in
    jetson-inference's sub-folder layout (the files are placeholders the stand-in accepts)."""
    root = tmp_path / "networks"
    _touch(root / "googlenet.prototxt")
    _touch(root / "bvlc_googlenet.caffemodel")
    _touch(root / "ilsvrc12_synset_words.txt", "\n".join(LABELS) + "\n")
    _touch(root / "SSD-Mobilenet-v2" / "ssd_mobilenet_v2_coco.uff")
    _touch(root / "SSD-Mobilenet-v2" / "ssd_coco_labels.txt", "unlabeled\nperson\n")
    seg = root / "FCN-ResNet18-Pascal-VOC-320x320"
    for name in ("fcn_resnet18.onnx", "classes.txt", "colors.txt"):
        _touch(seg / name)
    pose = root / "Pose-ResNet18-Body"
    for name in ("pose_resnet18_body.onnx", "human_pose.json", "colors.txt"):
        _touch(pose / name)
    _touch(root / "MonoDepth-FCN-Mobilenet" / "monodepth_fcn_mobilenet.onnx")
    return root


@pytest.fixture
def rundir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


@pytest.fixture
def make_session(
    standin: tuple[ModuleType, ModuleType],
    networks: Path,
    rundir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Session]]:
    """Sessions on a registry that holds only the jetson backend (with the stand-in)."""
    monkeypatch.setenv("VACCEL_IMAGENET_NETWORKS", str(networks))
    monkeypatch.setenv("VACCEL_RUNDIR", str(rundir))
    import vaccel_plugins.jetson.plugin as plugin

    registry = PluginRegistry()
    registry.register_plugin(plugin, "jetson")
    info = registry.backends["jetson"]
    assert info.available, info.reason
    sessions: list[Session] = []

    def make(**extra: str) -> Session:
        config = Config.from_env()
        config.plugins = ["jetson"]
        config.apply(extra)
        session = Session(config=config, registry=registry)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.release()
    registry.shutdown()


def png(value: int, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> bytes:
    """A solid-colour PNG (exact pixel values after decoding)."""
    from PIL import Image

    buf = io.BytesIO()
    colour = (value,) * len(mode) if mode != "L" else value
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()
