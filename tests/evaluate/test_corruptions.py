import numpy as np
import pytest
import torch

from core.evaluate.corruptions import CORRUPTIONS, SEVERITIES, CorruptionError, corrupt


def _images() -> torch.Tensor:
    """Two 128 px images with smooth gradients, edges and texture, like photos have."""
    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    rng = np.random.default_rng(0)
    base = np.stack([xx, yy, (xx + yy) / 2]) * 160 + 40
    base[:, 40:88, 40:88] += 50  # a square: edges
    imgs = np.stack([base + rng.normal(0, 8, base.shape), base[:, ::-1, :] + rng.normal(0, 8, base.shape)])
    return torch.from_numpy(np.clip(imgs, 0, 255).round().astype(np.uint8))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_get_stronger_with_severity_and_leave_the_input_alone(name):
    images = _images()
    before = images.clone()
    outs = [corrupt(images, name, s) for s in SEVERITIES]
    assert torch.equal(images, before)
    distances = [float((o.float() - images.float()).abs().mean()) for o in outs]
    assert all(o.dtype == torch.uint8 and o.shape == images.shape for o in outs)
    assert 0 < distances[0] < distances[1] < distances[2], distances
    assert torch.equal(corrupt(images, name, 2, seed=1), corrupt(images, name, 2, seed=1))  # deterministic


def test_each_corruption_does_what_its_name_says():
    images = _images()
    x = images.float()

    def high_freq(t):  # energy of horizontal differences: what blur removes
        return float(t.float().diff(dim=-1).abs().mean())
    blurred = [high_freq(corrupt(images, "gaussian_blur", s)) for s in SEVERITIES]
    assert high_freq(images) > blurred[0] > blurred[1] > blurred[2]
    means = [float(corrupt(images, "brightness", s).float().mean()) for s in SEVERITIES]
    assert float(x.mean()) < means[0] < means[1] < means[2]
    stds = [float(corrupt(images, "contrast", s).float().std()) for s in SEVERITIES]
    assert float(x.std()) > stds[0] > stds[1] > stds[2]
    noise = [float((corrupt(images, "gaussian_noise", s).float() - x).std()) for s in SEVERITIES]
    assert noise[0] == pytest.approx(0.08 * 255, rel=0.15) and noise[0] < noise[1] < noise[2]


def test_unknown_corruptions_and_severities_name_the_choices():
    with pytest.raises(CorruptionError, match="gaussian_noise"):
        corrupt(_images(), "fog", 1)
    with pytest.raises(CorruptionError, match="severity"):
        corrupt(_images(), "jpeg", 4)
