"""The jetson backend against the stand-in jetson_inference / jetson_utils (see standin/)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from vaccel_core import (
    BackendError,
    Config,
    InvalidArgumentError,
    NotFoundError,
    PluginType,
    Session,
)
from vaccel_core.ops import classification_tag
from vaccel_plugins.jetson.backend import RUN_DIR_META, JetsonBackend, setting
from vaccel_plugins.jetson.networks import KINDS, resolve

from .conftest import png

pytestmark = pytest.mark.timeout(60)

MakeSession = Callable[..., Session]


# Availability ---------------------------------------------------------------------------------
def test_probe_reports_missing_modules_without_the_standin(monkeypatch: pytest.MonkeyPatch):
    for name in ("jetson_inference", "jetson_utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    reason = JetsonBackend.probe()
    assert reason is not None
    assert reason.startswith("jetson_inference and jetson_utils are not importable")
    assert "JetPack" in reason


def test_probe_is_clear_with_the_standin(standin: tuple[ModuleType, ModuleType]):
    assert JetsonBackend.probe() is None


def test_declares_type_and_operations():
    assert JetsonBackend.type == PluginType.GPU | PluginType.JETSON
    names = sorted(op.spec.method for op in JetsonBackend.operations())
    assert names == ["classify", "depth", "detect", "pose", "segment"]


def test_plugin_module_import_is_cheap():
    code = (
        "import sys, vaccel_plugins.jetson.plugin as p; "
        "heavy = ('jetson_inference', 'jetson_utils', 'PIL', 'grpc'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_vaccel_plugins_cli_reports_jetson_unavailable_here(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    env.pop("PYTHONPATH", None)  # the stand-in must not be visible
    out = subprocess.run(
        [sys.executable, "-m", "vaccel_core.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    jetson = next(b for b in report["backends"] if b["name"] == "jetson")
    assert jetson["status"] == "unavailable"
    assert "jetson_inference and jetson_utils are not importable" in jetson["reason"]
    assert set(jetson["type"]) >= {"GPU", "JETSON"}
    assert not [f for f in report["failures"] if f["name"] == "jetson"]


# Classify -------------------------------------------------------------------------------------
def test_classify_tags_follow_upstream_format(make_session: MakeSession):
    with make_session() as session:
        tags, imgname = session.classify(png(2))
    assert tags == "86.768% golden retriever"
    assert re.fullmatch(r"\d+\.\d{3}% .+", tags)
    assert classification_tag(0.5, "x") == "50.000% x"
    assert imgname.endswith(".jpg")


def test_classify_uses_the_request_image(make_session: MakeSession):
    with make_session() as session:
        assert session.classify(png(0))[0].endswith("% tench, Tinca tinca")
        assert session.classify(png(3))[0].endswith("% tabby, tabby cat")
        # grayscale and RGBA inputs are converted to RGB first
        assert session.classify(png(1, mode="L"))[0].endswith("% goldfish, Carassius auratus")
        assert session.classify(png(2, mode="RGBA"))[0].endswith("% golden retriever")


def test_outputs_go_to_the_session_run_folder_and_are_removed_on_release(
    make_session: MakeSession, rundir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    session = make_session()
    folder = Path(session.meta[RUN_DIR_META])
    assert folder.parent.parent == rundir
    assert folder.name == f"session.{session.id}"
    assert not folder.exists()  # created with the first output, not before
    _, name = session.classify(png(1))
    assert oct(folder.stat().st_mode & 0o777) == oct(0o700)
    out = Path(name)
    assert out.parent == folder
    assert out.is_file() and out.stat().st_size > 0
    from PIL import Image

    with Image.open(out) as pic:
        assert pic.size == (32, 24)
    second = Path(session.classify(png(1))[1])
    assert second != out and second.parent == folder
    assert list(cwd.iterdir()) == []  # upstream writes processedImg.jpg here; we do not
    session.release()
    assert not folder.exists()


def test_outputs_are_kept_when_configured(
    make_session: MakeSession, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("VACCEL_JETSON_KEEP_OUTPUTS", "1")
    session = make_session()
    name = Path(session.classify(png(1))[1])
    session.release()
    assert name.is_file()


def test_sessions_get_separate_run_folders(make_session: MakeSession):
    a, b = make_session(), make_session()
    name_a, name_b = Path(a.classify(png(0))[1]), Path(b.classify(png(0))[1])
    assert name_a.parent != name_b.parent
    a.release()
    assert not name_a.exists() and name_b.exists()


# Network reuse --------------------------------------------------------------------------------
def test_networks_are_created_once_and_reused_across_calls_and_sessions(
    make_session: MakeSession, standin: tuple[ModuleType, ModuleType], networks: Path
):
    inference, _ = standin
    for _ in range(2):
        with make_session() as session:
            for value in range(3):
                session.classify(png(value))
    assert inference.CREATED == {"imageNet": 1}
    (cls_name, argv) = inference.ARGVS[0]
    assert cls_name == "imageNet"
    assert f"--model={networks / 'bvlc_googlenet.caffemodel'}" in argv
    assert f"--prototxt={networks / 'googlenet.prototxt'}" in argv
    assert f"--labels={networks / 'ilsvrc12_synset_words.txt'}" in argv
    assert "--input-blob=data" in argv and "--output-blob=prob" in argv


def test_concurrent_sessions_create_the_network_once(
    make_session: MakeSession, standin: tuple[ModuleType, ModuleType]
):
    inference, _ = standin
    sessions = [make_session() for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(sessions))

    def work(session: Session) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(3):
                assert session.classify(png(2))[0] == "86.768% golden retriever"
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert inference.CREATED == {"imageNet": 1}


def test_details_report_networks_dir_and_loaded_networks(make_session: MakeSession, networks: Path):
    session = make_session()
    backend = session.backend_for(next(iter(JetsonBackend.operations())))
    assert backend.details()["networks_dir"] == str(networks)
    assert backend.details()["loaded"] == []
    session.classify(png(0))
    session.classify(png(0))
    details = backend.details()
    assert details["networks_dir_exists"] is True
    assert details["loaded"] == ["imageNet:googlenet (2 uses)"]
    assert details["networks"]["classify"] == "googlenet"
    assert details["keep_outputs"] is False


# The other operations -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "cls_name", "model"),
    [
        ("detect", "detectNet", "SSD-Mobilenet-v2/ssd_mobilenet_v2_coco.uff"),
        ("segment", "segNet", "FCN-ResNet18-Pascal-VOC-320x320/fcn_resnet18.onnx"),
        ("pose", "poseNet", "Pose-ResNet18-Body/pose_resnet18_body.onnx"),
        ("depth", "depthNet", "MonoDepth-FCN-Mobilenet/monodepth_fcn_mobilenet.onnx"),
    ],
)
def test_image_ops_write_their_output_into_the_run_folder(
    make_session: MakeSession,
    standin: tuple[ModuleType, ModuleType],
    networks: Path,
    op: str,
    cls_name: str,
    model: str,
):
    inference, _ = standin
    with make_session() as session:
        folder = Path(session.meta[RUN_DIR_META])
        first = Path(getattr(session, op)(png(60, size=(40, 30))))
        second = Path(getattr(session, op)(png(90, size=(40, 30))))
        assert first.parent == folder and second.parent == folder
        assert first.is_file() and second.is_file() and first != second
        assert first.name.startswith(f"{op}-")
        from PIL import Image

        with Image.open(first) as pic:
            assert pic.size == (40, 30)
    assert {cls_name: 1} == inference.CREATED
    assert f"--model={networks / model}" in inference.ARGVS[0][1]


def test_detect_passes_the_ssd_output_blobs(
    make_session: MakeSession, standin: tuple[ModuleType, ModuleType]
):
    inference, _ = standin
    with make_session() as session:
        session.detect(png(5))
    argv = inference.ARGVS[0][1]
    assert "--input-blob=Input" in argv
    assert "--output-bbox=NMS" in argv and "--output-count=NMS_1" in argv


# Configuration --------------------------------------------------------------------------------
def test_network_choice_from_models_json_and_vaccel_config(
    make_session: MakeSession, standin: tuple[ModuleType, ModuleType], networks: Path
):
    inference, _ = standin
    (networks / "ResNet-18").mkdir()
    (networks / "ResNet-18" / "ResNet-18.caffemodel").write_text("x")
    (networks / "ResNet-18" / "deploy.prototxt").write_text("x")
    catalog = {
        "classification": {
            "resnet-18": {
                "alias": ["resnet18"],
                "dir": "ResNet-18",
                "model": "ResNet-18.caffemodel",
                "prototxt": "deploy.prototxt",
                "labels": "networks/ilsvrc12_synset_words.txt",
            }
        }
    }
    (networks / "models.json").write_text(json.dumps(catalog))
    with make_session(jetson_classify_network="resnet18") as session:
        assert session.classify(png(2))[0] == "86.768% golden retriever"
    argv = inference.ARGVS[0][1]
    assert f"--model={networks / 'ResNet-18' / 'ResNet-18.caffemodel'}" in argv
    assert f"--labels={networks / 'ilsvrc12_synset_words.txt'}" in argv


def test_settings_prefer_vaccel_config_then_environment(monkeypatch: pytest.MonkeyPatch):
    config = Config()
    assert setting(config, "jetson_detect_network", "ssd-mobilenet-v2") == "ssd-mobilenet-v2"
    monkeypatch.setenv("VACCEL_JETSON_DETECT_NETWORK", "pednet")
    assert setting(config, "jetson_detect_network", "ssd-mobilenet-v2") == "pednet"
    config.apply({"jetson_detect_network": "facenet"})
    assert setting(config, "jetson_detect_network", "ssd-mobilenet-v2") == "facenet"


# Errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [b"definitely not an image", png(3)[:40], b"\x89PNG\r\n\x1a\n" + b"\0" * 64],
    ids=["garbage", "truncated-png", "png-header-only"],
)
def test_undecodable_images_are_invalid_arguments(
    make_session: MakeSession, standin: tuple[ModuleType, ModuleType], data: bytes
):
    inference, _ = standin
    with make_session() as session:
        with pytest.raises(InvalidArgumentError, match=r"^classify: argument 'image': expected"):
            session.classify(data)
        with pytest.raises(InvalidArgumentError, match=r"^detect: argument 'image'"):
            session.detect(data)
        # the session still works after a bad request
        assert session.classify(png(2))[0] == "86.768% golden retriever"
    assert inference.CREATED.get("detectNet", 0) == 0  # rejected before creating the network


def test_empty_image_is_rejected(make_session: MakeSession):
    with make_session() as session, pytest.raises(InvalidArgumentError, match="image"):
        session.classify(b"")
    backend = JetsonBackend()
    with pytest.raises(InvalidArgumentError, match=r"^segment: argument 'image'.*0 bytes"):
        backend.segment(session, b"")


def test_missing_network_files_name_the_paths_searched(make_session: MakeSession, networks: Path):
    (networks / "bvlc_googlenet.caffemodel").unlink()
    session = make_session()
    with pytest.raises(NotFoundError) as err:
        session.classify(png(1))
    message = str(err.value)
    assert "googlenet" in message and "bvlc_googlenet.caffemodel" in message
    assert str(networks / "Googlenet" / "bvlc_googlenet.caffemodel") in message
    assert str(networks / "bvlc_googlenet.caffemodel") in message
    folder = Path(session.meta[RUN_DIR_META])
    session.release()
    assert not folder.exists()


def test_missing_networks_folder_is_not_found(
    make_session: MakeSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("VACCEL_IMAGENET_NETWORKS", str(missing))
    with make_session() as session, pytest.raises(NotFoundError, match="VACCEL_IMAGENET_NETWORKS"):
        session.detect(png(1))
    with pytest.raises(NotFoundError, match=re.escape(str(missing))):
        resolve(KINDS["depth"], "fcn-mobilenet", missing)


def test_unknown_network_is_not_found(make_session: MakeSession):
    session = make_session(jetson_pose_network="no-such-net")
    with pytest.raises(NotFoundError, match="unknown network 'no-such-net'"):
        session.pose(png(1))


def test_network_creation_failure_is_a_backend_error(
    make_session: MakeSession, standin: tuple[ModuleType, ModuleType], monkeypatch
):
    inference, _ = standin

    def broken(*args: object, **kwargs: object) -> None:
        raise Exception("jetson.inference -- imageNet failed to load network")

    monkeypatch.setattr(inference, "imageNet", broken)
    session = make_session()
    with pytest.raises(BackendError, match=r"failed to create imageNet 'googlenet'"):
        session.classify(png(1))


def test_released_session_gets_no_new_run_folder(make_session: MakeSession):
    session = make_session()
    backend = session.backend_for(next(iter(JetsonBackend.operations())))
    folder = Path(session.meta[RUN_DIR_META])
    session.release()
    with pytest.raises(BackendError, match=f"session {session.id} is released"):
        backend.classify(session, png(1))  # a call racing the release
    assert not folder.exists()
