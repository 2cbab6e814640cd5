import argparse
import io
import os

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from core.model.backbones import WeightsError
from core.model.uploads import add_checkpoint, ingest_csv_upload, safe_filename


def test_weights_that_fit_are_kept_and_others_refused_and_deleted(tmp_path):
    import timm

    trunk = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    good = io.BytesIO(safetensors_bytes({k: v.contiguous() for k, v in trunk.state_dict().items()}))
    check = add_checkpoint(good, "../../my weights.safetensors", "efficientnet_lite0", str(tmp_path))
    assert os.path.dirname(check.path) == str(tmp_path / "checkpoints") and check.path.endswith("-my_weights.safetensors")
    assert check.model == "efficientnet_lite0" and check.params == sum(p.numel() for p in trunk.parameters())
    with pytest.raises(WeightsError, match="does not fit"):
        add_checkpoint(io.BytesIO(safetensors_bytes({"w": torch.zeros(2)})), "x.safetensors", "efficientnet_lite0",
                       str(tmp_path))
    pickled = io.BytesIO()
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1.0)}, pickled)  # not only tensors
    with pytest.raises(WeightsError, match="pickled objects"):
        add_checkpoint(io.BytesIO(pickled.getvalue()), "x.pt", "efficientnet_lite0", str(tmp_path))
    with pytest.raises(WeightsError, match="unsupported file type"):
        add_checkpoint(io.BytesIO(b"x"), "weights.pkl", "efficientnet_lite0", str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == [os.path.basename(check.path)]


def test_a_csv_upload_with_its_images(small_digits_dir, tmp_path):
    files = [(label, name) for label in ("1", "7") for name in sorted(os.listdir(os.path.join(small_digits_dir, label)))]
    csv = "path,label\n" + "".join(f"{name},{label}\n" for label, name in files) + "missing.png,1\n"
    images = [(name, open(os.path.join(small_digits_dir, label, name), "rb")) for label, name in files]
    try:
        dataset = ingest_csv_upload(io.BytesIO(csv.encode()), "labels.csv", images, str(tmp_path))
    finally:
        for _, f in images:
            f.close()
    assert len(dataset.samples) == 60 and dataset.labels == ("1", "7")
    assert [s.code for s in dataset.skipped] == ["missing_file"]
    assert not os.listdir(tmp_path / "uploads"), "the staging folder is removed"
    assert safe_filename("../a b/c$.pt") == "c_.pt" and safe_filename("...") == "upload"
