"""The conformance kit (vaccel_core.testing) on the built-in backends."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vaccel_core import Op, Resource, ResourceType, Session
from vaccel_core.testing import BackendConformance, sample_resources


class TestNoop(BackendConformance):
    backend = "noop"


class TestOnnxruntime(BackendConformance):
    """onnxruntime with small generated models (no downloaded weights): a 1000-class image
    'classifier' serves classify and the model operations."""

    backend = "onnxruntime"

    def make_resources(self, session: Session) -> dict[ResourceType, Resource]:
        resources = sample_resources(session)
        pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pyvaccel[onnx]')")
        from tests.onnxruntime.ort_fixtures import tiny_image_model

        global _TINY
        if _TINY is None:
            _TINY = tiny_image_model(1000)
        model = Resource.from_buffer(_TINY, ResourceType.MODEL, name="tiny.onnx")
        model.register(session)
        resources[ResourceType.MODEL] = model
        return resources

    def sample_args(self, op: Op, resources: Mapping[ResourceType, Resource]) -> tuple[Any, ...]:
        if op is Op.MODEL_RUN:
            image = np.zeros((1, 3, 224, 224), dtype=np.float32)
            return (resources[ResourceType.MODEL], {"image": image})
        return super().sample_args(op, resources)


_TINY: bytes | None = None


class TestJetsonStandIn(BackendConformance):
    """jetson on the labelled stand-in of NVIDIA's jetson_inference / jetson_utils
    (tests/jetson/standin: it exists only on a Jetson with JetPack), its network files
    placeholders; the agent gets the same environment and import path."""

    backend = "jetson"

    @pytest.fixture(autouse=True)
    def _standin(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        pytest.importorskip("PIL", reason="Pillow is needed to decode images (extra 'onnx')")
        from tests.jetson.conftest import LABELS, STANDIN_DIR

        for name in ("jetson_inference", "jetson_utils"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.syspath_prepend(str(STANDIN_DIR))
        folder = tmp_path / "networks"  # placeholders the stand-in accepts
        files = {
            "googlenet.prototxt": "",
            "bvlc_googlenet.caffemodel": "",
            "ilsvrc12_synset_words.txt": "\n".join(LABELS) + "\n",
            "SSD-Mobilenet-v2/ssd_mobilenet_v2_coco.uff": "",
            "SSD-Mobilenet-v2/ssd_coco_labels.txt": "unlabeled\nperson\n",
            "FCN-ResNet18-Pascal-VOC-320x320/fcn_resnet18.onnx": "",
            "FCN-ResNet18-Pascal-VOC-320x320/classes.txt": "",
            "FCN-ResNet18-Pascal-VOC-320x320/colors.txt": "",
            "Pose-ResNet18-Body/pose_resnet18_body.onnx": "",
            "Pose-ResNet18-Body/human_pose.json": "",
            "Pose-ResNet18-Body/colors.txt": "",
            "MonoDepth-FCN-Mobilenet/monodepth_fcn_mobilenet.onnx": "",
        }
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text or "stand-in network file\n")
        monkeypatch.setenv("VACCEL_IMAGENET_NETWORKS", str(folder))
        monkeypatch.setenv("VACCEL_RUNDIR", str(tmp_path))
