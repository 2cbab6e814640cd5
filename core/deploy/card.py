"""The model card a bundle carries (card.md), and the deployment figures it states.

Everything in it is measured or recorded, never assumed: the data (dataset id, counts per class and split, from
the run's manifest), test metrics with bootstrap intervals (from the parity check's own reference predictions
of the exported checkpoint), the baselines it beat or did not (the evaluation report's when one was built, else
the run's comparison with its linear probe), the exported file's latency and memory (timed in a clean child
process), the backbone's license and pretraining data (the catalog), known weaknesses (most confused pairs, the
worst corruption when the report measured one), and how to run the bundle with onnxruntime, numpy and Pillow.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import numpy as np

from core.deploy import bundle_predict
from core.deploy.timing_child import time_onnx
from core.evaluate.evaluation import Predictions, summarize
from core.evaluate.report_files import default_report_dir
from core.model.catalog import resolve_entry
from core.model.licenses import license_warning


def deployment_figures(model_path: str, fmt: str, size: int) -> dict:
    """File size, and for ONNX the latency and memory timed in a clean child process."""
    figures: dict[str, Any] = {"file_size_mb": round(os.path.getsize(model_path) / 2**20, 2)}
    if fmt == "onnx":
        figures.update(time_onnx(model_path, size))
    return figures


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _interval(iv) -> str:
    return f" (95% CI {100 * iv[0]:.1f}-{100 * iv[1]:.1f}%)" if iv else ""


def _report(runs_dir: str, run_id: str) -> dict | None:
    path = os.path.join(default_report_dir(runs_dir, run_id), "metrics.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _data_section(info: dict, data, classes: list[str]) -> list[str]:
    lines = [f"- Dataset id `{info.get('dataset_id') or '-'}` (from `{info.get('data_source') or '-'}`)", "",
             "| class | " + " | ".join(("train", "val", "test")) + " |", "|---|---:|---:|---:|"]
    counts = {name: Counter(getattr(data, name).labels) for name in ("train", "val", "test")}
    for i, cls in enumerate(classes):
        lines.append(f"| {cls} | " + " | ".join(str(counts[s].get(i, 0)) for s in ("train", "val", "test")) + " |")
    lines.append("| **total** | " + " | ".join(str(len(getattr(data, s))) for s in ("train", "val", "test")) + " |")
    return lines


def _baselines_section(report: dict | None, run: dict) -> list[str]:
    if report and report.get("models"):
        lines = [f"From the evaluation report: {report.get('verdict', '')}", "",
                 "| model | accuracy | 95% CI | macro F1 |", "|---|---:|---|---:|"]
        for m in report["models"]:
            iv = m.get("intervals", {}).get("accuracy")
            lines.append(f"| {m['name']} | {_pct(m['metrics'].get('accuracy'))} | "
                         f"{f'{100 * iv[0]:.1f}-{100 * iv[1]:.1f}%' if iv else '-'} | "
                         f"{_pct(m['metrics'].get('macro_f1'))} |")
        return lines
    outcome = run.get("summary", {}).get("outcome") or {}
    lines = ["No evaluation report was built for this run, so only its own comparison with the frozen pretrained "
             "network and a linear head (the linear probe) is known. Build the report (majority, heuristic, "
             "from-scratch baselines too) with `python -m core evaluate RUN_ID`, then export again.", ""]
    if outcome.get("sentence"):
        lines.append(f"> {outcome['sentence']}")
    test = outcome.get("comparisons", {}).get("test")
    if test:
        lines.append("")
        lines.append(f"Test accuracy: this model {_pct(test.get('model'))}, linear probe {_pct(test.get('probe'))} "
                     f"on {test.get('n')} images.")
    return lines


def _weaknesses(evaluation, report: dict | None) -> list[str]:
    lines = []
    pairs = evaluation.confused_pairs[:5]
    if pairs:
        lines.append("Most confused pairs (true -> predicted, test set):")
        lines += [f"- {p['true']} -> {p['predicted']}: {p['count']} image{'s' if p['count'] != 1 else ''} "
                  f"({100 * p['share']:.0f}% of {p['true']})" for p in pairs]
    else:
        lines.append("- No confusions on the test set (a small test set can hide them).")
    robustness = (report or {}).get("robustness")
    if robustness:
        lines.append(f"- Worst corruption: {robustness['worst']} (clean {_pct(robustness['clean_accuracy'])}, "
                     f"mean corrupted {_pct(robustness['mean_corrupted_accuracy'])}).")
    else:
        lines.append("- Robustness to corruptions: not measured (the evaluation report measures it).")
    return lines


def _deployment_section(info: dict) -> list[str]:
    d = info.get("deployment", {})
    p = info.get("parity", {})
    lines = [f"- Format: {info['model_format']} ({info['exporter']}), {d.get('file_size_mb', '-')} MB",
             f"- Parity with the PyTorch model: max |logit difference| "
             f"{p.get('max_abs_logit_diff', float('nan')):.2e}, "
             f"top-1 {'identical' if p.get('top1_identical') else 'NOT identical'} on {p.get('n_images')} "
             f"{p.get('split')} images at batch sizes {p.get('batch_sizes')} -> "
             f"**{'passed' if p.get('passed') else 'FAILED'}** (limit {p.get('tolerance', 0):.1e}: 1e-4, or 3x "
             f"PyTorch's own fp32 rounding error, {p.get('fp32_rounding', 0):.1e}, where larger; the absolute 1e-4 "
             f"bar {'met' if p.get('within_1e4') else 'not met'})"]
    if "latency_ms_batch1" in d:
        others = d.get("others_cpu")
        lines.append(f"- Latency ({d['runtime']}, {d['image_size']} px, {d.get('cpu_count')} cores, "
                     f"{d['measured_in']}): {d['latency_ms_batch1']:.2f} ms/image at batch 1, "
                     f"{d['latency_ms_batch']:.2f} ms/image at batch {d['batch_size']} "
                     f"({d['throughput_per_s']:.0f} images/s); decoding and resizing not included"
                     + (f"; other processes used {others:.1f} cores meanwhile" if others is not None else ""))
        lines.append(f"- Memory: {d['memory_mb']:.0f} MB ({d['memory_method']})")
    elif d.get("error"):
        lines.append(f"- Latency: not measured ({d['error']})")
    return lines


SNIPPET = """```python
# predict.py ships in this folder: python predict.py IMAGE [IMAGE ...]   (needs onnxruntime, numpy, Pillow)
import json
import numpy as np, onnxruntime as ort
from PIL import Image
import predict  # this bundle's predict.py: the exact preprocessing the model was trained and checked with

info = json.load(open("bundle.json"))
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
x = predict.preprocess(predict.to_rgb(Image.open("image.jpg")), info["preprocessing"])[None]
logits, embedding = session.run(["logits", "embedding"], {"input": x})
probs = predict.softmax(logits)[0]
print(info["classes"][int(probs.argmax())], float(probs.max()))
```"""


def model_card(runs_dir: str, run_id: str, run: dict, info: dict, data, split: str, paths: list[str],
               ref_logits: np.ndarray) -> str:
    """card.md of a bundle; `run`: the run store's record of the run; `ref_logits`: the exported checkpoint's fp32
    logits on `paths` (the parity reference)."""
    classes = list(info["classes"])
    labels = np.asarray(getattr(data, split).labels[:len(paths)], dtype=np.int64)
    evaluation = summarize(Predictions(tuple(classes), tuple(paths), labels,
                                       bundle_predict.softmax(ref_logits.astype(np.float64))), run_id, split)
    m, iv = evaluation.metrics, evaluation.intervals
    entry = _catalog_entry(info["architecture_name"], run)
    report = _report(runs_dir, run_id)
    lines = [f"# Model card: {run.get('name') or run_id}", "",
             f"An image classifier over {len(classes)} classes ({', '.join(classes[:20])}"
             f"{', ...' if len(classes) > 20 else ''}), fine-tuned by Transfer Studio from "
             f"`{info['architecture_name']}` (run `{run_id}`; saved model: {info.get('kept') or 'best epoch'}).", "",
             "## Backbone", f"- Pretrained on: {entry.get('pretraining', 'not recorded')}",
             f"- License: {entry.get('license', 'not recorded')}"]
    warning = license_warning(entry.get("license", ""))
    if warning:
        lines.append(f"- Note: {warning}")
    lines += ["", "## Training data", *_data_section(info, data, classes), "",
              f"## Test metrics ({evaluation.n_images} {split} images, exported checkpoint in fp32)",
              f"- Accuracy: {_pct(m.get('accuracy'))}{_interval(iv.get('accuracy'))}",
              f"- Macro F1: {_pct(m.get('macro_f1'))}{_interval(iv.get('macro_f1'))}",
              f"- Log loss: {m.get('log_loss', float('nan')):.3f}; expected calibration error "
              f"{m.get('ece', float('nan')):.3f}", "",
              "## Against the baselines", *_baselines_section(report, run), "",
              "## Known weaknesses", *_weaknesses(evaluation, report), "",
              "## Deployment", *_deployment_section(info), "",
              "## Preprocessing", f"- {info['preprocessing']['rule']}",
              f"- input_size {info['preprocessing']['input_size']}, cache_size {info['preprocessing']['cache_size']}, "
              f"interpolation {info['preprocessing']['interpolation']}, mean {info['preprocessing']['mean']}, "
              f"std {info['preprocessing']['std']}", "",
              "## Run it", SNIPPET, ""]
    return "\n".join(lines)


def _catalog_entry(architecture: str, run: dict) -> dict[str, Any]:
    for name in (run.get("model"), architecture):
        try:
            return resolve_entry(name).to_dict()
        except Exception:  # noqa: BLE001 - a user's own checkpoint or a retired name: the card says so
            continue
    return {}
