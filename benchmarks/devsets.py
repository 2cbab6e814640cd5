"""Development datasets, built only from what packages ship: for measuring recipes across domains.

Each builder writes `OUT/<name>/<class>/<file>.png` and returns the folder. None of these images is a test
fixture: the tests use scikit-learn's digits and scikit-image's images through their own small helpers.

| name | domain | source (package) | classes x images |
| --- | --- | --- | --- |
| digits | handwriting | scikit-learn `load_digits` (8x8 scans) | 10 x 60 |
| faces | greyscale photographs | scikit-image `lfw_subset` (25x25 faces / non-faces) | 2 x 100 |
| glyphs | typography | Debian font packages: one letter per font file, 120 fonts | 10 x 120 |
| emoji | colour drawings of objects | Debian `fonts-noto-color-emoji` + `unicode-data` | 10 x 19-66 |
| textures | materials, microscopy, astronomy | scikit-image's bundled photographs, 64 px tiles | 8 x 40 |
| parts | manufacturing QC (rendered) | drawn here with Pillow: a machined part and five defects | 6 x 60 |
| stamps | clip-art and photographs of objects | Debian `tuxpaint-stamps-default`, 3 views of each | 8 x 57-198 |
| emoji_views, parts_views | as emoji and parts, 3 views of each object (for finding related images) | | |

`stamps` is held out: no default was chosen on it. Its views of one stamp share a file-name stem
(`<stamp>_v1.png`), so a split that ignores groups leaks; the recipe benchmark splits it by group.

Debian packages used (install before building): fonts-* (any Latin text fonts; `fc-list` finds them),
fonts-noto-color-emoji, unicode-data, tuxpaint-stamps-default.

    python benchmarks/devsets.py OUT [--only digits,emoji]
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import random
import re
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HELD_OUT = ("stamps",)
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
STAMPS = "/usr/share/tuxpaint/stamps"


def _save(img: Image.Image, folder: str, name: str) -> None:
    os.makedirs(folder, exist_ok=True)
    img.save(os.path.join(folder, name + ".png"))


def digits(out: str, per_class: int = 60, seed: int = 0) -> str:
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    root = os.path.join(out, "digits")
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == label))[:per_class]
        for i in idx:
            pixels = (d.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            _save(Image.fromarray(255 - pixels).resize((32, 32), Image.Resampling.NEAREST), os.path.join(root, str(label)),
                  f"d{i:04d}")
    return root


def faces(out: str) -> str:
    from skimage.data import lfw_subset

    images = lfw_subset()  # 200 x 25 x 25 floats: the first 100 are faces, the rest are not
    root = os.path.join(out, "faces")
    for i, im in enumerate(images):
        _save(Image.fromarray((im * 255).clip(0, 255).astype(np.uint8)), os.path.join(root, "face" if i < 100 else
                                                                                   "other"), f"f{i:03d}")
    return root


LETTERS = "abdegkmrsw"


def _text_fonts() -> list[str]:
    """One file per Latin text font that draws every letter distinctly (symbol and CJK fonts left out)."""
    files = sorted(glob.glob("/usr/share/fonts/**/*.[to]tf", recursive=True))
    skip = ("emoji", "symbol", "math", "cjk", "mono", "dingbat", "awesome", "icons", "mplus", "arabic", "hebrew",
            "devanagari", "thai", "bengali", "tamil", "ethiopic", "khmer", "myanmar", "sinhala", "georgian",
            "armenian", "lao", "tibetan", "gurmukhi", "gujarati", "kannada", "malayalam", "oriya", "telugu",
            "mongolian", "tifinagh", "canadian", "cherokee", "syriac", "thaana", "vai", "yi", "nko", "adlam")
    chosen, seen = [], set()
    for f in files:
        low = os.path.basename(f).lower()
        if any(s in f.lower() for s in skip) or any(w in low for w in ("bold", "italic", "oblique", "light",
                                                                         "thin", "black", "medium", "semi",
                                                                         "extra", "condensed", "heavy")):
            continue
        try:
            font = ImageFont.truetype(f, 40)
            masks = [bytes(font.getmask(ch)) for ch in LETTERS + "\uffff"]
        except Exception:
            continue
        if len(set(masks)) < len(masks) or min(len(m) for m in masks[:-1]) == 0:  # missing glyphs draw alike
            continue
        family = low.split("-")[0].split("_")[0].split(".")[0]
        if family in seen:
            continue
        seen.add(family)
        chosen.append(f)
    return chosen


def _family(name: str) -> str:
    """Font files of one family share their first letters (Aerial, AerialBd, AerialIt): the glyphs' group."""
    return re.sub(r"[^a-z0-9]", "", name.lower())[:5]


