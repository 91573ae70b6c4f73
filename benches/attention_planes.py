"""Structure of GSB's attention planes (A·V's operands) on real inputs: density, nesting, zero words, padding.

For every GSB attention block of a frozen model, the operands of its A·V BinaryMatMul are captured while
the model runs on real inputs: A' = softmax(Q·Kᵀ s) + B and V' = V + v_shift. Their planes are computed
with the contract's numpy reference (bvit_edge.export.ops.binary_matmul.a_plane_bits / b_plane_bits):

    P1 = [A' > a1 / 2], P2 = [A' > r1 max A'], P3 = [A' > r2 max A']          (max per sample)
    M1 = [V' > r1 max V'] or [V' < r1 min V'], M2 (same with r2)

Reported per block (over the images) and over all blocks (element- or bit-weighted means):
  * density: set bits / (M K) of each P_i, and of M1, M2 (V's masks);
  * nesting: the fraction of P2's bits inside P1, of P3's inside P2 and P1, of M2's inside M1
    (1.0 = nested on these inputs);
  * zero words: the fraction of the 64-bit words of each P_i (along K) that are all zero: the words the
    row-wise A·V kernel (bvit_edge.runtime.kernels.binary_matmul_rows) skips;
  * skipped rows: the fraction of rows of A' whose maximum is not above the plane's threshold (the kernel
    skips that plane's packing and products for the row);
  * padding: K, the words along K and the pad fraction (words * 64 - K) / (words * 64).

Models: the trained demo student (a checkpoint folder, e.g. the demo's gsb/stage2/best) on its val images,
and GSB DeiT-S with random non-zero frozen weights (bvit_edge.bench_models; labelled as random: its
attention is not trained) on random normal images.

Usage:
  python benches/attention_planes.py [--checkpoint RUN/gsb/stage2/best] [--deit-s] [--images 16]
      [--out benches/results/attention_planes.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
WORD = 64


def capture_attention_operands(model: Any, x: Any) -> list[dict[str, Any]]:
    """Run ``model`` on ``x`` and return, per GSB attention block, A' and V' of its A·V product with the
    op's scales and ratios (numpy). Works on frozen (deployed) GSB attention modules."""
    import torch

    records: list[dict[str, Any]] = []
    patched = []
    for mod in model.modules():
        if not (hasattr(mod, "_forward_deployed") and getattr(mod, "deployed", False)):
            continue
        orig = mod._forward_deployed

        def rec(q: Any, k: Any, v: Any, b: int, n: int, d: int, mod: Any = mod, orig: Any = orig) -> Any:
            scores = torch.ops.bvit.binary_matmul(
                q,
                k.transpose(-2, -1),
                mod.q_shift,
                mod.q_alpha,
                mod.k_shift_t,
                mod.k_alpha,
                "signed",
                "signed",
                list(mod.ratios),
            )
            attn = (scores * mod.scale).softmax(dim=-1)
            records.append(
                {
                    "a": (attn + mod.att_bias).detach().numpy().astype(np.float32),
                    "v": (v + mod.v_shift).detach().numpy().astype(np.float32),
                    "a_alpha": mod.attn_alphas.detach().numpy().astype(np.float32).reshape(-1),
                    "v_alpha": mod.v_alphas.detach().numpy().astype(np.float32).reshape(-1),
                    "ratios": [float(r) for r in mod.ratios],
                }
            )
            return orig(q, k, v, b, n, d)

        mod._forward_deployed = rec
        patched.append(mod)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for mod in patched:
            del mod._forward_deployed
    return records


