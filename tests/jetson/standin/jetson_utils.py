"""STAND-IN for NVIDIA's jetson_utils, which exists only on Jetson/JetPack.

Follows the real signatures as documented in dusty-nv/jetson-inference (jetson-utils' Python
bindings): ``cudaFromNumpy(array, isBGR=False)``, ``cudaAllocMapped(width=, height=,
format=)``, ``saveImage(filename, image, width=0, height=0, quality=95)``,
``cudaDeviceSynchronize()``, ``cudaFont(font=..., size=32.0)`` with ``OverlayText(image, width,
height, text, x, y, color, background)``. "CUDA memory" here is a numpy array; images are
written with Pillow. Used by the tests only; never installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Calls counted for the tests.
CALLS: dict[str, int] = {}

_CHANNELS = {"rgb8": 3, "rgba8": 4, "rgb32f": 3, "rgba32f": 4, "gray8": 1}


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


class cudaImage:
    """An image in (stand-in) shared CPU/GPU memory."""

    def __init__(self, width: int = 0, height: int = 0, format: str = "rgb8") -> None:
        if format not in _CHANNELS:
            raise Exception(f"[cuda] invalid image format {format!r}")
        if width <= 0 or height <= 0:
            raise Exception(f"[cuda] invalid image dimensions {width}x{height}")
        self.width = int(width)
        self.height = int(height)
        self.format = format
        self.channels = _CHANNELS[format]
        dtype = np.float32 if format.endswith("32f") else np.uint8
        self.array = np.zeros((self.height, self.width, self.channels), dtype=dtype)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def size(self) -> int:
        return int(self.array.nbytes)


def cudaFromNumpy(array: Any, isBGR: bool = False) -> cudaImage:
    _count("cudaFromNumpy")
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3):
        raise Exception("[cuda] cudaFromNumpy() expects a 2D or 3D numpy array")
    channels = 1 if array.ndim == 2 else array.shape[2]
    kind = "32f" if array.dtype == np.float32 else "8"
    if array.dtype not in (np.uint8, np.float32):
        raise Exception(f"[cuda] cudaFromNumpy() unsupported dtype {array.dtype}")
    fmt = {1: "gray", 3: "rgb", 4: "rgba"}[channels] + kind
    img = cudaImage(array.shape[1], array.shape[0], fmt)
    img.array[...] = array.reshape(img.array.shape)
    if isBGR and channels >= 3:
        img.array[..., :3] = img.array[..., 2::-1]
    return img


def cudaAllocMapped(
    size: int = 0, width: int = 0, height: int = 0, format: str = "rgba32f"
) -> cudaImage:
    _count("cudaAllocMapped")
    return cudaImage(width, height, format)


def cudaDeviceSynchronize() -> None:
    _count("cudaDeviceSynchronize")


def saveImage(
    filename: str, image: cudaImage, width: int = 0, height: int = 0, quality: int = 95
) -> None:
    _count("saveImage")
    from PIL import Image

    data = image.array
    if data.dtype != np.uint8:
        data = np.clip(data, 0, 255).astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[image.channels]
    pic = Image.fromarray(data.squeeze(-1) if image.channels == 1 else data, mode)
    if filename.lower().endswith((".jpg", ".jpeg")) and mode == "RGBA":
        pic = pic.convert("RGB")
    try:
        pic.save(filename, quality=quality)
    except OSError as exc:
        raise Exception(f"saveImage() failed to save {filename}: {exc}") from exc


class cudaFont:
    """Text overlay; the stand-in draws a filled box where the real one draws glyphs."""

    White = (255, 255, 255, 255)
    Gray40 = (40, 40, 40, 180)

    def __init__(self, font: str = "", size: float = 32.0) -> None:
        _count("cudaFont")
        self.size = size

    def OverlayText(
        self,
        image: cudaImage,
        width: int = 0,
        height: int = 0,
        text: str = "",
        x: int = 0,
        y: int = 0,
        color: tuple[int, ...] = White,
        background: tuple[int, ...] = Gray40,
    ) -> None:
        _count("OverlayText")
        h = min(image.height - y, 12)
        w = min(image.width - x, 6 * len(text))
        if h > 0 and w > 0:
            image.array[y : y + h, x : x + w, :3] = background[:3]