def glyphs(out: str, fonts: int = 120, seed: int = 0) -> str:
    rng = random.Random(seed)
    root = os.path.join(out, "glyphs")
    for f in sorted(rng.sample(_text_fonts(), fonts)):
        family = os.path.splitext(os.path.basename(f))[0].replace(" ", "")
        for ch in LETTERS:
            size = rng.randint(34, 46)
            font = ImageFont.truetype(f, size)
            img = Image.new("L", (64, 64), rng.randint(200, 255))
            d = ImageDraw.Draw(img)
            box = d.textbbox((0, 0), ch, font=font)
            x = (64 - (box[2] - box[0])) // 2 - box[0] + rng.randint(-5, 5)
            y = (64 - (box[3] - box[1])) // 2 - box[1] + rng.randint(-5, 5)
            d.text((x, y), ch, fill=rng.randint(0, 80), font=font)
            img = img.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR, fillcolor=img.getpixel((0, 0)))
            _save(img, os.path.join(root, ch), family)
    return root


EMOJI_CLASSES = ("animal-mammal", "animal-bird", "food-fruit", "food-prepared", "drink", "transport-ground",
                 "clothing", "place-building", "tool", "sky & weather")


def _emoji_by_subgroup() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    subgroup = ""
    with open(EMOJI_TEST, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            elif "; fully-qualified" in line and subgroup in EMOJI_CLASSES:
                codes = line.split(";")[0].split()
                if any(0x1F3FB <= int(c, 16) <= 0x1F3FF for c in codes):  # skin-tone variants repeat a picture
                    continue
                groups.setdefault(subgroup, []).append("".join(chr(int(c, 16)) for c in codes))
    return groups


def emoji(out: str, seed: int = 0, views: int = 1) -> str:
    """One picture of each emoji; with views > 1 (`emoji_views`), that many of each, turned and rescaled."""
    rng = random.Random(seed)
    font = ImageFont.truetype(EMOJI_FONT, 109)  # the only size this bitmap font has
    root = os.path.join(out, "emoji" if views == 1 else "emoji_views")
    for subgroup, chars in _emoji_by_subgroup().items():
        for k, ch in enumerate(chars):
            canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
            ImageDraw.Draw(canvas).text((12, 12), ch, font=font, embedded_color=True)
            box = canvas.getbbox()
            if box is None:
                continue
            for v in range(views):
                glyph = canvas.crop(box)
                if views > 1:
                    glyph = glyph.rotate(rng.uniform(-30, 30), Image.Resampling.BICUBIC, expand=True)
                _emoji_view(glyph, rng, os.path.join(root, subgroup.replace(" & ", "-")),
                            f"e{k:03d}" if views == 1 else f"e{k:03d}_v{v + 1}")
    return root


def _emoji_view(glyph: Image.Image, rng: random.Random, folder: str, name: str, side: int = 96) -> None:
    """The emoji on a plain background of a random colour, at a random scale and position."""
    img = Image.new("RGB", (side, side), tuple(rng.randint(150, 255) for _ in range(3)))
    scale = rng.uniform(0.6, 0.85) * side / max(glyph.size)
    glyph = glyph.resize((max(1, int(glyph.width * scale)), max(1, int(glyph.height * scale))),
                         Image.Resampling.LANCZOS)
    img.paste(glyph, ((side - glyph.width) // 2 + rng.randint(-6, 6), (side - glyph.height) // 2 + rng.randint(-6, 6)),
              glyph)
    _save(img, folder, name)


def textures(out: str, per_class: int = 40, seed: int = 0) -> str:
    import skimage.data as sd

    sources = {"brick": sd.brick(), "grass": sd.grass(), "gravel": sd.gravel(), "histology": sd.immunohistochemistry(),
               "retina": sd.retina()[300:1100, 300:1100], "moon": sd.moon(), "galaxies": sd.hubble_deep_field(),
               "cells": sd.cell()}
    rng = np.random.default_rng(seed)
    root = os.path.join(out, "textures")
    for name, image in sources.items():
        h, w = image.shape[:2]
        tile = min(h, w) // int(math.ceil(math.sqrt(per_class)))  # non-overlapping tiles: no two share pixels
        cells = [(r, c) for r in range(h // tile) for c in range(w // tile)]
        for k, i in enumerate(rng.permutation(len(cells))[:per_class]):
            r, c = cells[i]
            patch = Image.fromarray(image[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile])
            _save(patch.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC), os.path.join(root, name),
                  f"t{k:03d}")
    return root


PART_DEFECTS = ("ok", "scratch", "dent", "crack", "chip", "stain")


def _part(rng: random.Random, defect: str, side: int = 96, shot: random.Random | None = None) -> Image.Image:
    """A machined ring on a lit background; the defect, if any, is small, as on a real line. `rng` draws the
    part and its defect, `shot` (default: `rng`) the lighting, noise, position and turn of one photograph."""
    shot = shot or rng
    bg = rng.randint(40, 90)
    img = Image.new("L", (side, side), bg)
    d = ImageDraw.Draw(img)
    cx, cy = side / 2 + shot.uniform(-5, 5), side / 2 + shot.uniform(-5, 5)
    r_out, r_in = rng.uniform(33, 40), rng.uniform(10, 15)
    metal = rng.randint(150, 200)
    d.ellipse((cx - r_out, cy - r_out, cx + r_out, cy + r_out), fill=metal)
    d.ellipse((cx - r_in, cy - r_in, cx + r_in, cy + r_in), fill=bg)
    for k in range(6):  # bolt holes
        a = k * math.pi / 3 + rng.uniform(-0.05, 0.05)
        hx, hy = cx + 0.7 * r_out * math.cos(a), cy + 0.7 * r_out * math.sin(a)
        d.ellipse((hx - 3, hy - 3, hx + 3, hy + 3), fill=bg)

    def on_ring() -> tuple[float, float]:
        a, rad = rng.uniform(0, 2 * math.pi), rng.uniform(r_in + 5, r_out - 5)
        return cx + rad * math.cos(a), cy + rad * math.sin(a)

    if defect == "scratch":
        x, y = on_ring()
        a, n = rng.uniform(0, math.pi), rng.uniform(10, 18)
        d.line((x, y, x + n * math.cos(a), y + n * math.sin(a)), fill=metal - rng.randint(60, 90), width=1)
    elif defect == "dent":
        x, y = on_ring()
        r = rng.uniform(2.5, 4)
        d.ellipse((x - r, y - r, x + r, y + r), fill=metal - rng.randint(50, 80))
        d.arc((x - r, y - r, x + r, y + r), 200, 340, fill=min(255, metal + 50))
    elif defect == "crack":
        a = rng.uniform(0, 2 * math.pi)
        pts, rad = [], r_out
        while rad > r_out - rng.uniform(12, 18):
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
            rad -= 2.5
            a += rng.uniform(-0.08, 0.08)
        d.line(pts, fill=bg, width=1)
    elif defect == "chip":
        a = rng.uniform(0, 2 * math.pi)
        r = rng.uniform(4, 6)
        x, y = cx + r_out * math.cos(a), cy + r_out * math.sin(a)
        d.ellipse((x - r, y - r, x + r, y + r), fill=bg)
    elif defect == "stain":
        x, y = on_ring()
        r = rng.uniform(4, 7)
        stain = Image.new("L", (side, side), 0)
        ImageDraw.Draw(stain).ellipse((x - r, y - r * 0.7, x + r, y + r * 0.7), fill=120)
        img = Image.composite(Image.new("L", (side, side), metal - 70), img, stain.filter(ImageFilter.GaussianBlur(1.5)))
    # lighting gradient and sensor noise
    grad = np.linspace(-1, 1, side)[None, :] * shot.uniform(-15, 15) + np.linspace(-1, 1, side)[:, None] * shot.uniform(-15, 15)
    pixels = np.asarray(img, np.float64) + grad + np.random.default_rng(shot.randint(0, 2**31)).normal(0, 4, (side, side))
    img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).rotate(shot.uniform(0, 360), Image.Resampling.BILINEAR,
                                                                       fillcolor=bg)
    return img.convert("RGB")


def parts(out: str, per_class: int = 60, seed: int = 0, views: int = 1) -> str:
    """One photograph per part; with views > 1 (`parts_views`, per_class // views parts each), that many of
    each part: the same part and defect, another position, turn and lighting."""
    rng = random.Random(seed)
    root = os.path.join(out, "parts" if views == 1 else "parts_views")
    for defect in PART_DEFECTS:
        for k in range(per_class // views):
            state = rng.getstate()
            for v in range(views):
                rng.setstate(state)
                shot = random.Random(f"{seed}:{defect}:{k}:{v}")
                _save(_part(rng, defect, shot=shot), os.path.join(root, defect),
                      f"p{k:03d}" if views == 1 else f"p{k:03d}_v{v + 1}")
    return root


STAMP_CLASSES = ("animals/mammals", "animals/birds", "animals/insects", "food/fruit", "town/houses", "plants/flowers",
                 "town/roadsigns", "symbols/money")


def stamps(out: str, views: int = 3, seed: int = 0) -> str:
    """Each stamp photographed `views` times: turned, scaled, on another background."""
    rng = random.Random(seed)
    root = os.path.join(out, "stamps")
    for category in STAMP_CLASSES:
        label = category.split("/")[1]
        for path in sorted(glob.glob(os.path.join(STAMPS, category, "**", "*.png"), recursive=True)):
            if "_mirror" in path or "_shadow" in path:
                continue
            src = Image.open(path).convert("RGBA")
            src.thumbnail((400, 400))
            stem = os.path.splitext(os.path.basename(path))[0].replace(" ", "_")
            for v in range(views):
                side = 112
                img = Image.new("RGB", (side, side), tuple(rng.randint(120, 255) for _ in range(3)))
                s = src.rotate(rng.uniform(-25, 25), Image.Resampling.BICUBIC, expand=True)
                if rng.random() < 0.5:
                    s = s.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                scale = rng.uniform(0.55, 0.9) * side / max(s.size)
                s = s.resize((max(1, int(s.width * scale)), max(1, int(s.height * scale))), Image.Resampling.LANCZOS)
                img.paste(s, ((side - s.width) // 2 + rng.randint(-8, 8), (side - s.height) // 2 + rng.randint(-8, 8)), s)
                _save(img, os.path.join(root, label), f"{stem}_v{v + 1}")
    return root


BUILDERS = {"digits": digits, "faces": faces, "glyphs": glyphs, "emoji": emoji, "textures": textures, "parts": parts,
            "stamps": stamps, "emoji_views": lambda out: emoji(out, views=3),
            "parts_views": lambda out: parts(out, views=3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--only", help="comma-separated names (default: all)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BUILDERS)
    for name in names:
        root = BUILDERS[name](args.out)
        counts = {c: len(os.listdir(os.path.join(root, c))) for c in sorted(os.listdir(root))}
        print(f"{name}: {sum(counts.values())} images, {len(counts)} classes, per class {min(counts.values())}-"
              f"{max(counts.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
