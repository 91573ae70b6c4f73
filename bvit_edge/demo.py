"""``bvit-edge demo`` (what ``make demo`` runs): the pipeline on the built-in digits data, step by step.

Each step writes its outputs under the demo folder and is recorded as finished in ``steps.json``; a re-run
skips finished steps (resume), a failed step is named with its reason and what finished is kept.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bvit_edge.atomic import write_json
from bvit_edge.errors import BvitEdgeError, Interrupted
from bvit_edge.output_folder import claim_output_folder

# --------------------------------------------------------------------------------------------------------
# the recipe: every value the demo trains, exports, runs and benches with
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoRecipe:
    """What the demo does, in one place: models, data, epochs, the export tolerance, images on the board,
    bench runs. :meth:`for_run` gives the full recipe or the ``--quick`` one."""

    data: str = "digits"
    seed: int = 0
    teacher_model: str = "demo"
    student_model: str = "gsb_demo_patch4_32"
    teacher_epochs: int = 60
    student_epochs: int = 60  # each of GSB's two stages
    #: val images whose ONNX output may differ beyond 1e-5 from torch (binarization ties; bvit_edge.export.validate)
    max_outliers: int = 3
    board_images: int = 64
    bench_warmup: int = 10
    bench_runs: int = 100
    bench_rounds: int = 5

    @classmethod
    def for_run(cls, quick: bool) -> DemoRecipe:
        """The full recipe, or the quick one (far fewer epochs, images and timed runs)."""
        if not quick:
            return cls()
        return cls(teacher_epochs=8, student_epochs=12, board_images=16, bench_runs=30)


# --------------------------------------------------------------------------------------------------------
# steps, resume and interruption
# --------------------------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    title: str
    run: Callable[[], dict[str, Any]]


class DemoStepFailed(BvitEdgeError):
    """A demo step failed; the message names the step and the reason. Finished steps are kept."""

    exit_code = 1


class DemoInterrupted(Interrupted):
    """SIGINT (Ctrl-C) or SIGTERM stopped the demo during a step: it stops there (exit code 128 + the signal's
    number: 130 for SIGINT, 143 for SIGTERM), what finished is kept and a re-run resumes."""

    def __init__(self, signal_name: str, step: str, out: Path) -> None:
        super().__init__(
            f"The demo was stopped by {signal_name} during step '{step}'; finished steps (and the training "
            f"checkpoint, if it was training) are kept in {out}.",
            hint=f"Re-run the same command (`bvit-edge demo --out {out}`) to resume.",
        )
        self.exit_code = 128 + int(signal.Signals[signal_name])


class _Signalled(BaseException):
    """Raised by the demo's SIGTERM handler in whatever step runs (BaseException: no step's error handling
    catches it)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextlib.contextmanager
def _sigterm_stops_the_step() -> Iterator[None]:
    """While the demo runs, SIGTERM stops the current step like Ctrl-C does (the trainer installs its own
    handler while it trains: it saves a checkpoint and returns, and the demo stops after it)."""

    def on_sigterm(signum: int, frame: Any) -> None:
        raise _Signalled("SIGTERM")

    try:
        old = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _console():
    from bvit_edge.terminal import console  # tables stay whole in a pipe or CI log

    return console()


def run_steps(out: Path, steps: list[Step]) -> dict[str, Any]:
    """Run ``steps`` in order, skipping those already recorded as finished in OUT/steps.json. A signal
    (Ctrl-C, SIGTERM) stops the run with :class:`DemoInterrupted`; any other failure is a
    :class:`DemoStepFailed` naming the step. Either way the finished steps stay recorded."""
    state_path = out / "steps.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    con = _console()
    for i, step in enumerate(steps, 1):
        head = f"[{i}/{len(steps)}] {step.title}"
        if state.get(step.name, {}).get("status") == "done":
            con.print(f"[dim]{head}: already done, skipped[/]")
            continue
        con.rule(head)
        t0 = time.time()
        result = _run_step(step, out)
        state[step.name] = {"status": "done", "seconds": round(time.time() - t0, 1), "result": result}
        write_json(state_path, state)
    return state


