"""STAND-IN for NVIDIA's jetson_inference, which exists only on Jetson/JetPack.

Follows the real signatures as documented in dusty-nv/jetson-inference (python/bindings):
every network class takes ``(network, argv)``; with a non-empty ``argv`` it loads the files
named by ``--model=``/``--prototxt=``/``--labels=``/... and raises ``Exception`` when it cannot
(the real bindings raise a bare Exception "failed to load network"). Results are deterministic
and cheap, not inference:

* ``imageNet.Classify(image)`` -> ``(class_idx, confidence)``: class = int(mean pixel value)
  modulo the number of labels; confidence is always ``CONFIDENCE``.
* ``detectNet.Detect(image, overlay=...)`` -> one Detection covering the image centre, drawn.
* ``segNet.Process/Overlay/Mask``, ``poseNet.Process``, ``depthNet.Process`` fill their output
  from the input so tests can see that something was written.

``CREATED`` counts constructions per class, so tests can assert networks are reused.
Used by the tests only; never installed.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

#: Number of networks constructed, per class name.
CREATED: dict[str, int] = {}
#: The argv each construction received, in order.
ARGVS: list[tuple[str, list[str]]] = []
#: Fixed confidence of every classification (the seed's "86.768% golden retriever").
CONFIDENCE = 0.86768


def _options(argv: list[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            key, _, value = arg[2:].partition("=")
            opts[key.replace("_", "-")] = value
    return opts


class tensorNet:
    """Common base: network loading from argv, as the real classes do."""

    DEFAULT = ""

    def __init__(self, network: str = "", argv: list[str] | None = None) -> None:
        argv = list(argv or [])
        name = type(self).__name__
        opts = _options(argv)
        if argv:
            model = opts.get("model")
            if model is None and "network" not in opts:
                raise Exception(f"jetson.inference -- {name} failed to load network")
            for key in ("model", "prototxt", "labels", "colors", "topology"):
                path = opts.get(key)
                if path is not None and not os.path.isfile(path):
                    raise Exception(
                        f"jetson.inference -- {name} failed to load network ({key} {path!r})"
                    )
        self.network = network or self.DEFAULT
        self.opts = opts
        self.labels = self._read_labels(opts.get("labels"))
        CREATED[name] = CREATED.get(name, 0) + 1
        ARGVS.append((name, argv))

    @staticmethod
    def _read_labels(path: str | None) -> list[str]:
        if not path:
            return ["class"]
        with open(path, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh if line.strip()]
        # ilsvrc12_synset_words.txt lines are "n01440764 tench, Tinca tinca"
        return [
            line.split(" ", 1)[1]
            if line[:1] == "n" and " " in line and line.split(" ", 1)[0][1:].isdigit()
            else line
            for line in lines
        ] or ["class"]

    def GetNetworkName(self) -> str:
        return self.network

    def GetNumClasses(self) -> int:
        return len(self.labels)

    def GetClassDesc(self, index: int) -> str:
        if index < 0 or index >= len(self.labels):
            raise Exception("imageNet requested class index is out of bounds")
        return self.labels[index]


def _pixels(image: Any) -> np.ndarray:
    array = getattr(image, "array", None)
    if array is None:
        raise Exception("failed to get image pointer from first arg (should be cudaImage)")
    return array


class imageNet(tensorNet):
    DEFAULT = "googlenet"

    def Classify(
        self, image: Any, width: int = 0, height: int = 0, format: str = "rgba32f"
    ) -> tuple[int, float]:
        mean = float(_pixels(image)[..., :3].mean())
        return int(mean) % len(self.labels), CONFIDENCE


class Detection:
    """A detection result (subset of the real fields)."""

    def __init__(self, class_id: int, confidence: float, box: tuple[float, ...]) -> None:
        self.ClassID = class_id
        self.Confidence = confidence
        self.Left, self.Top, self.Right, self.Bottom = box


class detectNet(tensorNet):
    DEFAULT = "ssd-mobilenet-v2"

    def __init__(
        self, network: str = "", argv: list[str] | None = None, threshold: float = 0.5
    ) -> None:
        super().__init__(network, argv)
        self.threshold = threshold

    def Detect(
        self, image: Any, width: int = 0, height: int = 0, overlay: str = "box,labels,conf"
    ) -> list[Detection]:
        pixels = _pixels(image)
        h, w = pixels.shape[:2]
        box = (w / 4, h / 4, 3 * w / 4, 3 * h / 4)
        if overlay != "none":
            pixels[h // 4 : 3 * h // 4, w // 4, :3] = (0, 255, 0)
        return [Detection(0, 0.9, box)]


class segNet(tensorNet):
    DEFAULT = "fcn-resnet18-voc"

    def Process(
        self, image: Any, width: int = 0, height: int = 0, ignore_class: str = "void"
    ) -> None:
        self._last = _pixels(image).copy()

    def Overlay(
        self, image: Any, width: int = 0, height: int = 0, filter_mode: str = "linear"
    ) -> None:
        if not hasattr(self, "_last"):
            raise Exception("segNet.Overlay() called before Process()")
        out = _pixels(image)
        out[..., :3] = 255 - self._last[: out.shape[0], : out.shape[1], :3]

    def Mask(
        self, image: Any, width: int = 0, height: int = 0, filter_mode: str = "linear"
    ) -> None:
        self.Overlay(image, width, height, filter_mode)


class ObjectPose:
    def __init__(self) -> None:
        self.Keypoints: list[Any] = []
        self.Links: list[Any] = []


class poseNet(tensorNet):
    DEFAULT = "resnet18-body"

    def __init__(
        self, network: str = "", argv: list[str] | None = None, threshold: float = 0.15
    ) -> None:
        super().__init__(network, argv)
        self.threshold = threshold

    def Process(
        self, image: Any, width: int = 0, height: int = 0, overlay: str = "links,keypoints"
    ) -> list[ObjectPose]:
        pixels = _pixels(image)
        pixels[0, :, :3] = (255, 0, 0)
        return [ObjectPose()]


class depthNet(tensorNet):
    DEFAULT = "fcn-mobilenet"

    def Process(
        self,
        input: Any,
        output: Any = None,
        colormap: str = "viridis-inverted",
        filter_mode: str = "linear",
    ) -> None:
        src = _pixels(input)
        if output is not None:
            out = _pixels(output)
            gray = src[..., :3].mean(axis=2, keepdims=True).astype(out.dtype)
            out[..., :3] = gray[: out.shape[0], : out.shape[1]]
