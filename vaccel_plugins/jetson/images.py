"""Decode a request's image bytes into a CUDA image for jetson-inference.

jetson_utils loads images from files only (``loadImage(path)``); a request carries bytes. So
the bytes are decoded in memory with Pillow into an RGB ``uint8`` array and handed to
``jetson_utils.cudaFromNumpy`` (shared CPU/GPU memory, format ``rgb8``), which every
jetson-inference network accepts. Nothing is written to disk on the way in.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from vaccel_core.errors import InvalidArgumentError

#: Largest decoded image accepted, in pixels (Pillow's own decompression-bomb limit is 89M).
MAX_PIXELS = 64 * 1024 * 1024


def decode_rgb(op: str, data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to an H x W x 3 uint8 RGB array.

    Raises InvalidArgumentError naming the operation and the ``image`` argument when the bytes
    are empty or not a decodable image.
    """
    if len(data) == 0:
        raise InvalidArgumentError(
            f"{op}: argument 'image': expected a non-empty image, got 0 bytes"
        )
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise InvalidArgumentError(
                    f"{op}: argument 'image': expected at most {MAX_PIXELS} pixels, "
                    f"got {width}x{height}"
                )
            img = ImageOps.exif_transpose(img) or img
            rgb = img.convert("RGB")
            array = np.asarray(rgb, dtype=np.uint8)
    except InvalidArgumentError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InvalidArgumentError(
            f"{op}: argument 'image': expected an encoded image (JPEG, PNG, ...), "
            f"got {len(data)} bytes that Pillow cannot decode ({exc})"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise InvalidArgumentError(
            f"{op}: argument 'image': expected a complete image, got {len(data)} bytes that "
            f"fail to decode: {type(exc).__name__}: {exc}"
        ) from None
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise InvalidArgumentError(
            f"{op}: argument 'image': expected a colour image, got an array of shape {array.shape}"
        )
    return np.ascontiguousarray(array)


def to_cuda(jetson_utils: Any, rgb: np.ndarray) -> Any:
    """Copy an RGB uint8 array into a CUDA image (``rgb8``) with jetson_utils."""
    return jetson_utils.cudaFromNumpy(rgb)
