"""Which jetson-inference network each operation uses, where its files are, and a cache.

Networks are looked up in the networks folder (``VACCEL_IMAGENET_NETWORKS``, default
``/usr/local/share/imagenet-models/networks``, which upstream's guide links to
jetson-inference's ``data/networks``). A ``models.json`` in that folder (jetson-inference ships
one) is read first; a built-in table covering the default network of each operation is the
fallback. Files are looked for in the network's own sub-folder, then in the networks folder
itself (upstream's flat layout: ``googlenet.prototxt`` next to ``bvlc_googlenet.caffemodel``),
then one level up (``models.json`` names labels as ``networks/...``).

Resolved networks are created with explicit file arguments (``--model=...``), so
jetson-inference loads exactly the files found here, and each network is created once per
process and reused (upstream re-creates it on every call).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaccel_core.errors import BackendError, NotFoundError


@dataclass(frozen=True)
class NetworkKind:
    """One jetson-inference network class and the operation that uses it."""

    op: str  # our operation method name: classify, detect, ...
    cls_name: str  # class in jetson_inference: imageNet, detectNet, ...
    category: str  # category in jetson-inference's models.json
    default: str  # default network name (as in the issue and in jetson-inference)


KINDS: dict[str, NetworkKind] = {
    k.op: k
    for k in (
        NetworkKind("classify", "imageNet", "classification", "googlenet"),
        NetworkKind("detect", "detectNet", "detection", "ssd-mobilenet-v2"),
        NetworkKind("segment", "segNet", "segmentation", "fcn-resnet18-voc"),
        NetworkKind("pose", "poseNet", "pose", "resnet18-body"),
        NetworkKind("depth", "depthNet", "depth", "fcn-mobilenet"),
    )
}

#: The default networks' entries, in the shape of jetson-inference's models.json.
BUILTIN_MODELS: dict[str, dict[str, Any]] = {
    "googlenet": {
        "dir": "Googlenet",
        "model": "bvlc_googlenet.caffemodel",
        "prototxt": "googlenet.prototxt",
        "labels": "ilsvrc12_synset_words.txt",
        "input": "data",
        "output": "prob",
    },
    "ssd-mobilenet-v2": {
        "dir": "SSD-Mobilenet-v2",
        "model": "ssd_mobilenet_v2_coco.uff",
        "labels": "ssd_coco_labels.txt",
        "input": "Input",
        "output": {"bbox": "NMS", "count": "NMS_1"},
    },
    "fcn-resnet18-voc": {
        "dir": "FCN-ResNet18-Pascal-VOC-320x320",
        "model": "fcn_resnet18.onnx",
        "labels": "classes.txt",
        "colors": "colors.txt",
        "input": "input_0",
        "output": "output_0",
    },
    "resnet18-body": {
        "dir": "Pose-ResNet18-Body",
        "model": "pose_resnet18_body.onnx",
        "topology": "human_pose.json",
        "colors": "colors.txt",
        "input": "input",
        "output": {"cmap": "cmap", "paf": "paf"},
    },
    "fcn-mobilenet": {
        "dir": "MonoDepth-FCN-Mobilenet",
        "model": "monodepth_fcn_mobilenet.onnx",
        "input": "input_0",
        "output": "output_0",
    },
}

_FILE_KEYS = ("model", "prototxt", "labels", "colors", "topology")


@dataclass(frozen=True)
class NetworkFiles:
    """A network resolved to files on disk, ready to be created."""

    kind: NetworkKind
    name: str
    files: Mapping[str, Path]  # model, and prototxt/labels/colors/topology where the net has them
    input: str | None = None
    output: str | Mapping[str, str] | None = None
    source: str = "built-in table"

    def argv(self) -> list[str]:
        """jetson-inference command-line arguments that load exactly these files."""
        args = [f"vaccel-jetson-{self.kind.op}"]
        args += [f"--{key}={path}" for key, path in self.files.items()]
        if self.input:
            args.append(f"--input-blob={self.input}")
        if isinstance(self.output, str):
            args.append(f"--output-blob={self.output}")
        elif self.output:
            args += [f"--output-{key}={blob}" for key, blob in self.output.items()]
        return args


def _catalog(networks: Path) -> dict[str, Any]:
    path = networks / "models.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(f"jetson: cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _find_entry(catalog: Mapping[str, Any], kind: NetworkKind, name: str) -> dict[str, Any] | None:
    """The models.json entry for a network name or alias, preferring the kind's category."""
    wanted = name.lower()
    categories = [kind.category] + [c for c in catalog if c != kind.category]
    for category in categories:
        entries = catalog.get(category)
        if not isinstance(entries, dict):
            continue
        for key, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            aliases = [str(a).lower() for a in entry.get("alias", []) or []]
            if wanted == key.lower() or wanted in aliases:
                return entry
    return None


