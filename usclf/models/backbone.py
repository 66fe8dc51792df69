"""Feature extractor f: a timm model with `num_classes=0`, initialised at random, from ImageNet, or a file.

ImageNet weights are never downloaded: they come from an explicit local file (argument or env
`USCLF_IMAGENET_WEIGHTS`) or from weights already in the user's Hugging Face / torch hub cache. With one
input channel the RGB first-conv weights are summed (timm's `adapt_input_conv`).
"""
from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from ..errors import UsclfError
from ..atomic_io import load_checkpoint, strip_prefix

IMAGENET_ENV = "USCLF_IMAGENET_WEIGHTS"
_HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _create(name: str, in_chans: int, **kw) -> nn.Module:
    if not timm.is_model(name.split(".")[0]):
        raise UsclfError(f"unknown backbone '{name}' (not a timm model name, e.g. resnet18)")
    return timm.create_model(name, num_classes=0, in_chans=in_chans, **kw)


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def find_cached_imagenet(name: str) -> Path | None:
    """Weights for timm model `name` already on disk (HF hub cache or torch hub cache), else None."""
    cfg = _create(name, 3).pretrained_cfg
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache
        files = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(_HF_FILES)
        for fname in files:
            hit = try_to_load_from_cache(hub_id, fname, cache_dir=_hf_cache_dir())
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
    url = cfg.get("url")
    if url:
        p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if p.is_file():
            return p
    return None


def _imagenet_backbone(name: str, in_chans: int, weights: str | Path | None) -> nn.Module:
    src = weights or os.environ.get(IMAGENET_ENV) or find_cached_imagenet(name)
    if not src:
        raise UsclfError(f"ImageNet weights for {name} not found locally; pass --init PATH or set {IMAGENET_ENV}")
    src = Path(src)
    if not src.is_file():
        raise UsclfError(f"ImageNet weights file not found: {src}")
    model = _create(name, in_chans)
    load_backbone_weights(model, src, name)
    return model


def _read_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise UsclfError(f"cannot read weights {path}: {str(e).splitlines()[0][:200]}") from None
    return load_checkpoint(path)


def _extract_backbone_sd(obj: dict, source: Path) -> dict[str, torch.Tensor]:
    """Backbone tensors from a usclf checkpoint/model file ({'model': ...}) or a plain state dict."""
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise UsclfError(f"{source} holds no weights (no tensors found)")
    sd = strip_prefix(sd, "module.")
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def load_backbone_weights(backbone: nn.Module, path: str | Path, source_name: str = "") -> None:
    """Load the backbone part of a usclf checkpoint, a plain state dict or a .safetensors file into
    `backbone`: every backbone key must be present; only classifier keys may be extra; an RGB first conv
    is summed to the model's input channels."""
    path = Path(path)
    name = source_name or type(backbone).__name__
    sd = _extract_backbone_sd(_read_weights(path), path)
    own = backbone.state_dict()
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or "fc"
    heads = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
    # keys of another (e.g. deeper) network must not be silently dropped; only the classifier may be
    foreign = [k for k in sd if k not in own and not k.startswith(heads)]
    sd = {k: v for k, v in sd.items() if k in own}
    if not sd:
        raise UsclfError(f"{path} holds no weights for backbone {name}")
    if foreign:
        raise UsclfError(f"{path} does not fit backbone {name}: {len(foreign)} unexpected keys (e.g. {foreign[0]})")
    for k, v in list(sd.items()):
        want = own[k]
        # an RGB first conv loaded into a grayscale (or other in_chans) model
        if v.ndim == 4 and want.ndim == 4 and v.shape[1] != want.shape[1] and v.shape[0] == want.shape[0] \
                and v.shape[2:] == want.shape[2:]:
            sd[k] = adapt_input_conv(want.shape[1], v.float()).to(v.dtype)
    missing = [k for k in own if k not in sd]
    shapes = [k for k in sd if tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or shapes:
        what = (f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else
                f"shape mismatch at {shapes[0]}: {tuple(sd[shapes[0]].shape)} vs {tuple(own[shapes[0]].shape)}")
        raise UsclfError(f"{path} does not fit backbone {name}: {what}")
    backbone.load_state_dict(sd)


def build_backbone(name: str = "resnet18", in_chans: int = 1, init: str = "random",
                   imagenet_weights: str | Path | None = None) -> nn.Module:
    """timm feature extractor (`num_classes=0`, exposes `num_features`).

    init: "random", "imagenet" (local weights only, see module doc) or a path to a usclf checkpoint /
    model file / plain state dict whose backbone weights are loaded.
    """
    if in_chans < 1:
        raise UsclfError(f"in_chans must be >= 1, got {in_chans}")
    init = str(init)
    if init == "random":
        return _create(name, in_chans)
    if init == "imagenet":
        return _imagenet_backbone(name, in_chans, imagenet_weights)
    path = Path(init)
    if not path.is_file():
        raise UsclfError(f"init must be random, imagenet or an existing weights file; got '{init}'")
    model = _create(name, in_chans)
    load_backbone_weights(model, path, name)
    return model


def backbone_in_chans(backbone: nn.Module) -> int:
    """Input channels of the first convolution (or linear layer) of a backbone."""
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return m.in_features
    raise UsclfError(f"cannot tell the input channels of {type(backbone).__name__}")
