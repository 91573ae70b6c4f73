"""``bvit-edge-device``: run a compiled artifact on the board itself (the board-side distribution's command).

Needs numpy, Pillow and the TVM runtime only (argparse, no Typer): the same commands work on the host, where
the full toolkit installs this script too. Subcommands (``bvit-edge-device COMMAND --help``):

* ``run ART INPUT...``: top-k classes of image files / folders; ``--stdin-frames WxH --pixel-format F`` reads
  raw camera frames from stdin instead (one result line per frame, as they arrive).
* ``bench ART [--teacher ART]``: latency with ``bvit-edge bench``'s protocol and JSON (``--out FILE``).
* ``check ART``: every check (manifest, architecture, CPU features, sha256) and a load, without running.
* ``info``: this machine's architecture, CPU features and the TVM runtime found.

Human output goes to stderr; ``--json`` prints only the machine result on stdout (JSON lines for frames).
Exit codes: 0 ok, 2 bad input (bvit_edge.errors.UsageError, DataError), 4 runtime failure, 5 missing
dependency; a message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from bvit_edge.errors import BvitEdgeError

PROG = "bvit-edge-device"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _out_json(doc: Any, indent: int | None = 2) -> None:
    sys.stdout.write(json.dumps(doc, indent=indent) + "\n")
    sys.stdout.flush()


def _human_prediction(p: dict[str, Any]) -> str:
    guesses = ", ".join(f"{c} {prob * 100:.1f}%" for c, prob in p["top"])
    return f"{p['input']}: {guesses}  ({p['ms']:.2f} ms)"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    from bvit_edge.runtime.image_input import PIXEL_FORMATS

    ap = argparse.ArgumentParser(
        prog=PROG,
        description="Run a compiled bvit-edge artifact on this machine (a "
        "Raspberry Pi or any board with the TVM runtime): classify images, folders or "
        "camera frames, benchmark it, or check it.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="classify image files, folders, or raw frames from stdin")
    run.add_argument("artifact", help="artifact folder (lib.so, params.npz, manifest.json)")
    run.add_argument("inputs", nargs="*", help="image files and/or folders of images")
    run.add_argument("--top-k", type=_positive, default=3, help="classes shown per image (default 3)")
    run.add_argument("--threads", type=_positive, default=None, help="runtime threads (default: TVM's pool)")
    run.add_argument(
        "--stdin-frames",
        metavar="WxH",
        default=None,
        help="read raw frames of this size from stdin instead of files (e.g. 640x480)",
    )
    run.add_argument("--pixel-format", choices=PIXEL_FORMATS, default="rgb24", help="layout of stdin frames")
    run.add_argument("--max-frames", type=_positive, default=None, help="stop after this many frames")
    run.add_argument("--logits", action="store_true", help="include the raw logits in --json output")
    run.add_argument("--json", dest="as_json", action="store_true", help="JSON on stdout (JSON lines for frames)")

    bench = sub.add_parser("bench", help="latency with bvit-edge bench's protocol and JSON")
    bench.add_argument("artifact", help="the student artifact folder")
    bench.add_argument("--teacher", default=None, help="a teacher artifact compiled for the same target")
    bench.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="threads (default: the artifact's, capped to this process's CPUs)",
    )
    bench.add_argument("--warmup", type=_non_negative, default=5, help="warm-up runs, discarded and counted")
    bench.add_argument("--runs", type=_positive, default=50, help="timed runs")
    bench.add_argument("--seed", type=int, default=0, help="seed of the random input image")
    bench.add_argument("--image", default=None, help="time on this image (or .npy of images) instead of noise")
    bench.add_argument(
        "--emulated",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="label the timings emulated (default: detected)",
    )
    bench.add_argument("--out", default=None, help="write the result JSON here (atomically)")
    bench.add_argument("--json", dest="as_json", action="store_true", help="print the result JSON on stdout")

    check = sub.add_parser("check", help="verify an artifact can run here (and load it), without running it")
    check.add_argument("artifact", help="artifact folder")
    check.add_argument("--json", dest="as_json", action="store_true", help="JSON on stdout")

    info = sub.add_parser("info", help="this machine: architecture, CPU features, TVM runtime")
    info.add_argument("--json", dest="as_json", action="store_true", help="JSON on stdout")
    return ap


def _run(args: argparse.Namespace) -> None:
    from bvit_edge.errors import UsageError
    from bvit_edge.runtime import device

    if args.stdin_frames is not None:
        from bvit_edge.runtime.image_input import parse_frame_size

        if args.inputs:
            raise UsageError("Give image files/folders or --stdin-frames, not both.")
        width, height = parse_frame_size(args.stdin_frames)
        for pred in device.classify_frames(
            args.artifact,
            sys.stdin.buffer,
            width,
            height,
            args.pixel_format,
            top_k=args.top_k,
            threads=args.threads,
            limit=args.max_frames,
            with_logits=args.logits,
        ):
            if args.as_json:
                _out_json(pred, indent=None)
            else:
                _say(_human_prediction(pred))
        return
    if not args.inputs:
        raise UsageError("Give image files or folders to classify, or --stdin-frames WxH to read camera frames.")
    res = device.classify(args.artifact, args.inputs, top_k=args.top_k, threads=args.threads, with_logits=args.logits)
    if args.as_json:
        _out_json(res)
        return
    for pred in res["predictions"]:
        _say(_human_prediction(pred))
    _say(f"{res['num_images']} images, artifact loaded in {res['load_ms']:.0f} ms")


def _bench(args: argparse.Namespace) -> None:
    from bvit_edge.runtime.device import bench_on_device

    res = bench_on_device(
        args.artifact,
        teacher_artifact=args.teacher,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        seed=args.seed,
        image=args.image,
        emulated=args.emulated,
    )
    if args.out:
        res.save(args.out)
    d = res.to_dict()
    if args.as_json:
        _out_json(d)
        return
    _say(f"bench of {args.artifact} on {d['target'].get('name')} ({d['timing_kind']}, {d['threads']} threads):")
    for role in ("student", "teacher"):
        side = d.get(role)
        if side:
            t = side["steady"]
            _say(
                f"  {role}: median {t['median_ms']:.3f} ms, p90 {t['p90_ms']:.3f} ms, min {t['min_ms']:.3f} ms "
                f"over {t['runs']} runs (load {side['load_ms']:.0f} ms, first run {side['first_run_ms']:.1f} ms)"
            )
    if d.get("ratio_teacher_over_student_median") is not None:
        _say(f"  teacher / student median: {d['ratio_teacher_over_student_median']:.2f}x")
    if args.out:
        _say(f"  written: {args.out}")


def _check(args: argparse.Namespace) -> None:
    from bvit_edge.runtime.device import check

    res = check(args.artifact)
    if args.as_json:
        _out_json(res)
        return
    v = res["verified"]
    _say(
        f"{res['artifact']}: OK for this machine ({res['machine']['arch']}): target {res['target']}, manifest "
        f"schema {v['manifest_schema']}, lib.so sha256 {'checked' if v['lib_sha256'] else 'not recorded'}, "
        f"params sha256 {'checked' if v['params_sha256'] else 'embedded weights'}, CPU features "
        f"{', '.join(res['required_cpu_features']) or 'none recorded'} present; {res['params']} weight tensors "
        "loaded."
    )


def _info(args: argparse.Namespace) -> None:
    from bvit_edge.runtime.cpu_features import cpu_features, machine_arch
    from bvit_edge.runtime.device import is_emulated, versions

    features, found = sorted(cpu_features()), versions()
    arch, emulated = machine_arch(), is_emulated()
    if args.as_json:
        _out_json({"arch": arch, "emulated": emulated, "cpu_features": features, "versions": found})
        return
    _say(f"arch {arch}{' (emulated)' if emulated else ''}; CPU features: {' '.join(features)}")
    _say("; ".join(f"{k} {v}" for k, v in found.items()))


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) the exit code."""
    args = _parser().parse_args(argv)
    handlers = {"run": _run, "bench": _bench, "check": _check, "info": _info}
    try:
        handlers[args.command](args)
    except BvitEdgeError as exc:
        _say(f"error: {exc}")
        if getattr(args, "as_json", False):
            _out_json({"error": str(exc), "exit_code": exc.exit_code, "hint": None})
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _say("interrupted")
        sys.exit(130)
    except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`)
        sys.exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
