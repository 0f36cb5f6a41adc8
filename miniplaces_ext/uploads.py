"""Photos from untrusted bytes (web uploads): decoded safely or refused with a one-line reason.

Refused: more than `max_bytes`; anything Pillow cannot identify; more than `max_pixels`
pixels (checked from the header, before decoding: decompression bombs); truncated or corrupt
files. Accepted photos come back as RGB whatever their mode (grayscale, CMYK, palette, 16-bit,
alpha composited on white), with EXIF orientation applied.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_BYTES = 20 * 2**20
MAX_PIXELS = 50_000_000


class UploadError(ValueError):
    """A photo we will not decode; str(error) is the message for the user. `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, "white")
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def decode_photo(payload: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The photo in `payload` as an RGB image; raises UploadError with a message a user understands."""
    if len(payload) > max_bytes:
        raise UploadError(f"the file is {len(payload) / 2**20:.3g} MB; the limit is {max_bytes / 2**20:.3g} MB", 413)
    if not payload:
        raise UploadError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload))
            width, height = image.size
            if width * height > max_pixels:
                raise UploadError(f"the image is {width}x{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels")
            image.load()
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError("not an image (or a format Pillow cannot read): try a JPEG or PNG") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(f"the image has too many pixels; the limit is {max_pixels / 1e6:.0f} megapixels") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UploadError(f"the image is truncated or corrupt ({exc})") from None
    image = ImageOps.exif_transpose(image)
    return _to_rgb(image)
