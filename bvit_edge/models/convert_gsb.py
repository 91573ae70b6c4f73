"""Convert a checkpoint of the official GSB code (IMRL/GSB-Vision-Transformer) into a bvit-edge GSB model.

The official files are ``torch.save`` dicts {'model', 'optimizer', 'lr_scheduler', 'epoch', 'scaler', 'args'}
with ``args`` an ``argparse.Namespace``; they are read with ``weights_only=True`` and
``argparse.Namespace`` allow-listed (torch >= 2.6 refuses them otherwise; turning weights_only off would
allow arbitrary code).

Key mapping (official -> bvit-edge; every other key keeps its name):

    stage 2 (403 keys for DeiT-S)
      blocks.N.attn.clip_query                -> blocks.N.attn.quant_q.alpha
      blocks.N.attn.clip_key                  -> blocks.N.attn.quant_k.alpha
      blocks.N.attn.clip_value{,2,3}          -> blocks.N.attn.quant_v.alpha{1,2,3}
      blocks.N.attn.clip_attn{,2,3}           -> blocks.N.attn.quant_attn.alpha{1,2,3}
      *.{qkv,proj,fc1,fc2}.input_clip_val     -> *.quant.alpha
      head{,_dist}.weight_clip_val            -> head{,_dist}.weight_quant.alpha
      head{,_dist}.input_clip_val             -> head{,_dist}.input_quant.alpha
    stage 1 (244 keys)
      blocks.N.mlp.fc{1,2}.weight_clip_val    -> dropped (an unused buffer [-2.5, 2.5] of the official code)

Every ``initialized`` flag of the converted model is set (the official scales are trained values). The model's
geometry (dim, depth, heads, patch, image size, classes) is read from the tensor shapes. Semantics that
differ on purpose (docs/methods.md "GSB"): bvit-edge takes the group masks' max/min per sample, the official code
per batch, so batch-1 predictions agree and larger-batch ones may not.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bvit_edge.errors import CheckpointError
from bvit_edge.models.registry import IMAGENET_MEAN, IMAGENET_STD

_ATTN_RENAMES = {
    "clip_query": "quant_q.alpha",
    "clip_key": "quant_k.alpha",
    "clip_value": "quant_v.alpha1",
    "clip_value2": "quant_v.alpha2",
    "clip_value3": "quant_v.alpha3",
    "clip_attn": "quant_attn.alpha1",
    "clip_attn2": "quant_attn.alpha2",
    "clip_attn3": "quant_attn.alpha3",
}
_RE_ATTN_CLIP = re.compile(r"^(blocks\.\d+\.attn\.)(clip_\w+)$")
_RE_INPUT_CLIP = re.compile(r"^(blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.fc[12])\.)input_clip_val$")
_RE_STAGE1_WCLIP = re.compile(r"^blocks\.\d+\.mlp\.fc[12]\.weight_clip_val$")
_RE_HEAD_CLIP = re.compile(r"^(head(?:_dist)?\.)(weight|input)_clip_val$")


@dataclass
class ConvertReport:
    """What the conversion did: the stage found, the geometry inferred, keys renamed and dropped."""

    stage: int
    geometry: dict[str, Any]
    renamed: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    flags_set: list[str] = field(default_factory=list)


def load_official_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ``model`` state_dict of an official GSB ``.pth`` (weights_only, argparse.Namespace allow-listed)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"No file at {p}: give the path of an official GSB checkpoint (.pth).")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{p} could not be read as a PyTorch checkpoint with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). It must be a file saved by the official GSB "
            "training code (a dict with a 'model' state_dict)."
        ) from exc
    return extract_state(obj, str(p))


def extract_state(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict inside an official checkpoint dict (its 'model' entry) or the dict itself."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{where} holds no state_dict of tensors (expected a dict with a 'model' entry).")
    return {str(k): v for k, v in obj.items()}


def detect_stage(state: Mapping[str, torch.Tensor]) -> int:
    """1 for a stage-1 checkpoint (patch-embedding BatchNorm), 2 for a full GSB one (attention bias B)."""
    if "patch_embed.norm.weight" in state:
        return 1
    if any(k.endswith("attn.move_att.bias") for k in state):
        return 2
    raise CheckpointError(
        "This is not a GSB checkpoint of the official code: it has neither patch_embed.norm.* (stage 1) "
        "nor blocks.N.attn.move_att.bias (stage 2)."
    )


def infer_geometry(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """ViTConfig fields from tensor shapes: img/patch size, dim, depth, heads, MLP ratio, classes, qkv bias."""
    try:
        pos = state["pos_embed"]
        pw = state["patch_embed.proj.weight"]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        heads = int(state["blocks.0.attn.move_q.bias"].shape[0])
        hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
        num_classes = int(state["head.weight"].shape[0])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"Cannot infer the model geometry: key {exc} is missing from the checkpoint.") from exc
    dim, tokens = int(pos.shape[-1]), int(pos.shape[1])
    prefix = 2 if "dist_token" in state else 1
    grid = math.isqrt(tokens - prefix)
    if grid * grid != tokens - prefix:
        raise CheckpointError(f"pos_embed has {tokens} tokens, not a square patch grid plus {prefix} prefix tokens.")
    patch = int(pw.shape[-1])
    return dict(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=int(pw.shape[1]),
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=hidden / dim,
        num_classes=num_classes,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        distilled=prefix == 2,
    )


def rename_key(key: str, stage: int) -> str | None:
    """The bvit-edge name of an official key (None: dropped on purpose)."""
    if stage == 1 and _RE_STAGE1_WCLIP.match(key):
        return None
    m = _RE_ATTN_CLIP.match(key)
    if m and m.group(2) in _ATTN_RENAMES:
        return m.group(1) + _ATTN_RENAMES[m.group(2)]
    m = _RE_INPUT_CLIP.match(key)
    if m:
        return m.group(1) + "quant.alpha"
    m = _RE_HEAD_CLIP.match(key)
    if m:
        return m.group(1) + ("weight_quant.alpha" if m.group(2) == "weight" else "input_quant.alpha")
    return key


def convert_state(
    state: Mapping[str, torch.Tensor], model: torch.nn.Module, stage: int
) -> tuple[dict[str, torch.Tensor], ConvertReport]:
    """Map every official key onto ``model``'s state_dict; refuse with the full list of unmatched keys."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    rep = ConvertReport(stage=stage, geometry={})
    unmatched, bad_shape = [], []
    for k, v in state.items():
        new = rename_key(k, stage)
        if new is None:
            rep.dropped.append(k)
            continue
        if new not in own:
            unmatched.append(k)
            continue
        target = own[new]
        if tuple(v.shape) != tuple(target.shape):
            if v.numel() == target.numel() == 1:  # a scalar stored as [1] or []
                v = v.reshape(target.shape)
            else:
                bad_shape.append(f"{k} {tuple(v.shape)} -> {new} {tuple(target.shape)}")
                continue
        out[new] = v.to(target.dtype)
        if new != k:
            rep.renamed[k] = new
    for k in own:
        if k.endswith("initialized") and k not in out:
            out[k] = torch.ones_like(own[k])
            rep.flags_set.append(k)
    missing = [k for k in own if k not in out]
    if unmatched or bad_shape or missing:
        lines = []
        if unmatched:
            lines.append(f"{len(unmatched)} checkpoint keys have no place in the model: {', '.join(unmatched)}")
        if bad_shape:
            lines.append(f"{len(bad_shape)} keys have the wrong shape: {', '.join(bad_shape)}")
        if missing:
            lines.append(f"{len(missing)} model keys are not in the checkpoint: {', '.join(missing)}")
        raise CheckpointError(
            f"Refusing to convert this GSB stage-{stage} checkpoint: " + "; ".join(lines) + ". Is it a "
            "checkpoint of the official GSB code (One_bit_vit_new.py / One_bit_vit_weight.py) and unmodified?"
        )
    return out, rep


