"""The jetson backend: classify, detect, segment, pose and depth on jetson-inference.

The same operations as upstream's jetson plugin, with three differences: each network is
created once per process and reused (upstream creates and destroys it on every call), output
images go into the session's own run folder (upstream writes ``processedImg.jpg`` into the
working directory), and missing modules, folders or files give clear errors.

Settings (``--vaccel-config`` keys first, then the environment, then the default):

=============================  ======================================  ==================
--vaccel-config key            environment variable                    default
=============================  ======================================  ==================
jetson_classify_network        VACCEL_JETSON_CLASSIFY_NETWORK          googlenet
jetson_detect_network          VACCEL_JETSON_DETECT_NETWORK            ssd-mobilenet-v2
jetson_segment_network         VACCEL_JETSON_SEGMENT_NETWORK           fcn-resnet18-voc
jetson_pose_network            VACCEL_JETSON_POSE_NETWORK              resnet18-body
jetson_depth_network           VACCEL_JETSON_DEPTH_NETWORK             fcn-mobilenet
jetson_keep_outputs            VACCEL_JETSON_KEEP_OUTPUTS              0 (remove on release)
rundir                         VACCEL_RUNDIR                           system temp folder
(imagenet_networks)            VACCEL_IMAGENET_NETWORKS                /usr/local/share/...
=============================  ======================================  ==================
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaccel_core import Backend, PluginType
from vaccel_core.config import Config, get_config
from vaccel_core.errors import BackendError
from vaccel_core.log import logger
from vaccel_core.ops import classification_tag

from .images import decode_rgb, to_cuda
from .networks import KINDS, LoadedNetwork, NetworkCache, NetworkFiles, NetworkKind
from .rundir import RunDirs

if TYPE_CHECKING:
    from vaccel_core import Session

#: Modules the backend needs, checked by probe() without importing them, with where they come from.
REQUIRED_MODULES = (
    ("jetson_inference", "jetson-inference, built on a Jetson with JetPack; not on PyPI"),
    ("jetson_utils", "jetson-inference, built on a Jetson with JetPack; not on PyPI"),
    ("PIL", "pip install pillow"),
)

#: Key in ``session.meta`` holding the session's run folder (a str).
RUN_DIR_META = "jetson.run_dir"

_TRUE = {"1", "true", "yes", "on"}


def setting(config: Config, key: str, default: str) -> str:
    """A jetson setting: ``config.extra[key]``, else ``VACCEL_<KEY>``, else the default."""
    value = config.extra.get(key)
    if value is None:
        value = os.environ.get(f"VACCEL_{key.upper()}")
    return value if value not in (None, "") else default


class JetsonBackend(Backend):
    """Image operations on NVIDIA jetson-inference (TensorRT on a Jetson's GPU)."""

    name = "jetson"
    version = "0.1.0"
    type = PluginType.GPU | PluginType.JETSON
    description = "jetson-inference image ops: classify, detect, segment, pose, depth"

    def __init__(self) -> None:
        self._networks = NetworkCache()
        self._modules: tuple[Any, Any] | None = None
        self._modules_lock = threading.Lock()
        self._rundirs: RunDirs | None = None
        self._rundirs_lock = threading.Lock()
        self._font_obj: Any = None

    # Availability ----------------------------------------------------------------------------
    @classmethod
    def probe(cls) -> str | None:
        missing: dict[str, list[str]] = {}
        for module, source in REQUIRED_MODULES:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.setdefault(source, []).append(module)
        if not missing:
            return None
        return "; ".join(
            f"{' and '.join(mods)} {'is' if len(mods) == 1 else 'are'} not importable ({source})"
            for source, mods in missing.items()
        )

    def _jetson(self) -> tuple[Any, Any]:
        """jetson_inference and jetson_utils, imported on first use."""
        with self._modules_lock:
            if self._modules is None:
                try:
                    inference = importlib.import_module("jetson_inference")
                    utils = importlib.import_module("jetson_utils")
                except ImportError as exc:
                    raise BackendError(f"jetson: cannot import jetson-inference: {exc}") from exc
                self._modules = (inference, utils)
            return self._modules

    # Lifecycle -------------------------------------------------------------------------------
    def _run_dirs(self, config: Config | None = None) -> RunDirs:
        with self._rundirs_lock:
            if self._rundirs is None:
                cfg = config or get_config()
                keep = setting(cfg, "jetson_keep_outputs", "0").strip().lower() in _TRUE
                self._rundirs = RunDirs(setting(cfg, "rundir", "") or None, keep=keep)
            return self._rundirs

    def session_init(self, session: Session) -> None:
        path = self._run_dirs(session.config).open(session.id)
        session.meta[RUN_DIR_META] = str(path)  # created with the first output image

    def session_release(self, session: Session) -> None:
        self._run_dirs(session.config).release(session.id)

    def fini(self) -> None:
        if self._rundirs is not None:
            self._rundirs.close()
        self._networks.clear()

    def details(self) -> dict[str, Any]:
        cfg = get_config()
        networks = Path(cfg.imagenet_networks)
        info: dict[str, Any] = {
            "networks_dir": str(networks),
            "networks_dir_exists": networks.is_dir(),
            "networks": {op: self.network_name(op, cfg) for op in KINDS},
            "loaded": [
                f"{n.files.kind.cls_name}:{n.files.name} ({n.uses} uses)"
                for n in self._networks.loaded()
            ],
        }
        if self._rundirs is not None:
            info["run_dir"] = str(self._rundirs.process_dir)
            info["keep_outputs"] = self._rundirs.keep
        return info

    # Networks --------------------------------------------------------------------------------
    @staticmethod
    def network_name(op: str, config: Config) -> str:
        """The network configured for an operation."""
        return setting(config, f"jetson_{op}_network", KINDS[op].default)

    def _network(self, session: Session, op: str) -> LoadedNetwork:
        kind = KINDS[op]
        name = self.network_name(op, session.config)
        networks = Path(session.config.imagenet_networks)
        return self._networks.get(kind, name, networks, lambda files: self._create(kind, files))

    def _create(self, kind: NetworkKind, files: NetworkFiles) -> Any:
        inference, _ = self._jetson()
        cls = getattr(inference, kind.cls_name)
        argv = files.argv()
        logger.info("jetson: creating %s %r from %s", kind.cls_name, files.name, files.source)
        logger.debug("jetson: %s argv: %s", kind.cls_name, argv)
        try:
            return cls(files.name, argv)
        except Exception as exc:  # jetson-inference raises a bare Exception on load failure
            shown = ", ".join(f"{k}={v}" for k, v in files.files.items())
            raise BackendError(
                f"jetson {kind.op}: jetson-inference failed to create {kind.cls_name} "
                f"{files.name!r} from {shown}: {exc}"
            ) from exc

    def _prepare(self, session: Session, op: str, image: bytes) -> tuple[Any, LoadedNetwork, Any]:
        """Decode the image, get the (cached) network; returns (jetson_utils, network, img)."""
        rgb = decode_rgb(op, image)
        network = self._network(session, op)
        _, utils = self._jetson()
        return utils, network, to_cuda(utils, rgb)

    def _save(self, utils: Any, session: Session, op: str, img: Any) -> str:
        path = self._run_dirs(session.config).output_path(session.id, op)
        utils.cudaDeviceSynchronize()
        utils.saveImage(str(path), img)
        return str(path)

    def _font(self, utils: Any) -> Any:
        with self._modules_lock:
            if self._font_obj is None:
                self._font_obj = utils.cudaFont()
            return self._font_obj

    # Operations ------------------------------------------------------------------------------
    def classify(self, session: Session, image: bytes) -> tuple[str, str]:
        utils, network, img = self._prepare(session, "classify", image)
        with network.lock:
            network.uses += 1
            class_idx, confidence = network.net.Classify(img)
            if class_idx < 0:
                raise BackendError("jetson classify: imageNet found no class above its threshold")
            tags = classification_tag(confidence, network.net.GetClassDesc(class_idx))
            font = self._font(utils)
            font.OverlayText(img, img.width, img.height, tags, 5, 5, font.White, font.Gray40)
        return tags, self._save(utils, session, "classify", img)

    def detect(self, session: Session, image: bytes) -> str:
        utils, network, img = self._prepare(session, "detect", image)
        with network.lock:
            network.uses += 1
            detections = network.net.Detect(img, overlay="box,labels,conf")
        logger.debug("jetson detect: %d objects in session %d", len(detections), session.id)
        return self._save(utils, session, "detect", img)

    def segment(self, session: Session, image: bytes) -> str:
        utils, network, img = self._prepare(session, "segment", image)
        overlay = utils.cudaAllocMapped(width=img.width, height=img.height, format=img.format)
        with network.lock:
            network.uses += 1
            network.net.Process(img, ignore_class="void")
            network.net.Overlay(overlay, filter_mode="linear")
        return self._save(utils, session, "segment", overlay)

    def pose(self, session: Session, image: bytes) -> str:
        utils, network, img = self._prepare(session, "pose", image)
        with network.lock:
            network.uses += 1
            poses = network.net.Process(img, overlay="links,keypoints")
        logger.debug("jetson pose: %d poses in session %d", len(poses), session.id)
        return self._save(utils, session, "pose", img)

    def depth(self, session: Session, image: bytes) -> str:
        utils, network, img = self._prepare(session, "depth", image)
        depth_map = utils.cudaAllocMapped(width=img.width, height=img.height, format=img.format)
        with network.lock:
            network.uses += 1
            network.net.Process(img, depth_map, "viridis-inverted", "linear")
        return self._save(utils, session, "depth", depth_map)
