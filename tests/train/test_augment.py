import torch

from core.train.augment import augment_batch
from core.config import AugmentSpec
from core.model.preprocess import PreprocessSpec

PRE = PreprocessSpec(input_size=32, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
NEUTRAL = AugmentSpec(hflip=False, scale_min=1.0, brightness=0.0, contrast=0.0)


def _left_bright(n=8):
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    x[..., :, :12] = 255
    return x


def test_shapes_range_and_determinism():
    x = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    spec = AugmentSpec(rotation_deg=15, noise_std=0.05, blur_prob=0.5)
    a = augment_batch(x, spec, PRE, torch.Generator().manual_seed(1))
    b = augment_batch(x, spec, PRE, torch.Generator().manual_seed(1))
    c = augment_batch(x, spec, PRE, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1.0 and a.max() <= 1.0  # normalised from [0, 1] with mean=std=0.5


def test_no_flip_keeps_orientation_and_flip_mirrors_about_half():
    x = _left_bright(64)
    kept = augment_batch(x, NEUTRAL, PRE, torch.Generator().manual_seed(0))
    assert (kept[..., :6].mean(dim=(1, 2, 3)) > 0.9).all()  # left edge still bright
    flipped = augment_batch(x, AugmentSpec(hflip=True, scale_min=1.0, brightness=0, contrast=0), PRE,
                            torch.Generator().manual_seed(0))
    right_bright = (flipped[..., -6:].mean(dim=(1, 2, 3)) > 0.9).float().mean()
    assert 0.25 < right_bright < 0.75


def test_photometric_jitter_changes_brightness_only_when_asked():
    x = torch.full((16, 3, 32, 32), 128, dtype=torch.uint8)
    plain = augment_batch(x, NEUTRAL, PRE, torch.Generator().manual_seed(0))
    jittered = augment_batch(x, AugmentSpec(hflip=False, scale_min=1.0, brightness=0.5, contrast=0.0), PRE,
                             torch.Generator().manual_seed(0))
    assert plain.std() < 1e-3
    assert jittered.mean(dim=(1, 2, 3)).std() > 0.05


def test_preview_grid_shows_the_original_then_variants():
    from PIL import Image

    from core.train.augment import preview_grid

    img = Image.new("RGB", (40, 40), (200, 30, 30))
    grid = preview_grid([img, img], PRE, AugmentSpec(brightness=0.5), per_image=3, seed=0)
    assert grid.shape == (2 * 32, 4 * 32, 3) and grid.dtype.name == "uint8"
    first = grid[:32, :32]
    assert abs(int(first[..., 0].mean()) - 200) <= 2  # the un-augmented view keeps the colour
    variants = [grid[:32, 32 * k:32 * (k + 1), 0].mean() for k in range(1, 4)]
    assert max(variants) - min(variants) > 5  # brightness jitter differs between variants
