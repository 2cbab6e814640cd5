import pytest
import torch

from core.evaluate.latency import count_parameters, measure_latency
from core.evaluate.latency_child import deployment_profile


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


def _tiny():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 2))


def test_latency_is_timed_in_a_clean_child_process_and_says_so(tmp_path):
    from core.evaluate.latency import CHILD
    from core.evaluate.latency_child import measure_in_child, save_for_timing

    messages = []
    jobs = [save_for_timing(_tiny(), str(tmp_path), "tiny", 16), save_for_timing(_tiny(), str(tmp_path), "tiny2", 24)]
    first, second = measure_in_child(jobs, "cpu", batch_size=4, budget_s=0.05, progress=messages.append)
    assert messages == ["timing tiny in a clean child process (1 of 2)",
                        "timing tiny2 in a clean child process (2 of 2)"]
    for profile, size in ((first, 16), (second, 24)):
        # a sane figure: a few hundred parameters at 16-24 px take well under 50 ms per image on any CPU
        assert 0 < profile.latency_ms_batch1 < 50 and 0 < profile.latency_ms_batch < 50
        assert profile.throughput_per_s == pytest.approx(1000.0 / profile.latency_ms_batch)
        assert profile.measured_in == CHILD and profile.other_threads == 0
        assert profile.threads == torch.get_num_threads() and profile.image_size == size and profile.batch_size == 4
        assert profile.others_cpu is None or profile.others_cpu >= 0
        text = profile.conditions()
        assert text.startswith("measured in a clean child process; cpu") and f"{size} px input, batch 1 and 4" in text
    rows = dict(first.condition_rows())
    assert rows["measured in"] == CHILD and rows["threads"] == str(torch.get_num_threads())


def test_without_a_child_the_latency_is_timed_here_and_labelled_a_fallback(monkeypatch):
    import threading

    from core.evaluate import latency_child

    monkeypatch.setattr(latency_child.sys, "executable", "/nonexistent/python")
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)  # something else alive in this process
    other.start()
    try:
        profile = latency_child.measure_latency_isolated(_tiny(), 16, batch_size=2, budget_s=0.02)
    finally:
        release.set()
    assert profile.measured_in.startswith("this process (fallback: the clean child process could not be started")
    assert profile.latency_ms_batch1 > 0 and profile.other_threads >= 1 and profile.contended
    assert "fallback" in profile.conditions() and "pessimistic" in profile.conditions()


def test_a_model_that_cannot_be_pickled_is_timed_here_and_says_why(tmp_path):
    from core.evaluate.latency_child import measure_in_child, save_for_timing

    class Local(torch.nn.Module):  # defined in a function: pickle cannot find it by name
        def forward(self, x):
            return x.mean()

    job = save_for_timing(Local(), str(tmp_path), "local", 16)
    assert job.model_file is None and "could not be saved" in job.unsaved
    (profile,) = measure_in_child([job], budget_s=0.01, batch_size=2)
    assert profile.measured_in.startswith("this process (fallback: the model could not be saved")


def test_the_conditions_of_several_profiles_read_as_one_line():
    from core.evaluate.latency import CHILD, LatencyProfile, shared_conditions

    def profile(size, others):
        return LatencyProfile("cpu (x, 2 threads)", "bf16", size, 32, 1.0, 0.5, 2000.0, 10.0, "rss", 0.4, 2, 2,
                              CHILD, others, 0)
    quiet = shared_conditions([profile(64, 0.1), profile(96, 0.15)])
    assert quiet == ("measured in a clean child process, one model after another; cpu (x, 2 threads), bf16; 64/96 px "
                     "input, batch 1 and 32; load average 0.4 on 2 cores before; other processes used up to 0.1 "
                     "cores while timing")
    assert shared_conditions([profile(64, 0.1), profile(64, 1.5)]).endswith("these figures are pessimistic)")
    assert LatencyProfile.from_dict({**profile(64, 0.1).to_dict(), "unknown": 1}) == profile(64, 0.1)


def test_a_child_started_ahead_times_the_models_it_is_given_later(tmp_path):
    from core.evaluate.latency import CHILD
    from core.evaluate.latency_child import LatencyChild, measure_in_child, save_for_timing

    with LatencyChild() as child:  # importing while the caller works
        job = save_for_timing(_tiny(), str(tmp_path), "tiny", 16)
        (profile,) = measure_in_child([job], batch_size=2, budget_s=0.02, child=child)
    assert profile.measured_in == CHILD and profile.latency_ms_batch1 > 0
    assert child.proc.poll() is not None, "used up: it has exited"
    unused = LatencyChild()
    unused.close()  # a child given no request (the caller fell back or failed) is stopped, not left behind
    assert unused.proc.poll() is not None


def test_a_child_that_runs_past_its_limit_is_stopped_and_the_fallback_says_so(tmp_path):
    from core.evaluate.latency_child import measure_in_child, save_for_timing

    job = save_for_timing(_tiny(), str(tmp_path), "tiny", 16)
    (profile,) = measure_in_child([job], batch_size=2, budget_s=0.02, timeout_s=0.3)  # it cannot even import torch
    assert "fallback: the clean child process ran past its 0.3 s limit and was stopped" in profile.measured_in
