"""Odd image files become RGB or a clear ImageError; the eval transform matches timm's."""
import io
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from bsegn.core.errors import DataError
from bsegn.datasets.image_dataset import ImageFolderDataset, collate_flagged, collate_skip_bad
from bsegn.datasets.images import ImageError, open_rgb
from bsegn.datasets.transforms import build_eval_transform, build_train_transform


def load_rgb(path, **options) -> np.ndarray:
    """The image as every reader gets it (open_rgb), as an (H, W, 3) uint8 array to compare pixels."""
    return np.asarray(open_rgb(path, **options))


def _photo(h=40, w=60, seed=0):
    """A smooth-ish random RGB image, so JPEG round trips stay close."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def test_plain_rgb_jpeg(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(_photo()).save(path, quality=95)
    image = load_rgb(path)
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8
    assert np.array_equal(image, _pil_decode(path))  # PIL's own decode


def test_grayscale_palette_cmyk_become_rgb(tmp_path):
    rgb = _photo()
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    gray = load_rgb(tmp_path / "gray.png")
    assert gray.shape == (40, 60, 3)
    assert np.array_equal(gray[..., 0], gray[..., 2])  # three equal channels

    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "pal.png")
    pal = load_rgb(tmp_path / "pal.png")
    assert pal.shape == (40, 60, 3) and np.abs(pal.astype(int) - rgb.astype(int)).mean() < 25

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as check:
        assert check.mode == "CMYK"
    cmyk = load_rgb(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (40, 60, 3) and np.abs(cmyk.astype(int) - rgb.astype(int)).mean() < 10


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere ...
    rgba[:4, :, 3] = 255  # ... opaque in the top half, fully transparent in the bottom half
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = load_rgb(tmp_path / "rgba.png")
    assert out.shape == (8, 8, 3)
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[7, 7]) == (255, 255, 255)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode in ("I;16", "I")
    out = load_rgb(tmp_path / "deep.png")
    assert out.shape == (16, 64, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    # Mid-range stays mid-range (PIL's own convert would clip everything above 255 to white).
    assert 100 < out[8, 32, 0] < 160


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "garbage_jpeg", "missing"])
def test_bad_files_raise_clear_image_error(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a picture\n")
    elif kind in ("truncated", "garbage_jpeg"):
        buffer = io.BytesIO()
        Image.fromarray(_photo(120, 160)).save(buffer, format="JPEG")
        data = buffer.getvalue()
        if kind == "truncated":
            data = data[: len(data) // 3]
        else:  # a valid JPEG header followed by noise instead of the coded image
            data = data[:200] + np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
        path.write_bytes(data)
    with pytest.raises(ImageError) as info:
        load_rgb(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, DataError)


def _constant_png(path, width, height):
    """A valid 8-bit grayscale PNG of width x height zeros, written in a few KB without the pixels in memory."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + width)  # filter byte + pixels
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        handle.write(chunk(b"IDAT", body))
        handle.write(chunk(b"IEND", b""))


def test_huge_image_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    _constant_png(path, 20000, 20000)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(ImageError, match="huge.png.*(too large|over the limit)"):
        load_rgb(path)
    # A configurable limit: a modest image over a small limit is refused too.
    Image.fromarray(_photo()).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match="over the limit of 1000"):
        load_rgb(tmp_path / "small.png", max_pixels=1000)


@pytest.mark.parametrize("interpolation,crop_pct,size", [("bilinear", 0.875, 32), ("bicubic", 0.95, 40), ("bilinear", 1.0, 24)])
@pytest.mark.parametrize("shape", [(50, 70), (81, 37), (24, 24)])
def test_eval_transform_matches_timm(interpolation, crop_pct, size, shape):
    from timm.data import create_transform

    config = {"input_size": (3, size, size), "interpolation": interpolation,
              "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3), "crop_pct": crop_pct}
    image = Image.fromarray(_photo(*shape, seed=shape[0]))
    ours = build_eval_transform(config)(image)
    theirs = create_transform(**config, is_training=False)(image)
    assert ours.shape == theirs.shape == (3, size, size)
    assert torch.allclose(ours, theirs, atol=1e-5)
    # numpy input gives the same result as PIL input
    assert torch.equal(build_eval_transform(config)(np.asarray(image)), ours)


def test_eval_transform_batch_normalisation_equals_per_image():
    """predict decodes to uint8 and normalises a stacked batch in one call: the same numbers, bit for bit."""
    config = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.4, 0.3),
              "std": (0.2, 0.25, 0.3), "crop_pct": 0.875}
    transform = build_eval_transform(config)
    images = [Image.fromarray(_photo(40 + 7 * i, 50, seed=i)) for i in range(4)]
    pixels = [transform.to_uint8(image) for image in images]
    assert all(p.dtype == torch.uint8 and p.shape == (3, 32, 32) for p in pixels)
    batch = transform.normalize(torch.stack(pixels))
    one_by_one = torch.stack([transform(image) for image in images])
    assert torch.equal(batch, one_by_one)
    # and the normalisation is the configured one: (pixel / 255 - mean) / std
    expected = (pixels[0].double() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1).double()) / \
        torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1).double()
    assert torch.allclose(batch[0].double(), expected, atol=1e-6)


