"""The parity check every export runs: the exported model, fed by the bundle's own preprocessing, must give the
PyTorch model's logits (fed by the training code's evaluation path) on the run's test images.

Reference: each image decoded by core.data.images.load_rgb into the run's uint8 cache (core.model.cache), the
evaluation crop and normalisation (PreprocessSpec.eval_input), the checkpoint's PyTorch model in fp32 (the
mirror image averaged in when the run used test-time augmentation). Candidate: the image file opened by the
bundle's predict.py (its own decoding and numpy preprocessing, imported from the bundle folder itself) into
ONNX Runtime or the torch.export program, at batch 1 and at a larger batch. Pass: the top-1 class is the same
on every image at every batch size, and the largest absolute logit difference is at most the limit.

The limit is 1e-4, or three times the PyTorch model's own fp32 rounding error where that is larger: the fp32
reference itself differs from the same network in fp64 by `fp32_rounding` (measured on up to 32 of the images).
On a tiny 32-px digits probe with logits up to 24 that floor was 8.0e-5, PyTorch at batch 1 differed from
PyTorch at batch 40 by 8.6e-5, and ONNX Runtime's fully optimised graph by 1.6e-4: float arithmetic in another
order, not an export error (a wrong resize filter in the record moves the logits by more than 1e-2). Both
figures and whether the absolute 1e-4 bar was met are recorded beside the verdict.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from core.model.cache import build_cache
from core.model.preprocess import PreprocessSpec

TOLERANCE = 1e-4  # max |logit difference|
ROUNDING_MARGIN = 3.0  # the limit is at least this many times the reference's own fp32 rounding error
ROUNDING_IMAGES = 32  # images the fp64 rounding reference is computed on
BATCH_SIZES = (1, 16)


@dataclass(frozen=True)
class Parity:
    passed: bool
    max_abs_logit_diff: float  # over every image and batch size
    max_abs_input_diff: float  # the bundle's preprocessing against the training code's, on the network input
    top1_identical: bool
    top1_disagreements: int  # images whose top-1 differs, at the worst batch size
    n_images: int
    split: str
    batch_sizes: tuple[int, ...]
    per_batch: dict[str, float]  # batch size -> its max |logit difference|
    tolerance: float  # the limit applied: max(TOLERANCE, ROUNDING_MARGIN * fp32_rounding)
    fp32_rounding: float  # max |fp32 - fp64 logits| of the PyTorch reference itself
    within_1e4: bool  # the absolute 1e-4 bar met as well
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"Parity {verdict}: max |logit difference| {self.max_abs_logit_diff:.2e} (limit {self.tolerance:.1e}; "
                f"PyTorch's own fp32 rounding {self.fp32_rounding:.1e}), "
                f"top-1 {'identical' if self.top1_identical else f'different on {self.top1_disagreements}'} on "
                f"{self.n_images} {self.split} images at batch sizes {', '.join(map(str, self.batch_sizes))}")


def load_bundle_script(bundle_dir: str):
    """The bundle's own predict.py as a module (not the studio's copy): what a user of the bundle runs."""
    path = os.path.join(bundle_dir, "predict.py")
    spec = importlib.util.spec_from_file_location(f"bundle_predict_{abs(hash(bundle_dir))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_logits(model: torch.nn.Module, pre: PreprocessSpec, paths: Sequence[str], tta: bool,
                     batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(network inputs, fp32 logits) through the training code's evaluation path."""
    model.eval()
    inputs, logits = [], []
    for start in range(0, len(paths), batch_size):
        x = pre.eval_input(build_cache(paths[start:start + batch_size], pre, torch.device("cpu")))
        with torch.inference_mode():
            out = model(x).float()
            if tta:
                out = (out + model(torch.flip(x, dims=[3])).float()) / 2
        inputs.append(x.numpy())
        logits.append(out.numpy())
    return np.concatenate(inputs), np.concatenate(logits)


def check_parity(bundle_dir: str, run_model: Callable[[np.ndarray], np.ndarray], model: torch.nn.Module,
                 pre: PreprocessSpec, paths: Sequence[str], tta: bool, split: str = "test",
                 batch_sizes: Sequence[int] = BATCH_SIZES, tolerance: float = TOLERANCE
                 ) -> tuple[Parity, np.ndarray]:
    """(the parity figures, the reference logits); `run_model`: a (N, 3, H, W) float32 batch -> exported logits."""
    started = time.perf_counter()
    script = load_bundle_script(bundle_dir)
    with open(os.path.join(bundle_dir, "bundle.json"), encoding="utf-8") as f:
        prep = json.load(f)["preprocessing"]
    ref_inputs, ref = reference_logits(model, pre, paths, tta)
    rounding = fp32_rounding(model, ref_inputs[:ROUNDING_IMAGES], ref[:ROUNDING_IMAGES], tta)
    limit = max(tolerance, ROUNDING_MARGIN * rounding)
    own = np.stack([_bundle_input(script, path, prep) for path in paths])
    input_diff = float(np.abs(own - ref_inputs).max()) if len(paths) else 0.0
    per_batch, worst_disagree, worst = {}, 0, 0.0
    ref_top1 = ref.argmax(1)
    for b in batch_sizes:
        out = np.concatenate([run_model(own[i:i + b]) for i in range(0, len(own), b)]) if len(own) else ref
        diff = float(np.abs(out - ref).max()) if len(own) else 0.0
        per_batch[str(b)] = diff
        worst = max(worst, diff)
        worst_disagree = max(worst_disagree, int((out.argmax(1) != ref_top1).sum()))
    parity = Parity(worst <= limit and worst_disagree == 0 and len(paths) > 0, worst, input_diff,
                    worst_disagree == 0, worst_disagree, len(paths), split, tuple(batch_sizes), per_batch,
                    limit, rounding, worst <= tolerance, round(time.perf_counter() - started, 2))
    return parity, ref


def fp32_rounding(model: torch.nn.Module, inputs: np.ndarray, ref: np.ndarray, tta: bool) -> float:
    """max |fp32 reference - the same network in fp64| on `inputs`: the reference's own rounding error."""
    if not len(inputs):
        return 0.0
    exact = copy.deepcopy(model).double().eval()
    with torch.inference_mode():
        x = torch.from_numpy(inputs).double()
        out = exact(x)
        if tta:
            out = (out + exact(torch.flip(x, dims=[3]))) / 2
    return float(np.abs(out.numpy() - ref.astype(np.float64)).max())


def _bundle_input(script, path: str, prep: dict) -> np.ndarray:
    with Image.open(path) as im:
        return script.preprocess(script.to_rgb(im), prep)
