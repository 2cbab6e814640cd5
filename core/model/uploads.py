"""Files a person uploads through the dashboard: their own model weights, and a CSV with loose images.

Uploads arrive as file-like objects. Weights are stored under `<workspace>/checkpoints/` by content
(the same file uploaded twice is stored once) and kept only when they load into the chosen
architecture; a CSV and its images are staged in a private folder, ingested into the dataset store
through core.data.ingest (which copies them) and the staging folder is removed.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from core.data.ingest import ingest
from core.data.limits import IngestLimits
from core.data.paths import is_hidden
from core.data.types import Dataset, IngestError
from core.model.backbones import WeightsError, load_backbone

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
MAX_CHECKPOINT_BYTES = 4 * 1024**3
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CheckpointCheck:
    path: str  # where the weights are stored, for TrainConfig.checkpoint_path
    model: str  # the architecture they fit
    params: int  # parameters loaded into the trunk
    message: str


def safe_filename(name: str) -> str:
    """The base name of an upload with anything but letters, digits, '.', '-' and '_' replaced."""
    base = os.path.basename(name.replace("\\", "/")).strip()
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    return base[:120] or "upload"


def _write(fileobj: BinaryIO, dst: str, max_bytes: int, name: str) -> str:
    """Copy an upload to dst while counting its bytes; returns its sha256."""
    h, total = hashlib.sha256(), 0
    with open(dst, "wb") as out:
        while chunk := fileobj.read(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise WeightsError(f"{name}: refused, larger than {max_bytes // 1024**2} MB")
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def add_checkpoint(fileobj: BinaryIO, filename: str, model: str, workspace_dir: str,
                   max_bytes: int = MAX_CHECKPOINT_BYTES) -> CheckpointCheck:
    """Store uploaded weights and check that they load into `model`'s trunk; they are deleted when not.

    Raises WeightsError (unreadable, unsafe pickle, or tensors that do not fit, with which ones) or
    core.model.catalog.CatalogError (unknown architecture).
    """
    name = safe_filename(filename)
    if not name.lower().endswith(CHECKPOINT_SUFFIXES):
        raise WeightsError(f"{filename}: unsupported file type; upload .safetensors, or a weights-only .pt/.pth "
                           "(torch.save(model.state_dict(), path))")
    folder = os.path.join(workspace_dir, "checkpoints")
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".upload-{uuid.uuid4().hex}-{name}")
    try:
        digest = _write(fileobj, tmp, max_bytes, filename)
        path = os.path.join(folder, f"{digest[:12]}-{name}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:
        backbone = load_backbone(model, checkpoint_path=path, pretrained=False)
    except Exception:
        os.remove(path)
        raise
    params = sum(p.numel() for p in backbone.trunk.parameters())
    return CheckpointCheck(path, backbone.entry.name, params,
                           f"{filename} fits {backbone.entry.name}: {params / 1e6:.2f} M parameters loaded")


def ingest_csv_upload(csv_file: BinaryIO, csv_name: str, images: Iterable[tuple[str, BinaryIO]],
                      workspace_dir: str, limits: IngestLimits = IngestLimits()) -> Dataset:
    """Ingest an uploaded CSV (path,label[,split][,group]) whose paths name the uploaded images.

    Images are matched by file name (the CSV's paths may not have folders: upload a zip for those).
    """
    staging = os.path.join(workspace_dir, "uploads", uuid.uuid4().hex)
    os.makedirs(staging)
    try:
        count, total = 0, 0
        for name, fileobj in images:
            safe = os.path.basename(name.replace("\\", "/"))
            if not safe or "\x00" in safe or is_hidden(safe) or os.path.exists(os.path.join(staging, safe)):
                continue  # hidden, or a second file of the same name: the first one wins
            count += 1
            if count > limits.max_members:
                raise IngestError(f"refused, more than {limits.max_members} images; raise IngestLimits.max_members")
            with open(os.path.join(staging, safe), "wb") as out:
                while chunk := fileobj.read(_CHUNK):
                    total += len(chunk)
                    if total > limits.max_total_bytes:
                        raise IngestError(f"refused, the images are larger than {limits.max_total_bytes} bytes")
                    out.write(chunk)
        return ingest(csv_file, workspace_dir, filename=csv_name, image_root=staging, limits=limits)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