def test_train_transform_shapes_and_randomness():
    config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.25,) * 3}
    transform = build_train_transform(config, seed=3)
    image = _photo(60, 80)
    first, second = transform(image), transform(image)
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert not torch.equal(first, second)  # augmentation actually varies
    # picklable for DataLoader workers, even after use
    clone = pickle.loads(pickle.dumps(transform))
    assert clone(image).shape == (3, 32, 32)


def test_dataset_flags_bad_images_and_collate_drops_them(tmp_path):
    Image.fromarray(_photo()).save(tmp_path / "good0.jpg")
    (tmp_path / "bad.jpg").write_text("not an image")
    Image.fromarray(_photo(seed=1)).convert("L").save(tmp_path / "good1.png")
    files = ["good0.jpg", "bad.jpg", "good1.png"]
    config = {"input_size": (3, 16, 16), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    dataset = ImageFolderDataset(tmp_path, files, [0, 1, 2], build_eval_transform(config))
    items = [dataset[i] for i in range(3)]
    assert [item[3] for item in items] == [True, False, True]
    assert items[1][0].shape == (3, 16, 16)
    batch = collate_skip_bad(items)
    assert batch.images.shape == (2, 3, 16, 16)
    assert batch.indices.tolist() == [0, 2] and batch.labels.tolist() == [0, 2]
    assert batch.bad_indices.tolist() == [1]
    images, labels, indices, ok = collate_flagged(items)
    assert images.shape == (3, 3, 16, 16) and ok.tolist() == [True, False, True]
    # a subset keeps the original file positions
    subset = ImageFolderDataset(tmp_path, files, [0, 1, 2], build_eval_transform(config), indices=[2])
    assert len(subset) == 1 and subset[0][2] == 2


def _pil_decode(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# stored pixels = the upright image turned by the inverse of what the EXIF Orientation tag asks for
_SIDEWAYS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
             2: Image.Transpose.FLIP_LEFT_RIGHT}


def save_with_orientation(upright: np.ndarray, path, orientation: int) -> None:
    """Write `upright` as a camera would: pixels stored turned, plus the EXIF tag that turns them back."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(upright).transpose(_SIDEWAYS[orientation]).save(path, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", sorted(_SIDEWAYS))
def test_exif_orientation_is_applied(tmp_path, orientation):
    """Finding 8: a photo stored sideways with Orientation=6 (and 3, 8, 2) decodes upright."""

    upright = _photo(40, 60)
    Image.fromarray(upright).save(tmp_path / "upright.png")
    save_with_orientation(upright, tmp_path / "sideways.png", orientation)
    assert Image.open(tmp_path / "sideways.png").getexif()[0x0112] == orientation  # the tag really is there
    assert np.array_equal(load_rgb(tmp_path / "sideways.png"), load_rgb(tmp_path / "upright.png"))
    assert open_rgb(tmp_path / "sideways.png").size == (60, 40)


def test_exif_orientation_in_a_jpeg(tmp_path):
    upright = _photo(48, 64)
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", quality=95,
                                                                        exif=exif.tobytes())
    decoded = load_rgb(tmp_path / "phone.jpg").astype(int)
    assert decoded.shape == (48, 64, 3)
    error = np.abs(decoded - upright).mean()  # JPEG loss only (about 6 grey levels here)
    assert error < 12 and error * 4 < np.abs(decoded - upright[::-1, ::-1]).mean()  # not upside down