def _frac(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def plane_stats(rec: dict[str, Any]) -> dict[str, Any]:
    """Density, nesting, zero words, skipped rows and padding of one A·V product's planes (module docstring).
    A' [B, H, M, K] is evaluated per sample (its max over every axis but the first)."""
    from bvit_edge.export.ops.binary_matmul import a_plane_bits, b_plane_bits

    a, v = rec["a"], rec["v"]
    k = a.shape[-1]
    kw = -(-k // WORD)
    pa = [m for _, m in a_plane_bits(a, rec["a_alpha"], "gsb_unsigned", rec["ratios"])]
    pv = [m for _, m in b_plane_bits(v, "gsb_signed", rec["ratios"])[1:]]
    pad = np.zeros((*a.shape[:-1], kw * WORD - k), bool)
    words = [np.concatenate([p, pad], axis=-1).reshape((*a.shape[:-1], kw, WORD)).any(axis=-1) for p in pa]
    al = rec["a_alpha"]
    thr = [np.float32(al[0]) / np.float32(2)] + [
        a.reshape(a.shape[0], -1).max(axis=1).reshape(-1, 1, 1, 1) * np.float32(r) for r in rec["ratios"]
    ]
    rmax = a.max(axis=-1, keepdims=True)
    bits = [int(p.sum()) for p in pa]
    vbits = [int(m.sum()) for m in pv]
    return {
        "shape_a": list(a.shape),
        "shape_v": list(v.shape),
        "a_alpha": [float(x) for x in al],
        "k": int(k),
        "words_along_k": kw,
        "pad_fraction": (kw * WORD - k) / (kw * WORD),
        "a_bits": bits,
        "a_elements": int(a.size),
        "a_density": [b / a.size for b in bits],
        "a_nested": {
            "P2_in_P1": _frac(int((pa[1] & pa[0]).sum()), bits[1]),
            "P3_in_P2": _frac(int((pa[2] & pa[1]).sum()), bits[2]),
            "P3_in_P1": _frac(int((pa[2] & pa[0]).sum()), bits[2]),
        },
        "a_zero_word_fraction": [1.0 - float(w.mean()) for w in words],
        "a_rows_skipped_fraction": [float((rmax <= t).mean()) for t in thr],
        "v_mask_bits": vbits,
        "v_elements": int(v.size),
        "v_mask_density": [b / v.size for b in vbits],
        "v_nested": {"M2_in_M1": _frac(int((pv[1] & pv[0]).sum()), vbits[1])},
    }


def summarize(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over blocks, weighted by elements (densities, zero words, skipped rows) or by bits (nesting)."""
    el = np.array([b["a_elements"] for b in blocks], float)
    rows = np.array([b["a_elements"] / b["k"] for b in blocks], float)
    words = rows * np.array([b["words_along_k"] for b in blocks], float)

    def wmean(key: str, weights: np.ndarray) -> list[float]:
        return [float(np.average([b[key][i] for b in blocks], weights=weights)) for i in range(3)]

    def nested(group: str, key: str, bits_key: str, i: int) -> float | None:
        num = sum((b[group][key] or 0.0) * b[bits_key][i] for b in blocks)
        den = sum(b[bits_key][i] for b in blocks)
        return None if den == 0 else num / den

    vel = np.array([b["v_elements"] for b in blocks], float)
    return {
        "blocks": len(blocks),
        "a_density": wmean("a_density", el),
        "a_nested": {
            "P2_in_P1": nested("a_nested", "P2_in_P1", "a_bits", 1),
            "P3_in_P2": nested("a_nested", "P3_in_P2", "a_bits", 2),
            "P3_in_P1": nested("a_nested", "P3_in_P1", "a_bits", 2),
        },
        "a_zero_word_fraction": wmean("a_zero_word_fraction", words),
        "a_rows_skipped_fraction": wmean("a_rows_skipped_fraction", rows),
        "v_mask_density": [float(np.average([b["v_mask_density"][i] for b in blocks], weights=vel)) for i in range(2)],
        "v_nested": {"M2_in_M1": nested("v_nested", "M2_in_M1", "v_mask_bits", 1)},
        "k": sorted({b["k"] for b in blocks}),
        "pad_fraction": sorted({round(b["pad_fraction"], 4) for b in blocks}),
    }


def measure(model: Any, x: Any, batch: int = 1) -> dict[str, Any]:
    """Plane statistics of every block over the images of ``x``, run ``batch`` at a time (each sample's
    thresholds are its own)."""
    blocks: list[dict[str, Any]] = []
    for i in range(0, x.shape[0], batch):
        recs = capture_attention_operands(model, x[i : i + batch])
        for j, rec in enumerate(recs):
            st = plane_stats(rec)
            st["block"] = j
            st["image"] = i
            blocks.append(st)
    per_block = [summarize([b for b in blocks if b["block"] == j]) for j in sorted({b["block"] for b in blocks})]
    return {"summary": summarize(blocks), "per_block": per_block}


def _print(name: str, s: dict[str, Any]) -> None:
    pct = lambda xs: ", ".join(f"{100 * v:.2f}%" for v in xs)  # noqa: E731 - local formatting helper
    print(f"{name}: {s['blocks']} block runs, K {s['k']} (pad {s['pad_fraction']})")
    print(f"  A planes density P1..P3:        {pct(s['a_density'])}")
    print(f"  A planes zero words P1..P3:     {pct(s['a_zero_word_fraction'])}")
    print(f"  A rows skipped P1..P3:          {pct(s['a_rows_skipped_fraction'])}")
    print(f"  A nesting: {s['a_nested']}")
    print(f"  V masks density M1, M2:         {pct(s['v_mask_density'])}; nesting {s['v_nested']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="a trained GSB checkpoint (e.g. the demo's gsb/stage2/best)")
    ap.add_argument("--images", type=int, default=32, help="val images of the checkpoint's data set")
    ap.add_argument("--deit-s", action="store_true", help="also GSB DeiT-S with random non-zero frozen weights")
    ap.add_argument("--deit-images", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "attention_planes.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    doc: dict[str, Any] = {
        "schema_version": 1,
        "bench": "attention_planes",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "word_bits": WORD,
        "models": {},
    }
    if args.checkpoint is not None:
        from bvit_edge.pipeline import _load_frozen, val_inputs

        model, cfg = _load_frozen(args.checkpoint)
        x, _ = val_inputs(cfg, limit=args.images)
        res = measure(model, torch.from_numpy(x))
        res["source"] = f"trained checkpoint {cfg.get('model')} ({args.checkpoint.name}), {len(x)} val images"
        res["val_top1"] = (cfg.get("metrics") or {}).get("val_top1")
        doc["models"]["demo_student"] = res
        _print("demo student (trained)", res["summary"])
    if args.deit_s:
        from bvit_edge.bench_models import random_frozen_student

        model = random_frozen_student("gsb_deit_small_patch16_224").eval()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.deit_images, 3, 224, 224, generator=gen)
        res = measure(model, x)
        res["source"] = "GSB DeiT-S, RANDOM non-zero frozen weights (untrained attention), random normal images"
        doc["models"]["deit_s_random"] = res
        _print("GSB DeiT-S (random weights)", res["summary"])
    from bvit_edge.atomic import write_json

    write_json(args.out, doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
