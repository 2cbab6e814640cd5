import pytest
import torch

from core.latency import count_parameters, deployment_profile, measure_latency


def test_latency_and_memory_are_measured_and_consistent(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    assert count_parameters(model) == 3 * 16 * 9 + 16 + 16 * 4 + 4
    lat = measure_latency(model, 32, "cpu", batch_size=8, budget_s=0.1)
    assert lat.latency_ms_batch1 > 0 and lat.latency_ms_batch > 0
    assert lat.throughput_per_s == pytest.approx(1000.0 / lat.latency_ms_batch)
    assert lat.peak_memory_mb >= 0 and lat.memory_method and lat.dtype == "fp32" and lat.batch_size == 8
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\0" * 2**20)
    profile = deployment_profile(model, 32, str(weights), batch_size=4, budget_s=0.05)
    assert profile.file_size_mb == 1.0 and profile.parameters == count_parameters(model)
    assert profile.to_dict()["latency"]["image_size"] == 32
