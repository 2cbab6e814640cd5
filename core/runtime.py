"""Where computation runs: the device, the autocast dtype, seeding, and the device described in words.
One of each, used by every stage. Three descriptions, for three readers: `device_name` ("cpu", "cuda (H200)")
in a run's summary; `device_description` (with the CPU model and threads) beside a measured figure;
`machine_description` ("CPU (2 cores, no GPU)") for a person choosing settings.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from core.errors import StudioError


class DeviceError(StudioError, RuntimeError):
    """The device or precision asked for is not available here; the message says what to use instead."""


# ------------------------------------------------------------------------------------ small helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device=cuda was asked for but no CUDA GPU is visible; use device=auto or cpu")
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 where the device computes it natively, fp16 on older GPUs, else None."""
    if mode == "off" or device.type == "mps":
        return None
    if device.type == "cuda":
        if mode in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if mode == "fp16":
        raise DeviceError("amp=fp16 needs a CUDA GPU; on the CPU use amp=bf16 or amp=off")
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if (mode == "bf16" or (mode == "auto" and native)) else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{device.type} ({model + ', ' if model else ''}{torch.get_num_threads()} threads)"


def dtype_name(amp_dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}.get(amp_dtype, str(amp_dtype))


def default_device() -> str:
    """The device a run with device="auto" trains on: cuda, mps or cpu."""
    return resolve_device("auto").type


def machine_description(device: str | None = None) -> str:
    """In words, for a person: which GPU, or how many CPU cores."""
    device = device or default_device()
    if device == "cuda" and torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    if device == "mps":
        return "GPU: Apple (MPS)"
    return f"CPU ({os.cpu_count() or 1} cores, no GPU)"
