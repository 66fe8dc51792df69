"""Backbone inits (random / local ImageNet file / HF cache / usclf checkpoint), heads, specs."""
from __future__ import annotations

import pytest
import timm
import torch

from usclf.errors import UsclfError
from usclf.models.backbone import IMAGENET_ENV, build_backbone
from usclf.models.heads import (Classifier, ClusterHead, MultiLabelHead, TwoHead, build_classifier,
                                build_from_spec, model_spec)
from usclf.train.checkpoint import save_checkpoint


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    """No env weights and empty HF / torch hub caches, so nothing can be found by accident."""
    monkeypatch.delenv(IMAGENET_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def rgb_resnet18_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("resnet18", pretrained=False).state_dict()  # 3-channel conv1, 1000-class fc


def test_random_backbone_is_a_feature_extractor():
    f = build_backbone("resnet18", in_chans=1)
    assert f.num_features == 512 and f.conv1.in_channels == 1
    assert f(torch.rand(2, 1, 32, 32)).shape == (2, 512)


def test_imagenet_from_env_file_sums_rgb_conv1(no_caches, monkeypatch):
    sd = rgb_resnet18_state()
    path = no_caches / "in1k.pth"
    torch.save(sd, path)
    monkeypatch.setenv(IMAGENET_ENV, str(path))
    f = build_backbone("resnet18", in_chans=1, init="imagenet")
    assert torch.allclose(f.conv1.weight, sd["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(f.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    assert "fc.weight" not in f.state_dict()


def test_imagenet_from_the_users_hf_cache(no_caches):
    from safetensors.torch import save_file
    sd = rgb_resnet18_state(1)
    repo = no_caches / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(sd, str(repo / "snapshots" / "abc123" / "model.safetensors"))
    f = build_backbone("resnet18", in_chans=1, init="imagenet")
    assert torch.allclose(f.conv1.weight, sd["conv1.weight"].sum(dim=1, keepdim=True))


def test_imagenet_missing_is_a_clear_error(no_caches):
    with pytest.raises(UsclfError, match="ImageNet weights for resnet18 not found locally; pass --init PATH"):
        build_backbone("resnet18", init="imagenet")


def test_imagenet_file_of_another_model_is_refused(no_caches):
    torch.manual_seed(0)
    path = no_caches / "r34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(UsclfError, match="does not fit backbone resnet18: .*unexpected keys"):
        build_backbone("resnet18", init="imagenet", imagenet_weights=path)


def test_init_from_usclf_checkpoint_and_plain_state_dict(tmp_path):
    src = build_classifier("resnet18", "cluster", num_clusters=5)
    save_checkpoint(tmp_path / "last.pt", {"format": "usclf-checkpoint-1", "model": src.state_dict(), "step": 3})
    f = build_backbone("resnet18", init=str(tmp_path / "last.pt"))
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(f.state_dict()[k], v), k
    torch.save(src.backbone.state_dict(), tmp_path / "plain.pt")
    g = build_backbone("resnet18", init=str(tmp_path / "plain.pt"))
    assert torch.equal(g.layer1[0].conv1.weight, src.backbone.layer1[0].conv1.weight)
    # an RGB plain state dict (e.g. torchvision weights) gets its conv1 summed too
    sd = rgb_resnet18_state(2)
    torch.save(sd, tmp_path / "rgb.pt")
    h = build_backbone("resnet18", init=str(tmp_path / "rgb.pt"))
    assert torch.allclose(h.conv1.weight, sd["conv1.weight"].sum(dim=1, keepdim=True))


def test_init_from_wrong_file_is_refused(tmp_path):
    torch.save(timm.create_model("resnet34", num_classes=0, in_chans=1).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(UsclfError, match="does not fit backbone resnet18: 96 unexpected keys"):
        build_backbone("resnet18", init=str(tmp_path / "r34.pt"))
    sd = build_backbone("resnet18").state_dict()
    del sd["layer2.0.bn1.weight"]
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(UsclfError, match="does not fit backbone resnet18: 1 missing keys"):
        build_backbone("resnet18", init=str(tmp_path / "partial.pt"))
    sd["layer2.0.bn1.weight"] = torch.ones(7)
    torch.save(sd, tmp_path / "wide.pt")
    with pytest.raises(UsclfError, match="shape mismatch at layer2.0.bn1.weight"):
        build_backbone("resnet18", init=str(tmp_path / "wide.pt"))
    torch.save({"head.fc.weight": torch.zeros(2, 2)}, tmp_path / "head.pt")
    with pytest.raises(UsclfError, match="no weights for backbone"):
        build_backbone("resnet18", init=str(tmp_path / "head.pt"))
    with pytest.raises(UsclfError, match="random, imagenet or an existing weights file"):
        build_backbone("resnet18", init=str(tmp_path / "nope.pt"))
    with pytest.raises(UsclfError, match="unknown backbone"):
        build_backbone("resnet_nonsense")


def test_heads_outputs():
    f = torch.randn(6, 16)
    p = ClusterHead(16, 4)(f)
    assert p.shape == (6, 4) and torch.allclose(p.sum(1), torch.ones(6)) and (p > 0).all()
    assert MultiLabelHead(16, 7)(f).shape == (6, 7)
    combo, ml = TwoHead(16, 9, 7)(f)
    assert combo.shape == (6, 9) and ml.shape == (6, 7)
    with pytest.raises(UsclfError, match="num_clusters must be a positive integer"):
        ClusterHead(16, 0)


def test_classifier_features_and_spec_roundtrip():
    torch.manual_seed(0)
    m = build_classifier("resnet18", "twohead", num_combos=9, num_classes=7).eval()
    x = torch.rand(2, 1, 32, 32)
    assert m.features(x).shape == (2, 512)
    spec = model_spec(m)
    assert spec == {"backbone": "resnet18", "in_chans": 1,
                    "head": {"type": "twohead", "in_features": 512, "num_combos": 9, "num_classes": 7}}
    m2 = build_from_spec(spec).eval()
    m2.load_state_dict(m.state_dict())
    for a, b in zip(m(x), m2(x)):
        assert torch.equal(a, b)
    with pytest.raises(UsclfError, match="unknown head type"):
        build_from_spec({"backbone": "resnet18", "head": {"type": "mlp", "in_features": 512}})
    with pytest.raises(UsclfError, match="only usclf Classifier"):
        model_spec(torch.nn.Linear(2, 2))
    with pytest.raises(UsclfError, match="head expects 16 features"):
        Classifier(build_backbone("resnet18"), MultiLabelHead(16, 3))
