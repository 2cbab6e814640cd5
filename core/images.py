"""Opening an image file as RGB, the one way every part of the engine does it."""
from __future__ import annotations

from PIL import Image, ImageOps


def load_rgb(path) -> Image.Image:
    """Decode any supported file to RGB with EXIF orientation applied (Pillow's bomb guard stays on)."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            import numpy as np

            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if arr.max() > 255 else 255.0
            img = Image.fromarray((arr * (255.0 / top)).round().astype("uint8"), mode="L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        return img.convert("RGB")
