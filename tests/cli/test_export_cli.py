"""`python -m core export`: a bundle whose stdout ends in one JSON line (the exporters' own chatter goes to
stderr), exit 0 when it passed its parity check, 2 with a message (no traceback) for a bad run or format."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", "export", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def test_export_prints_the_bundle_as_its_last_line(deploy_run, tmp_path):
    runs_dir, run_id = deploy_run
    out = str(tmp_path / "bundle")
    done = _cli(run_id, "--runs-dir", runs_dir, "--format", "pt2", "--out", out, "--parity-images", "4")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert len(lines) == 1, "only the JSON line on stdout"
    assert result["status"] == "ok" and result["bundle_dir"] == out and result["parity"]["n_images"] == 4
    assert "Parity passed" in done.stderr
    assert os.path.isfile(os.path.join(out, "model.pt2")) and os.path.isfile(os.path.join(out, "card.md"))


def test_bad_input_exits_2_with_a_message(deploy_run, tmp_path):
    runs_dir, run_id = deploy_run
    for args, message in ((("no-such-run", "--runs-dir", runs_dir), "no-such-run"),
                          ((run_id, "--runs-dir", runs_dir, "--format", "tflite"), "invalid choice"),
                          ((run_id, "--runs-dir", runs_dir, "--checkpoint", str(tmp_path / "x.safetensors")),
                           "x.json")):
        done = _cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "error"