def _candidates(networks: Path, subdir: str, relative: str) -> list[Path]:
    rel = Path(relative)
    found = [networks / subdir / rel] if subdir else []
    found += [networks / rel, networks.parent / rel, networks / rel.name]
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def check_networks_dir(networks: Path) -> Path:
    """The networks folder, or a NotFoundError that says how to point to one."""
    if not networks.is_dir():
        raise NotFoundError(
            f"jetson: networks folder {networks} does not exist "
            "(set VACCEL_IMAGENET_NETWORKS to jetson-inference's data/networks)"
        )
    return networks


def resolve(kind: NetworkKind, name: str, networks: Path) -> NetworkFiles:
    """Find the files of network ``name`` under ``networks``; NotFoundError names every path
    searched when a file is missing."""
    check_networks_dir(networks)
    entry = _find_entry(_catalog(networks), kind, name)
    source = f"{networks / 'models.json'}"
    if entry is None:
        entry = BUILTIN_MODELS.get(name.lower())
        source = "built-in table"
    if entry is None:
        raise NotFoundError(
            f"jetson {kind.op}: unknown network {name!r}: not in {networks / 'models.json'} "
            f"and not one of the built-in defaults ({', '.join(sorted(BUILTIN_MODELS))})"
        )
    subdir = str(entry.get("dir", "") or "")
    files: dict[str, Path] = {}
    for key in _FILE_KEYS:
        relative = entry.get(key)
        if not relative:
            continue
        tried = _candidates(networks, subdir, str(relative))
        hit = next((p for p in tried if p.is_file()), None)
        if hit is None:
            raise NotFoundError(
                f"jetson {kind.op}: network {name!r} ({source}): {key} file {relative!r} not "
                f"found; searched: {', '.join(str(p) for p in tried)}"
            )
        files[key] = hit
    output = entry.get("output")
    if isinstance(output, dict):
        output = {str(k): str(v) for k, v in output.items()}
    elif output is not None:
        output = str(output)
    return NetworkFiles(
        kind, name, files, str(entry["input"]) if entry.get("input") else None, output, source
    )


@dataclass
class LoadedNetwork:
    """A created network, with the lock that serialises inference on it."""

    files: NetworkFiles
    net: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    uses: int = 0


class NetworkCache:
    """Networks created once per process (lazily, thread-safely) and reused by every session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, str, str], LoadedNetwork] = {}
        self._creating: dict[tuple[str, str, str], threading.Lock] = {}

    def get(
        self,
        kind: NetworkKind,
        name: str,
        networks: Path,
        create: Callable[[NetworkFiles], Any],
    ) -> LoadedNetwork:
        """The network for (kind, name, folder), created with ``create`` on first use."""
        key = (kind.op, name.lower(), str(networks))
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                return loaded
            creating = self._creating.setdefault(key, threading.Lock())
        with creating:  # one creation per key; other keys are not blocked
            with self._lock:
                loaded = self._loaded.get(key)
            if loaded is not None:
                return loaded
            files = resolve(kind, name, networks)
            loaded = LoadedNetwork(files, create(files))
            with self._lock:
                self._loaded[key] = loaded
                self._creating.pop(key, None)
            return loaded

    def loaded(self) -> list[LoadedNetwork]:
        with self._lock:
            return list(self._loaded.values())

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
            self._creating.clear()
