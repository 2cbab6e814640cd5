import ast
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_models_lists_the_catalog_with_offline_default_available():
    out = _run("models", "--json")
    assert out.returncode == 0
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    by_name = {r["name"]: r for r in rows}
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert by_name[name]["available"] and by_name[name]["source"] == "offline"
        assert by_name[name]["license"] == "Apache-2.0"
    assert by_name["efficientnet_lite1"]["input_size"] == 240
    hub = [r for r in rows if r["source"] in ("timm", "torchvision")]
    assert hub and all("params_m" in r and "mean" in r for r in hub)
    assert "efficientnet_lite0" in _run("models").stdout


def test_bad_input_gives_a_clear_error_and_exit_code_2(tmp_path):
    out = _run("train", str(tmp_path / "missing"), "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr
    out = _run("train", str(tmp_path), "--set", "freeze_ratio=2", "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "freeze_ratio must be between 0.0 and 1.0" in out.stderr
    out = _run("train", "--resume", "nope", "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "no run 'nope'" in out.stderr


def test_core_never_imports_streamlit():
    core = os.path.join(ROOT, "core")
    for dirpath, _, files in os.walk(core):
        for name in files:
            if not name.endswith(".py"):
                continue
            tree = ast.parse(open(os.path.join(dirpath, name)).read())
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not any(n.split(".")[0] == "streamlit" for n in names), f"{name} imports streamlit"
