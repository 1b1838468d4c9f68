"""Reading one image file as RGB, whatever its mode, with a clear error when it cannot be read.

Real benchmark folders hold grayscale, CMYK, palette, RGBA and 16-bit files next to ordinary
JPEGs, and the occasional truncated or mislabelled file. Every reader in bsegn goes through
`open_rgb`, so every model sees 8-bit RGB and every bad file is reported by name.
It also applies the EXIF orientation (a phone photo stored sideways with Orientation=6 comes out
upright, as every viewer shows it), in this one place for training, extraction and predict alike;
`upright_rgb` does the same for an image already opened by the caller.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bsegn.core.errors import ImageError

# PIL's own decompression-bomb threshold (about 89.5 megapixels): far above any benchmark photo.
DEFAULT_MAX_PIXELS = 89_478_485
ORIENTATION_TAG = 0x0112  # EXIF Orientation
# image.info key of a JPEG decoded at reduced size (open_rgb's decode_size): the file's (width, height),
# from which the eval transform computes its resize exactly as for a full decode.
SOURCE_SIZE = "bsegn_source_size"
DecodeSize = Callable[[int, int], "tuple[int, int] | None"]


def open_rgb(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
             decode_size: DecodeSize | None = None) -> Image.Image:
    """Open `path` fully decoded as a PIL image in mode "RGB", turned upright by its EXIF orientation.

    decode_size: (file width, height) -> the smallest (width, height) the caller needs, or None. A JPEG
    at least twice that size in both sides is then decoded at 1/2, 1/4 or 1/8 scale by the decoder
    itself (PIL's Image.draft: never below the size asked), and the file's size is kept in
    image.info[SOURCE_SIZE]; other formats, files under twice the size and files stored rotated
    (EXIF orientation other than 1) are decoded whole, as without decode_size.

    Raises ImageError (naming the file) for a missing, empty, non-image, corrupt or truncated file,
    and for an image over `max_pixels` pixels: the size is read from the header before any pixel
    is decoded, so a 20000x20000 file is refused without allocating it.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file; check the image root and the relative path.")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes); re-copy or remove it.")
    try:
        # Our own handle: the file closes on exit while the decoded image stays usable (an
        # Image.close() would free the pixels too, forcing a copy).
        with open(path, "rb") as handle, warnings.catch_warnings():
            # Our own max_pixels check below replaces PIL's bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                image = Image.open(handle)
            except Image.DecompressionBombError as error:
                raise ImageError(f"{path}: image too large to decode safely ({error}).") from None
            except UnidentifiedImageError:
                raise ImageError(f"{path}: not an image file PIL can read (wrong extension or not an image at "
                                 "all).") from None
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(
                    f"{path}: image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; "
                    "downscale it, or raise max_pixels if it is genuine.")
            source = _draft(image, decode_size)
            try:
                image.load()
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
                # Truncated JPEG/PNG ("image file is truncated"), broken streams, bad headers.
                raise ImageError(f"{path}: corrupt or truncated image: {error}; re-copy or remove it.") from None
            # still inside: a PNG's or TIFF's EXIF may sit in the file past the pixels
            rgb = upright_rgb(image)
            if source is not None and rgb.size != source:
                rgb.info[SOURCE_SIZE] = source
            return rgb
    except OSError as error:  # unreadable file (permissions, I/O error)
        raise ImageError(f"{path}: cannot open image: {error}") from None


def _draft(image: Image.Image, decode_size: DecodeSize | None) -> tuple[int, int] | None:
    """Ask the JPEG decoder for a reduced scale (see open_rgb); returns the file's size when it may."""
    if decode_size is None or image.format != "JPEG" or image.getexif().get(ORIENTATION_TAG, 1) != 1:
        return None
    source = image.size
    wanted = decode_size(*source)
    if wanted is not None:
        image.draft(image.mode, (max(1, int(wanted[0])), max(1, int(wanted[1]))))
    return source


def upright_rgb(image: Image.Image) -> Image.Image:
    """A loaded PIL image as "RGB", rotated/flipped as its EXIF Orientation tag says (1-8; none: as is)."""
    if image.getexif().get(ORIENTATION_TAG, 1) != 1:
        image = ImageOps.exif_transpose(image)  # a transposed copy, the tag removed
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> an "RGB" image (the input itself when it is RGB already)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit / float grayscale: PIL's own convert("RGB") clips to 255 instead of
        # scaling, which turns most 16-bit photos white. Scale the real range into 0..255.
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        else:
            top = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), mode="RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels often hold arbitrary colours: show them on white, as a viewer would.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL converts these correctly.
    return image.convert("RGB")