def _run_step(step: Step, out: Path) -> dict[str, Any]:
    """``step.run()``, its failures turned into DemoStepFailed / DemoInterrupted."""
    try:
        with _sigterm_stops_the_step():
            return step.run()
    except DemoInterrupted:
        raise
    except KeyboardInterrupt:
        raise DemoInterrupted("SIGINT", step.title, out) from None
    except _Signalled as sig:
        raise DemoInterrupted(sig.signal_name, step.title, out) from None
    except BvitEdgeError as exc:
        raise DemoStepFailed(
            f"Demo step '{step.title}' failed: {exc} Finished steps are kept in {out}; re-run to resume."
        ) from exc
    except Exception as exc:
        tb = traceback.format_exc(limit=3)
        raise DemoStepFailed(
            f"Demo step '{step.title}' failed: {type(exc).__name__}: {exc}. Finished steps are kept in {out}; "
            f"re-run to resume.\n{tb}"
        ) from exc


# --------------------------------------------------------------------------------------------------------
# the demo
# --------------------------------------------------------------------------------------------------------


def run_demo(
    out: Path = Path("bvit-edge-demo"),
    quick: bool = False,
    threads: int | None = None,
    per_class: int = 30,
    board: bool = True,
    deit_s: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The demo pipeline on digits (see the module docstring). ``quick`` trains far fewer epochs
    (:class:`DemoRecipe`); ``board=False`` skips the emulated aarch64 board (its first build downloads a
    Debian root file system); ``deit_s=False`` skips the DeiT-S-geometry row (random weights: compile, bench
    and size only). ``out`` is new, empty or a demo folder (resumed); ``overwrite`` replaces any other folder
    (bvit_edge.output_folder). Ctrl-C or SIGTERM stops it (:class:`DemoInterrupted`)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    claim_output_folder(out, "demo", overwrite)
    demo = _Demo(out, DemoRecipe.for_run(quick), threads, per_class, quick)
    state = run_steps(out, demo.steps(board=board, deit_s=deit_s))
    _summary(state)
    return state


class _Demo:
    """The demo's steps (one method each) over its folder layout."""

    def __init__(self, out: Path, recipe: DemoRecipe, threads: int | None, per_class: int, quick: bool) -> None:
        self.out, self.recipe, self.threads, self.per_class, self.quick = out, recipe, threads, per_class, quick
        self.teacher_dir, self.gsb_dir, self.export_dir = out / "teacher", out / "gsb", out / "export"
        self.art_host, self.art_arm = out / "artifacts" / "host", out / "artifacts" / "rpi4-aarch64"
        self.art_teacher = out / "artifacts" / "teacher-host"
        self.student_onnx = self.export_dir / "student.packed.onnx"
        self.teacher_onnx = self.export_dir / "teacher.onnx"
        self.teacher_int8_onnx = self.export_dir / "teacher.int8.onnx"
        self.host_logits = out / "artifacts" / "host_logits.npy"

    def steps(self, board: bool, deit_s: bool) -> list[Step]:
        r = self.recipe
        steps = [
            Step(
                "teacher",
                f"train the full-precision teacher on {r.data} ({r.teacher_epochs} epochs, all 1,437 images)",
                self.train_teacher,
            ),
            Step(
                "gsb",
                f"train GSB stage 1 + 2 from the teacher on {self.per_class} images per class "
                f"({r.student_epochs} epochs each)",
                self.train_student,
            ),
            Step(
                "export", "freeze, export to ONNX (packed + standard) and validate on the 360 val images", self.export
            ),
            Step(
                "compile",
                "compile with TVM for the host and for rpi4-aarch64 (+ the teacher for the host)",
                self.compile,
            ),
            Step("fidelity", "accuracy and fidelity: torch -> ONNX reference -> compiled artifact", self.fidelity),
        ]
        if board:
            steps.append(
                Step("board", "run the aarch64 artifact on the emulated board (qemu + TVM RPC) and compare", self.board)
            )
        steps.append(
            Step(
                "bench",
                "bench on the host, 1 thread and all cores: compiled student vs the teacher in onnxruntime, "
                "fp32 and int8 (batch 1)",
                self.bench,
            )
        )
        if deit_s:
            steps.append(
                Step(
                    "deit_s",
                    "DeiT-S geometry (random non-zero weights): compile, bench at 1 thread vs DeiT-S "
                    "fp32 and int8 in onnxruntime, sizes",
                    lambda: deit_s_row(self.out / "deit_s", quick=self.quick),
                )
            )
        steps.append(Step("report", "write the report (JSON, Markdown, PNG plots)", self.report))
        return steps

    # ---------------------------------------------------------------------------------------- training
    def train_teacher(self) -> dict[str, Any]:
        from bvit_edge.evaluation import evaluate

        r = self.recipe
        res = self._train(
            self.teacher_dir, method="fp", model=r.teacher_model, epochs=r.teacher_epochs, data=r.data, seed=r.seed
        )
        ev = evaluate(self.teacher_dir)
        return {
            "checkpoint": str(self.teacher_dir / "best"),
            "val_top1": ev.top1,
            "val_top5": ev.top5,
            "train_seconds": res.seconds,
        }

    def train_student(self) -> dict[str, Any]:
        from bvit_edge.evaluation import evaluate
        from bvit_edge.training.checkpoint import read_config

        r = self.recipe
        res = self._train(
            self.gsb_dir,
            method="gsb",
            stage="all",
            model=r.student_model,
            data=r.data,
            per_class=self.per_class,
            epochs=r.student_epochs,
            teacher=str(self.teacher_dir / "best"),
            seed=r.seed,
        )
        s1 = read_config(self.gsb_dir / "stage1" / "best")["metrics"]["val_top1"]
        ev = evaluate(self.gsb_dir / "stage2")
        return {
            "checkpoint": str(self.gsb_dir / "stage2" / "best"),
            "per_class": self.per_class,
            "stage1_val_top1": s1,
            "val_top1": ev.top1,
            "val_top5": ev.top5,
            "train_seconds": res.seconds,
        }

    def _train(self, run: Path, **config: Any) -> Any:
        """bvit_edge.training.train into ``run`` (resuming what an earlier demo left there); a signal that
        stopped the training (the trainer saved ``run``/last) stops the demo."""
        from bvit_edge.training import train

        res = train(out=str(run), threads=self.threads, resume=_started(run), **config)
        if res.interrupted_by:
            raise _Signalled(res.interrupted_by)
        return res

    # ------------------------------------------------------------------------------ export and compile
    def export(self) -> dict[str, Any]:
        from bvit_edge.export.int8_teacher import quantize_teacher
        from bvit_edge.pipeline import export_checkpoint

        summ = export_checkpoint(
            self.gsb_dir / "stage2",
            self.export_dir,
            teacher=self.teacher_dir / "best",
            max_outliers=self.recipe.max_outliers,
        )
        int8 = quantize_teacher(self.teacher_onnx, self.teacher_int8_onnx)
        v, st = summ.validation, summ.storage
        return {
            "packed_bytes": summ.student["packed"]["bytes"],
            "standard_bytes": summ.student["standard"]["bytes"],
            "teacher_bytes": summ.teacher["bytes"] if summ.teacher else None,
            "teacher_int8_bytes": int8.bytes,
            "packed_max_rel_diff": v["packed"]["max_rel_diff"],
            "packed_top1_agreement": v["packed"]["top1_agreement"],
            "standard_max_rel_diff": v["standard"]["max_rel_diff"],
            "standard_top1_agreement": v["standard"]["top1_agreement"],
            "images_beyond_1e-5": v["packed"]["inputs_beyond_tolerance"],
            "storage": {
                "att_bias": st["att_bias"],
                "float_params": st["float_params"],
                "packed_bytes": st["bytes"].get("packed", {}),
                "fidelity": {
                    k: {
                        "max_abs_logit_diff": f["max_abs_logit_diff"],
                        "top1_agreement": f["top1_agreement"],
                        "n_images": f["n_images"],
                    }
                    for k, f in (st.get("fidelity") or {}).items()
                },
            },
        }

    def compile(self) -> dict[str, Any]:
        from bvit_edge.runtime.compile import compile_model

        done = {}
        for name, target, folder, src in (
            ("student host", "host", self.art_host, self.student_onnx),
            ("student rpi4-aarch64", "rpi4-aarch64", self.art_arm, self.student_onnx),
            ("teacher host", "host", self.art_teacher, self.teacher_onnx),
        ):
            t0 = time.time()
            compile_model(src, target, folder)
            params = folder / "params.npz"
            done[name] = {
                "folder": str(folder),
                "seconds": round(time.time() - t0, 1),
                "lib_bytes": (folder / "lib.so").stat().st_size,
                "params_bytes": params.stat().st_size if params.is_file() else 0,
            }
            _console().print(f"  {name}: {folder} ({done[name]['seconds']} s)")
        return done

    # ---------------------------------------------------------------------------- accuracy and fidelity
    def fidelity(self) -> dict[str, Any]:
        import numpy as np
        import torch

        from bvit_edge.metrics import accuracy, fidelity
        from bvit_edge.pipeline import load_frozen, val_inputs
        from bvit_edge.runtime.artifact import run_artifact
        from bvit_edge.runtime.ort import ort_run

        model, cfg = load_frozen(self.gsb_dir / "stage2")
        x, y = val_inputs(cfg)
        with torch.no_grad():
            torch_logits = model(torch.from_numpy(x)).numpy()
        ort_logits = ort_run(self.student_onnx, x, batch_size=64)[0]
        tvm_logits = run_artifact(self.art_host, x, normalize=False)
        teacher_logits = ort_run(self.teacher_onnx, x, batch_size=64)[0]
        int8_logits = ort_run(self.teacher_int8_onnx, x, batch_size=64)[0]
        np.save(self.host_logits, tvm_logits)
        return {
            "n_images": len(y),
            "teacher_onnx": accuracy(teacher_logits, y),
            "teacher_int8_onnx": accuracy(int8_logits, y),
            "student_torch": accuracy(torch_logits, y),
            "student_onnx": accuracy(ort_logits, y),
            "student_tvm_host": accuracy(tvm_logits, y),
            "torch_vs_onnx": fidelity(torch_logits, ort_logits),
            "onnx_vs_tvm": fidelity(ort_logits, tvm_logits),
        }

    def board(self) -> dict[str, Any]:
        import numpy as np

        from bvit_edge.metrics import fidelity
        from bvit_edge.pipeline import val_inputs
        from bvit_edge.runtime.artifact import run_artifact
        from bvit_edge.targets import board as emulated
        from bvit_edge.targets.rpc import connect
        from bvit_edge.training.checkpoint import read_config

        n = self.recipe.board_images
        x, _ = val_inputs(read_config(self.gsb_dir / "stage2"), limit=n)
        was_running = emulated.status("aarch64").running
        info = emulated.emulate("aarch64", log=_console().print)
        try:
            session = connect(info.host, int(info.port or 0), timeout_s=30)
            arm_logits = run_artifact(self.art_arm, x, session=session, normalize=False)
            del session
        finally:
            if not was_running:  # the demo started the emulated board: leave no qemu process behind
                emulated.stop("aarch64")
        host_logits = np.load(self.host_logits, allow_pickle=False)[:n]
        fid = fidelity(host_logits, arm_logits)
        if fid["top1_agreement"] < 1.0 or fid["max_rel_diff"] > 1e-5:
            raise DemoStepFailed(f"The aarch64 artifact on the emulated board disagrees with the host's: {fid}.")
        return {"rpc": f"{info.host}:{info.port}", "n_images": n, "aarch64_vs_host": fid, "emulated": True}

    # -------------------------------------------------------------------------------- bench and report
    def bench(self) -> dict[str, Any]:
        from bvit_edge.runtime.threadpool import physical_cores

        rows: dict[str, Any] = {}
        docs = []
        for th in sorted({1, self.threads or physical_cores()}):
            res = self._bench_at(th)
            docs.append(
                res.to_report(
                    student_name="gsb-demo (compiled, TVM)",
                    teacher_name="deit-demo fp32 (onnxruntime)",
                    teacher_int8_name="deit-demo int8 (onnxruntime quantize_dynamic)",
                    title="bvit-edge demo on digits",
                )
            )
            rows[str(th)] = {**_bench_row(res.to_dict()), "threads": th}
        doc = docs[0]
        for extra in docs[1:]:
            doc["latency"] += extra["latency"]
        doc["environment"].pop("ratio_teacher_over_student_median", None)
        doc["environment"].pop("ratio_teacher_int8_over_student_median", None)
        write_json(self.out / "bench_report.json", doc)
        return {"by_threads": rows}

    def _bench_at(self, threads: int) -> Any:
        """The bench of the host artifact against both teachers at ``threads``, saved as OUT/bench_<n>t.json."""
        from bvit_edge.runtime.bench import bench

        r = self.recipe
        res = bench(
            self.art_host,
            teacher_onnx=self.teacher_onnx,
            student_onnx=self.student_onnx,
            teacher_int8_onnx=self.teacher_int8_onnx,
            threads=threads,
            warmup=r.bench_warmup,
            runs=r.bench_runs,
            rounds=r.bench_rounds,
        )
        res.save(self.out / f"bench_{threads}t.json")
        return res

    def report(self) -> dict[str, Any]:
        from bvit_edge.report import render_report, write_report

        state = json.loads((self.out / "steps.json").read_text())
        bench_doc = json.loads((self.out / "bench_report.json").read_text())
        doc = _report_doc(bench_doc, state["fidelity"]["result"], state)
        write_report(self.out / "report.json", doc)
        written = render_report(self.out / "report.json", self.out / "report")
        return {k: str(v) for k, v in written.items()}


def _bench_row(d: dict[str, Any]) -> dict[str, Any]:
    """The medians and ratios of a bench result (``BenchResult.to_dict()``) the demo's summary shows."""
    return {
        "student_median_ms": d["student"]["steady"]["median_ms"],
        "teacher_median_ms": d["teacher"]["steady"]["median_ms"],
        "teacher_int8_median_ms": d["teacher_int8"]["steady"]["median_ms"],
        "teacher_over_student": d["ratio_teacher_over_student_median"],
        "teacher_int8_over_student": d["ratio_teacher_int8_over_student_median"],
    }


def _started(run: Path) -> bool:
    """Whether an earlier demo run left a checkpoint of this training step (then it resumes)."""
    return any((run / sub / "last").is_dir() for sub in (".", "stage1", "stage2"))


def _report_doc(bench_doc: dict[str, Any], fid: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The report document: bench latency + sizes, with accuracy and fidelity from the demo's steps."""
    from bvit_edge.report.quality import accuracy_entry, fidelity_entry

    doc = dict(bench_doc)
    by_role = {
        "student": ("gsb", fid["student_tvm_host"]),
        "baseline": ("fp, int8 by onnxruntime quantize_dynamic", fid.get("teacher_int8_onnx")),
        "teacher": ("fp", fid["teacher_onnx"]),
    }
    for m in doc["models"]:
        m["method"], acc = by_role.get(m["role"], by_role["teacher"])
        if m["role"] == "student":
            m["fidelity"] = fidelity_entry(fid["onnx_vs_tvm"])
        if acc:
            m["accuracy"] = accuracy_entry(acc, fid["n_images"])
    doc.setdefault("environment", {})["student_train_images_per_class"] = state["gsb"]["result"]["per_class"]
    return doc


# --------------------------------------------------------------------------------------------------------
# the DeiT-S-geometry row
# --------------------------------------------------------------------------------------------------------

DEIT_S_STUDENT = "gsb_deit_small_patch16_224"
DEIT_S_TEACHER = "deit_small_distilled_patch16_224"


def deit_s_row(folder: Path, quick: bool = False, threads: int = 1) -> dict[str, Any]:
    """GSB DeiT-S with random non-zero frozen weights (bvit_edge.bench_models), exported (default storage),
    compiled for the host and benched at ``threads`` against DeiT-S fp32 and int8 (quantize_dynamic) in
    onnxruntime, same process, alternating blocks; sizes of the ONNX files and of the artifact. No accuracy:
    the weights are random."""
    import torch

    from bvit_edge.bench_models import random_frozen_student, random_teacher
    from bvit_edge.export.int8_teacher import quantize_teacher
    from bvit_edge.export.onnx_export import export_onnx, export_teacher_onnx
    from bvit_edge.runtime.bench import bench
    from bvit_edge.runtime.compile import compile_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    sp, tp, ip = folder / "gsb_deit_s.packed.onnx", folder / "deit_s.onnx", folder / "deit_s.int8.onnx"
    res = export_onnx(random_frozen_student(DEIT_S_STUDENT), sp)
    export_teacher_onnx(random_teacher(DEIT_S_TEACHER), tp)
    quantize_teacher(tp, ip)
    export_s = time.time() - t0
    t0 = time.time()
    art = compile_model(sp, "host", folder / "artifact")
    compile_s = time.time() - t0
    b = bench(
        art,
        teacher_onnx=tp,
        teacher_int8_onnx=ip,
        student_onnx=sp,
        threads=threads,
        warmup=2,
        runs=6 if quick else 20,
        rounds=2 if quick else 4,
    )
    b.save(folder / "bench.json")
    d = b.to_dict()
    art_bytes = d["sizes"]["student"]["artifact"]
    return {
        "label": "random non-zero frozen weights: compile + bench + size only",
        "student": DEIT_S_STUDENT,
        "teacher": DEIT_S_TEACHER,
        "threads": threads,
        "export_s": round(export_s, 1),
        "compile_s": round(compile_s, 1),
        "att_bias": res.storage["att_bias"],
        "student_onnx_bytes": sp.stat().st_size,
        "student_artifact_bytes": art_bytes["total_bytes"],
        "student_lib_bytes": art_bytes["lib_bytes"],
        "student_params_bytes": art_bytes["params_bytes"],
        "teacher_onnx_bytes": tp.stat().st_size,
        "teacher_int8_onnx_bytes": ip.stat().st_size,
        **_bench_row(d),
    }


# --------------------------------------------------------------------------------------------------------
# the summary
# --------------------------------------------------------------------------------------------------------


def _ms(b: dict[str, Any], key: str) -> str:
    """'1.23 / 0.80 ms' for the 1-thread and all-core medians of ``key`` in the bench step's result."""
    rows = (b or {}).get("by_threads") or {}
    vals = [f"{rows[t][key]:.2f}" for t in sorted(rows, key=int) if rows[t].get(key) is not None]
    return f"{' / '.join(vals)} ms" if vals else ""


def _x(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x" if a and b else "-"


def _pct(v: Any) -> str:
    return f"{v * 100:.2f}%" if isinstance(v, (int, float)) else "-"


def _summary(state: dict[str, Any]) -> None:
    """The demo's result in one table: accuracy, size, fidelity and latency along the pipeline."""
    from rich.table import Table

    r = {k: v.get("result", {}) for k, v in state.items()}
    b = r.get("bench", {})
    threads = sorted((b.get("by_threads") or {}), key=int)
    lat_head = (
        "latency, batch 1 (" + " / ".join(f"{t_} thread{'s' if t_ != '1' else ''}" for t_ in threads) + ")"
        if threads
        else "latency (batch 1)"
    )
    table = Table(title="bvit-edge demo on digits (360 val images)")
    for col in ("stage of the pipeline", "val top-1", "size / fidelity", lat_head):
        table.add_column(col)
    for row in (*_training_rows(r), *_deployed_rows(r), *_board_rows(r), *_deit_s_rows(r.get("deit_s", {}))):
        table.add_row(*row)
    con = _console()
    con.print(table)
    for line in _closing_lines(b, threads, r.get("export") or {}):
        con.print(line)


def _training_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The teacher and the two GSB stages in torch."""
    t, g, f = r.get("teacher", {}), r.get("gsb", {}), r.get("fidelity", {})
    rows = []
    if t:
        rows.append(("FP teacher (torch, all 1,437 train images)", _pct(t.get("val_top1")), "", ""))
    if g:
        rows.append((f"GSB stage 1 (torch, {g.get('per_class')} images/class)", _pct(g.get("stage1_val_top1")), "", ""))
        top1 = f.get("student_torch", {}).get("top1", g.get("val_top1"))
        rows.append(("GSB stage 2 (torch, frozen)", _pct(top1), "", ""))
    return rows


def _deployed_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The exported and compiled student and the teachers in onnxruntime: accuracy, bytes, latency."""
    e, f, b = r.get("export", {}), r.get("fidelity", {}), r.get("bench", {})
    rows = []
    if e:
        st = e.get("storage") or {}
        rows.append(
            (
                f"GSB stage 2 -> ONNX, packed ops, B as {st.get('att_bias', 'float32')} (onnxruntime)",
                _pct(f.get("student_onnx", {}).get("top1")),
                f"{e['packed_bytes']:,} B ({_x(e.get('teacher_bytes'), e['packed_bytes'])} smaller than fp32, "
                f"{_x(e.get('teacher_int8_bytes'), e['packed_bytes'])} than int8)",
                "",
            )
        )
    if not f:
        return rows
    n = f.get("n_images", 0)
    rows.append(
        (
            "GSB stage 2 -> TVM artifact on the host",
            _pct(f.get("student_tvm_host", {}).get("top1")),
            f"top-1 agrees with ONNX on {f['onnx_vs_tvm']['top1_agreement'] * n:.0f}/{n}",
            _ms(b, "student_median_ms"),
        )
    )
    rows.append(
        (
            "FP teacher -> ONNX fp32 (onnxruntime)",
            _pct(f.get("teacher_onnx", {}).get("top1")),
            f"{e.get('teacher_bytes', 0):,} B" if e else "",
            _ms(b, "teacher_median_ms"),
        )
    )
    rows.append(
        (
            "FP teacher -> int8 by onnxruntime quantize_dynamic",
            _pct(f.get("teacher_int8_onnx", {}).get("top1")),
            f"{e.get('teacher_int8_bytes', 0):,} B" if e.get("teacher_int8_bytes") else "",
            _ms(b, "teacher_int8_median_ms"),
        )
    )
    return rows


def _board_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    bo = r.get("board", {})
    if not bo:
        return []
    fid = bo["aarch64_vs_host"]
    return [
        (
            "GSB stage 2 -> rpi4-aarch64 artifact on the emulated board (RPC)",
            "",
            f"max |diff| vs host {fid['max_abs_diff']:.1e} on {bo['n_images']} images, "
            f"top-1 agreement {_pct(fid['top1_agreement'])}",
            "emulated: not timed",
        )
    ]


def _deit_s_rows(ds: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The DeiT-S-geometry row (random weights: no accuracy)."""
    if not ds:
        return []
    s_onnx, s_art = ds["student_onnx_bytes"], ds["student_artifact_bytes"]
    return [
        (
            "GSB DeiT-S geometry, random non-zero frozen weights (compile + bench + size only; TVM)",
            "-",
            f"ONNX {s_onnx / 1e6:.2f} MB, artifact {s_art / 1e6:.2f} MB",
            f"{ds['student_median_ms']:.1f} ms (1 thread)",
        ),
        (
            "DeiT-S fp32, random weights (onnxruntime)",
            "-",
            f"{ds['teacher_onnx_bytes'] / 1e6:.1f} MB ({_x(ds['teacher_onnx_bytes'], s_onnx)} / "
            f"{_x(ds['teacher_onnx_bytes'], s_art)} the GSB ONNX / artifact)",
            f"{ds['teacher_median_ms']:.1f} ms ({ds['teacher_over_student']:.1f}x GSB)",
        ),
        (
            "DeiT-S int8 by quantize_dynamic (onnxruntime)",
            "-",
            f"{ds['teacher_int8_onnx_bytes'] / 1e6:.1f} MB ({_x(ds['teacher_int8_onnx_bytes'], s_onnx)} / "
            f"{_x(ds['teacher_int8_onnx_bytes'], s_art)})",
            f"{ds['teacher_int8_median_ms']:.1f} ms ({ds['teacher_int8_over_student']:.1f}x GSB)",
        ),
    ]


def _closing_lines(b: dict[str, Any], threads: list[str], e: dict[str, Any]) -> list[str]:
    """The student/teacher ratios per thread count and the storage fidelity, under the table."""
    lines = []
    for th in threads:
        row = b["by_threads"][th]
        lines.append(
            f"student vs teacher on this host at {th} thread{'s' if th != '1' else ''}: "
            f"{row['teacher_over_student']:.2f}x faster than fp32, "
            f"{row['teacher_int8_over_student']:.2f}x than int8 "
            "(onnxruntime; same process, alternating blocks)"
        )
    st = e.get("storage") or {}
    if st.get("fidelity"):
        parts = [
            f"{k.split(',')[0].split('=')[1]}{'+fp16' if 'float_params=float16' in k else ''}: max |d logit| "
            f"{v['max_abs_logit_diff']:.2g}, top-1 {v['top1_agreement'] * v['n_images']:.0f}/{v['n_images']}"
            for k, v in st["fidelity"].items()
        ]
        lines.append(f"storage of B (attention bias) vs float32, on the val images: {'; '.join(parts)}.")
    return lines
