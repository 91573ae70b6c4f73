"""Accuracy benchmark on the built-in digits data: GSB vs the baselines, full data and limited samples.

For each regime (full train split; N images per class) and each seed, trains the FP teacher, then distils
from it: BiT, GSB (stage 1 -> stage 2), GSB without the corrected gradients (ablation), BinaryViT, ACD-BiT.
Writes OUT/accuracy_digits.json, OUT/accuracy_digits.md (mean ± std top-1 over seeds) and
OUT/accuracy_digits.png (bar chart drawn from the JSON).

    python benches/accuracy_digits.py --out bench-results/accuracy --seeds 0 1 2
    python benches/accuracy_digits.py --quick      # fewer epochs, one seed: a smoke run

Not a unit test: it trains 2 x seeds x 7 models. Runs already finished (their run folder has best/) are
reused, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROWS = [
    ("fp", "FP teacher (DeiT demo)"),
    ("bit", "BiT"),
    ("gsb_stage1", "GSB stage 1"),
    ("gsb_stage2", "GSB stage 2"),
    ("gsb_nocorr_stage2", "GSB stage 2, uncorrected gradients (ablation)"),
    ("binaryvit", "BinaryViT"),
    ("acdbit", "ACD-BiT"),
]


def _run(out: Path, **kw) -> dict:
    from bvit_edge.training import train
    from bvit_edge.training.checkpoint import read_config

    # a two-stage gsb run keeps its checkpoints in OUT/stage1 and OUT/stage2
    best = out / ("stage2" if kw.get("stage") == "all" else "") / "best"
    if not (best / "config.json").is_file():
        t0 = time.time()
        train(out=str(out), **kw)
        print(f"  trained {out} in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    cfg = read_config(best)
    return {"top1": cfg["metrics"]["val_top1"], "top5": cfg["metrics"].get("val_top5"), "epoch": cfg["epoch"]}


def run_regime(
    root: Path, per_class: int | None, seed: int, epochs: int, teacher_epochs: int, threads: int, eval_every: int
) -> dict[str, dict]:
    common = dict(data="digits", per_class=per_class, seed=seed, threads=threads, epochs=epochs, eval_every=eval_every)
    res: dict[str, dict] = {}
    teacher = root / "fp"
    res["fp"] = _run(teacher, method="fp", **{**common, "epochs": teacher_epochs})
    t = str(teacher / "best")
    res["bit"] = _run(root / "bit", method="bit", teacher=t, **common)
    _run(root / "gsb", method="gsb", stage="all", teacher=t, **common)
    from bvit_edge.training.checkpoint import read_config

    res["gsb_stage1"] = {"top1": read_config(root / "gsb" / "stage1" / "best")["metrics"]["val_top1"]}
    res["gsb_stage2"] = {"top1": read_config(root / "gsb" / "stage2" / "best")["metrics"]["val_top1"]}
    _run(root / "gsb_nocorr", method="gsb", stage="all", teacher=t, method_options={"corrected_grads": False}, **common)
    res["gsb_nocorr_stage2"] = {"top1": read_config(root / "gsb_nocorr" / "stage2" / "best")["metrics"]["val_top1"]}
    res["binaryvit"] = _run(root / "binaryvit", method="binaryvit", teacher=t, **common)
    res["acdbit"] = _run(root / "acdbit", method="acdbit", teacher=t, **common)
    return res


def _fmt(values: list[float]) -> str:
    m = statistics.mean(values) * 100
    s = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f}"


def render(doc: dict, out: Path) -> None:
    regimes = list(doc["regimes"])
    lines = [
        "# Digits accuracy (val top-1 %, mean ± std over seeds " + ", ".join(map(str, doc["seeds"])) + ")",
        "",
        "| model | " + " | ".join(regimes) + " |",
        "|---|" + "---|" * len(regimes),
    ]
    for key, label in ROWS:
        cells = []
        for r in regimes:
            vals = [
                doc["regimes"][r]["runs"][str(s)][key]["top1"]
                for s in doc["seeds"]
                if str(s) in doc["regimes"][r]["runs"]
            ]
            cells.append(_fmt(vals) if vals else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ep = doc["epochs"]
    lines += [
        "",
        "Epochs: "
        + "; ".join(
            f"{r}: students {e[0]} (per GSB stage), teacher {e[1]}"
            for r, e in zip(regimes, (ep["full"], ep["limited"]))
        )
        + f". Limited regime: {doc['per_class']} images per class. {doc['seconds']:.0f} s in all "
        f"({doc.get('threads', '?')} thread(s)). Command: `{doc['command']}`.",
    ]
    (out / "accuracy_digits.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(regimes)
    for i, r in enumerate(regimes):
        means, errs = [], []
        for key, _ in ROWS:
            vals = [
                doc["regimes"][r]["runs"][str(s)][key]["top1"] * 100
                for s in doc["seeds"]
                if str(s) in doc["regimes"][r]["runs"]
            ]
            means.append(statistics.mean(vals) if vals else 0)
            errs.append(statistics.stdev(vals) if len(vals) > 1 else 0)
        ax.bar([j + i * width for j in range(len(ROWS))], means, width, yerr=errs, capsize=3, label=r)
    ax.set_xticks([j + width * (len(regimes) - 1) / 2 for j in range(len(ROWS))])
    ax.set_xticklabels([lbl.replace(", ", "\n") for _, lbl in ROWS], fontsize=8)
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("bvit-edge on digits: binary students vs the FP teacher")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_digits.png", dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench-results/accuracy"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--epochs-full", type=int, default=60, help="student epochs (per GSB stage), full data")
    p.add_argument("--epochs-limited", type=int, default=300, help="student epochs (per GSB stage), N per class")
    p.add_argument(
        "--teacher-epochs-full", type=int, default=None, help="teacher epochs, full data (default: as students)"
    )
    p.add_argument("--teacher-epochs-limited", type=int, default=None, help="teacher epochs, N per class")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate on val every N epochs (and at the end)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="5/20 epochs, seed 0 only")
    p.add_argument("--render-only", action="store_true", help="re-render OUT/accuracy_digits.json (no training)")
    a = p.parse_args(argv)
    if a.render_only:
        render(json.loads((a.out / "accuracy_digits.json").read_text()), a.out)
        return
    if a.quick:
        a.seeds, a.epochs_full, a.epochs_limited = [0], 5, 20
    a.teacher_epochs_full = a.teacher_epochs_full or a.epochs_full
    a.teacher_epochs_limited = a.teacher_epochs_limited or a.epochs_limited
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    doc = {
        "schema_version": 1,
        "seeds": a.seeds,
        "per_class": a.per_class,
        "epochs": {
            "full": [a.epochs_full, a.teacher_epochs_full],
            "limited": [a.epochs_limited, a.teacher_epochs_limited],
        },
        "eval_every": a.eval_every,
        "threads": a.threads,
        "command": "python benches/accuracy_digits.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "regimes": {"full": {"runs": {}}, f"{a.per_class}/class": {"runs": {}}},
    }
    for seed in a.seeds:
        for regime, per_class, epochs, t_epochs in (
            ("full", None, a.epochs_full, a.teacher_epochs_full),
            (f"{a.per_class}/class", a.per_class, a.epochs_limited, a.teacher_epochs_limited),
        ):
            print(f"== {regime}, seed {seed}", file=sys.stderr, flush=True)
            root = a.out / "runs" / regime.replace("/", "_per_") / f"seed{seed}"
            doc["regimes"][regime]["runs"][str(seed)] = run_regime(
                root, per_class, seed, epochs, t_epochs, a.threads, a.eval_every
            )
            doc["seconds"] = time.time() - t0
            (a.out / "accuracy_digits.json").write_text(json.dumps(doc, indent=2) + "\n")
            render(doc, a.out)
    print((a.out / "accuracy_digits.md").read_text())


if __name__ == "__main__":
    main()