def convert_gsb_official(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[torch.nn.Module, ConvertReport]:
    """Build the matching bvit-edge GSB model and load an official checkpoint (path, checkpoint dict or
    state_dict) into it. Returns (model in eval mode, report). Raises CheckpointError listing unmatched keys."""
    from bvit_edge.models.gsb import _gsb

    state = load_official_checkpoint(source) if isinstance(source, (str, os.PathLike)) else extract_state(source)
    stage = detect_stage(state)
    geometry = infer_geometry(state)
    model = _gsb(dict(geometry), stage=stage)
    mapped, rep = convert_state(state, model, stage)
    model.load_state_dict(mapped, strict=True)
    rep.geometry = geometry
    model.eval()
    model.model_name = "gsb_deit_small_patch16_224"  # type: ignore[assignment]
    model.model_kwargs = {
        "stage": stage,
        **{k: v for k, v in geometry.items() if k != "distilled"},
        "drop_path_rate": 0.0,
    }  # type: ignore[assignment]
    return model, rep


def convert_to_checkpoint(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    classes: list[str] | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    overwrite: bool = False,
) -> ConvertReport:
    """Convert an official .pth into a bvit-edge checkpoint folder (model.safetensors + config.json).

    The official training normalises with the ImageNet mean/std (timm's defaults): the defaults here. Class
    names are not stored in the official files: pass them, or they are "0", "1", ... ``dest`` follows
    bvit_edge.output_folder's rule (``overwrite`` replaces a folder that is not a converted checkpoint).
    """
    from bvit_edge.output_folder import check_output_folder
    from bvit_edge.training.checkpoint import save_checkpoint

    check_output_folder(dest, "convert", overwrite, inputs=(source,))

    model, rep = convert_gsb_official(source)
    n = int(rep.geometry["num_classes"])
    if classes is not None and len(classes) != n:
        raise CheckpointError(f"{len(classes)} class names given, the checkpoint has {n} classes.")
    config = {
        "model": model.model_name,
        "model_kwargs": model.model_kwargs,
        "method": "gsb",
        "num_classes": n,
        "classes": list(classes) if classes is not None else [str(i) for i in range(n)],
        "image_size": int(rep.geometry["img_size"]),
        "mean": list(mean),
        "std": list(std),
        "source": {"from": "gsb-official", "path": str(source), "stage": rep.stage, "dropped": rep.dropped},
    }
    save_checkpoint(dest, model, config, written_by="convert")
    return rep


__all__ = [
    "ConvertReport",
    "convert_gsb_official",
    "convert_state",
    "convert_to_checkpoint",
    "detect_stage",
    "extract_state",
    "infer_geometry",
    "load_official_checkpoint",
    "rename_key",
]
