"""ImageNet-1k helpers: class labels, image preprocessing, softmax and top-k tags.

Preprocessing matches the EfficientNet-Lite0 model built by :mod:`.efficientnet`:
RGB, short side resized to 256 (bicubic), centre crop 224, ``(x - 127) / 128``, NCHW.
"""

from __future__ import annotations

import functools
import io
import operator
from importlib import resources
from typing import TYPE_CHECKING, Any, SupportsIndex

import numpy as np

from vaccel_core.ops import classification_tag

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

__all__ = [
    "CROP_SIZE",
    "MIN_IMAGE_SIDE",
    "NUM_CLASSES",
    "RESIZE_SIZE",
    "format_tag",
    "load_labels",
    "preprocess",
    "preprocess_image",
    "short_name",
    "softmax",
    "tags",
    "top_k",
]

NUM_CLASSES = 1000
RESIZE_SIZE = 256
CROP_SIZE = 224
MIN_IMAGE_SIDE = 8
MEAN = 127.0
SCALE = 128.0
_LABELS_FILE = "imagenet_classes.txt"


@functools.lru_cache(maxsize=1)
def _labels() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath(_LABELS_FILE).read_text(encoding="utf-8")
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(lines) != NUM_CLASSES:
        raise RuntimeError(f"{_LABELS_FILE} has {len(lines)} labels, expected {NUM_CLASSES}")
    return lines


def load_labels() -> list[str]:
    """The 1000 ILSVRC2012 class lines in standard order, e.g. ``"tench, Tinca tinca"``."""
    return list(_labels())


def short_name(index: SupportsIndex) -> str:
    """The first synonym of class ``index``, e.g. ``short_name(207) == "golden retriever"``."""
    i = operator.index(index)
    if not 0 <= i < NUM_CLASSES:
        raise IndexError(f"imagenet: class index {i} out of range 0..{NUM_CLASSES - 1}")
    return _labels()[i].split(",", 1)[0].strip()


def _import_pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "image preprocessing needs Pillow: pip install 'vaccel[onnx]' (or pip install pillow)"
        ) from exc
    return Image


def _decode(data: bytes) -> PILImage.Image:
    """Decode ``data`` fully with Pillow, turning every failure into ``ValueError``."""
    Image = _import_pil()
    from PIL import ImageOps

    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and width * height > limit:
            raise ValueError(
                f"image: {width}x{height} pixels exceeds the limit of {limit} pixels "
                "(decompression bomb guard)"
            )
        if min(width, height) < MIN_IMAGE_SIDE:
            raise ValueError(_too_small(width, height))
        _draft(img)
        img.load()
        img = ImageOps.exif_transpose(img)
    except ValueError as exc:
        if str(exc).startswith("image: "):
            raise
        raise _cannot_decode(data, exc) from exc
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image: {exc} (decompression bomb guard)") from exc
    except Image.UnidentifiedImageError as exc:
        raise _cannot_decode(data, "unknown or unsupported image format") from exc
    except Exception as exc:  # Pillow raises many types on corrupt data
        raise _cannot_decode(data, exc) from exc
    return img


def _too_small(width: int, height: int) -> str:
    return (
        f"image: {width}x{height} pixels is too small, "
        f"need at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
    )


def _cannot_decode(data: bytes, exc: BaseException | str) -> ValueError:
    reason = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    return ValueError(f"image: cannot decode {len(data)} bytes as an image ({reason})")


def _draft(img: PILImage.Image) -> None:
    """Let the JPEG decoder downscale very large photos (keeps at least 2x the target)."""
    if img.format == "JPEG" and min(img.size) >= 4 * RESIZE_SIZE:
        scale = 2 * RESIZE_SIZE / min(img.size)
        img.draft(img.mode, (int(img.size[0] * scale) + 1, int(img.size[1] * scale) + 1))


def _to_rgb(img: PILImage.Image) -> PILImage.Image:
    """Convert any mode to RGB; transparent areas become white."""
    Image = _import_pil()
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max(initial=0))
        peak = 65535.0 if top > 255 else 255.0
        if img.mode == "F" and top <= 1.0:
            peak = 1.0  # float images in 0..1
        gray = np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def preprocess_image(img: PILImage.Image) -> np.ndarray:
    """Turn a decoded Pillow image into the model input, float32 ``(1, 3, 224, 224)``."""
    Image = _import_pil()
    width, height = img.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(_too_small(width, height))
    try:
        img = _to_rgb(img)
    except (OSError, ValueError) as exc:
        raise ValueError(f"image: cannot convert mode {img.mode} to RGB ({exc})") from exc
    scale = RESIZE_SIZE / min(width, height)
    size = (max(CROP_SIZE, round(width * scale)), max(CROP_SIZE, round(height * scale)))
    img = img.resize(size, Image.Resampling.BICUBIC)
    left = (size[0] - CROP_SIZE) // 2
    top = (size[1] - CROP_SIZE) // 2
    img = img.crop((left, top, left + CROP_SIZE, top + CROP_SIZE))
    arr = (np.asarray(img, dtype=np.float32) - MEAN) / SCALE
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[np.newaxis])


def preprocess(image_bytes: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) into float32 ``(1, 3, 224, 224)``.

    Raises ``ValueError`` for empty, undecodable, too small or oversized images.
    """
    if not isinstance(image_bytes, (bytes, bytearray, memoryview)):
        raise TypeError(f"image: expected bytes, got {type(image_bytes).__name__}")
    data = bytes(image_bytes)
    if not data:
        raise ValueError("image: empty input (0 bytes), expected an encoded image")
    return preprocess_image(_decode(data))


def softmax(logits: Any) -> np.ndarray:
    """Numerically stable softmax over the last axis (float64)."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"softmax: need at least one logit, got shape {x.shape}")
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probs: Any, k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` largest entries of a 1-D score vector (or a batch of one) as (index, score)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 1:
        raise ValueError(f"top_k: expected a vector or a batch of one, got shape {p.shape}")
    if k < 1:
        raise ValueError(f"top_k: k must be at least 1, got {k}")
    k = min(k, p.size)
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), float(p[i])) for i in order]


def format_tag(prob: float, index: SupportsIndex) -> str:
    """Upstream's tag format, e.g. ``format_tag(0.86768, 207) == "86.768% golden retriever"``."""
    return classification_tag(prob, short_name(index))


def tags(logits: Any, k: int = 1) -> list[str]:
    """Softmax the logits of one image and format the top ``k`` classes as tags."""
    return [format_tag(p, i) for i, p in top_k(softmax(logits), k)]
