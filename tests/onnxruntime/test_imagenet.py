"""Tests of the ImageNet labels, preprocessing, softmax and tag helpers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vaccel_plugins.onnxruntime import imagenet

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"


@pytest.fixture(scope="module")
def Image() -> Any:
    return pytest.importorskip("PIL.Image", reason="Pillow is not installed (pip install pillow)")


def _encode(img: Any, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------


def test_labels_are_the_standard_1000_in_order() -> None:
    labels = imagenet.load_labels()
    assert len(labels) == 1000
    assert labels[0] == "tench, Tinca tinca"
    assert labels[999].startswith("toilet tissue")
    assert [imagenet.short_name(i) for i in (1, 207, 281, 282, 285, 967)] == [
        "goldfish",
        "golden retriever",
        "tabby",
        "tiger cat",
        "Egyptian cat",
        "espresso",
    ]
    # the two well-known duplicate names of ILSVRC2012 (bird and machine)
    assert imagenet.short_name(134) == imagenet.short_name(517) == "crane"
    assert all(line == line.strip() and line for line in labels)


def test_load_labels_returns_a_copy() -> None:
    labels = imagenet.load_labels()
    labels[0] = "changed"
    assert imagenet.load_labels()[0] == "tench, Tinca tinca"


def test_short_name_rejects_bad_indices() -> None:
    assert imagenet.short_name(np.int64(207)) == "golden retriever"
    with pytest.raises(IndexError, match="1000 out of range"):
        imagenet.short_name(1000)
    with pytest.raises(IndexError):
        imagenet.short_name(-1)
    with pytest.raises(TypeError):
        imagenet.short_name(2.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# softmax, top_k, tags
# --------------------------------------------------------------------------------------


def test_softmax_is_stable_and_normalised() -> None:
    p = imagenet.softmax([1000.0, 1001.0, 1002.0])
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(), 1.0)
    np.testing.assert_allclose(p, imagenet.softmax([0.0, 1.0, 2.0]))
    assert p[2] > p[1] > p[0]
    batch = imagenet.softmax(np.array([[0.0, 0.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(batch, [[0.5, 0.5], [0.25, 0.75]])
    with pytest.raises(ValueError):
        imagenet.softmax([])


def test_top_k_orders_by_score() -> None:
    probs = np.array([0.1, 0.5, 0.05, 0.3, 0.05])
    assert imagenet.top_k(probs, 3) == [(1, 0.5), (3, 0.3), (0, 0.1)]
    assert imagenet.top_k(probs[np.newaxis], 1) == [(1, 0.5)]  # a batch of one
    assert [i for i, _ in imagenet.top_k(probs, 10)] == [1, 3, 0, 2, 4]  # ties: lower first
    assert all(isinstance(i, int) and isinstance(p, float) for i, p in imagenet.top_k(probs))
    with pytest.raises(ValueError, match="k must be at least 1"):
        imagenet.top_k(probs, 0)
    with pytest.raises(ValueError, match="shape"):
        imagenet.top_k(np.zeros((2, 3)))


def test_format_tag_matches_upstream() -> None:
    assert imagenet.format_tag(0.86768, 207) == "86.768% golden retriever"
    assert imagenet.format_tag(1.0, 967) == "100.000% espresso"
    logits = np.zeros(1000)
    logits[282] = 10.0
    assert imagenet.tags(logits) == ["95.661% tiger cat"]  # e**10 / (e**10 + 999)
    assert len(imagenet.tags(logits, k=5)) == 5


# --------------------------------------------------------------------------------------
# preprocess
# --------------------------------------------------------------------------------------


def test_preprocess_real_photos(Image: Any) -> None:
    for photo in ("chelsea.png", "coffee.jpg", "dog.jpg", "grace_hopper.jpg"):
        x = imagenet.preprocess((PHOTOS / photo).read_bytes())
        assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32, photo
        assert x.flags.c_contiguous
        assert -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 128 / 128, photo


def test_preprocess_normalises_a_solid_colour(Image: Any) -> None:
    x = imagenet.preprocess(_encode(Image.new("RGB", (300, 400), (255, 127, 0))))
    np.testing.assert_allclose(x[0, :, 112, 112], [128 / 128, 0.0, -127 / 128])
    np.testing.assert_allclose(x[0, 0], 1.0)  # channel 0 is red: RGB order, NCHW


def test_preprocess_crops_the_centre(Image: Any) -> None:
    # 512x256: the short side is already 256, so only the centre crop (x 144..367) acts
    columns = np.repeat((np.arange(512) // 2).astype(np.uint8)[np.newaxis], 256, axis=0)
    x = imagenet.preprocess(_encode(Image.fromarray(np.stack([columns] * 3, axis=-1))))
    np.testing.assert_allclose(x[0, 0, 100, 0], (72 - 127) / 128)
    np.testing.assert_allclose(x[0, 0, 100, 223], (183 - 127) / 128)


def test_preprocess_resizes_the_short_side(Image: Any) -> None:
    # a 64x32 image with a white left half: after resizing to 512x256 and cropping
    # 144..367, the boundary at x=256 sits at column 112 of the crop
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = 255
    x = imagenet.preprocess(_encode(Image.fromarray(arr)))
    row = x[0, 0, 112]
    assert (row[:100] > 0.99).all() and (row[125:] < -0.99).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "LA", "I", "F"])
def test_preprocess_converts_any_mode_to_rgb(Image: Any, mode: str) -> None:
    img = Image.open(PHOTOS / "chelsea.png").convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    x = imagenet.preprocess(_encode(img, fmt))
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    if mode in ("L", "1", "LA", "I", "F"):  # grey: all three channels equal
        np.testing.assert_array_equal(x[0, 0], x[0, 2])
    else:
        assert np.abs(x[0, 0] - x[0, 2]).max() > 0.1


def test_preprocess_16_bit_png(Image: Any) -> None:
    grey = np.full((64, 64), 65535, dtype=np.uint16)
    grey[:, :32] = 0
    x = imagenet.preprocess(_encode(Image.fromarray(grey)))
    assert x.max() == pytest.approx(1.0) and x.min() == pytest.approx(-127 / 128)


def test_preprocess_puts_transparency_on_white(Image: Any) -> None:
    x = imagenet.preprocess(_encode(Image.new("RGBA", (50, 50), (0, 0, 0, 0))))
    np.testing.assert_allclose(x, 1.0)


def test_preprocess_cmyk_jpeg(Image: Any) -> None:
    img = Image.new("RGB", (64, 64), (200, 30, 30)).convert("CMYK")
    x = imagenet.preprocess(_encode(img, "JPEG", quality=95))
    assert x[0, 0, 112, 112] > 0.4 and x[0, 1, 112, 112] < -0.5


def test_preprocess_large_jpeg_uses_draft_but_keeps_content(Image: Any) -> None:
    arr = np.zeros((2000, 3000, 3), np.uint8)
    arr[:, 1500:] = (0, 0, 255)
    x = imagenet.preprocess(_encode(Image.fromarray(arr), "JPEG", quality=90))
    assert x.shape == (1, 3, 224, 224)
    assert x[0, 2, 112, 10] < -0.9 and x[0, 2, 112, 213] > 0.9


@pytest.mark.parametrize("data", [b"", bytearray(), memoryview(b"")])
def test_preprocess_rejects_empty_input(data: Any) -> None:
    with pytest.raises(ValueError, match=r"image: empty input \(0 bytes\)"):
        imagenet.preprocess(data)


def test_preprocess_rejects_non_bytes() -> None:
    with pytest.raises(TypeError, match="expected bytes, got str"):
        imagenet.preprocess("dog.jpg")  # type: ignore[arg-type]


def test_preprocess_rejects_random_bytes(Image: Any) -> None:
    data = np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    with pytest.raises(ValueError, match=r"image: cannot decode 1000 bytes as an image \(.+\)"):
        imagenet.preprocess(data)


def test_preprocess_rejects_truncated_jpeg(Image: Any) -> None:
    data = (PHOTOS / "dog.jpg").read_bytes()[:4000]
    with pytest.raises(ValueError, match=r"image: cannot decode 4000 bytes as an image \(.+\)"):
        imagenet.preprocess(data)


def test_preprocess_rejects_corrupt_png(Image: Any) -> None:
    data = bytearray((PHOTOS / "chelsea.png").read_bytes())
    data[5000:5100] = b"\0" * 100  # damages compressed image data: CRC/zlib error
    with pytest.raises(ValueError, match="image: cannot decode"):
        imagenet.preprocess(bytes(data))


@pytest.mark.parametrize("size", [(1, 1), (7, 300), (300, 7)])
def test_preprocess_rejects_tiny_images(Image: Any, size: tuple[int, int]) -> None:
    data = _encode(Image.new("RGB", size))
    w, h = size
    with pytest.raises(ValueError, match=rf"image: {w}x{h} pixels is too small, need at least 8x8"):
        imagenet.preprocess(data)


def test_preprocess_accepts_the_smallest_size(Image: Any) -> None:
    assert imagenet.preprocess(_encode(Image.new("RGB", (8, 8)))).shape == (1, 3, 224, 224)


def test_preprocess_guards_against_decompression_bombs(
    Image: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _encode(Image.new("RGB", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 10000 pixels: over it
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(ValueError, match="100x100 pixels exceeds the limit of 5000"),
    ):
        imagenet.preprocess(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # over twice: Pillow's own error
    with pytest.raises(ValueError, match="decompression bomb"):
        imagenet.preprocess(data)


def test_preprocess_applies_exif_orientation(Image: Any) -> None:
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    x = imagenet.preprocess(_encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif))
    # shown upright it is 40x80 with the white half on top
    assert x[0, 0, 20, 112] > 0.9 and x[0, 0, 200, 112] < -0.9
