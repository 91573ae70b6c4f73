"""The run folder of ``bvit-edge train --out RUN``: start, resume or replace it, never mix two runs.

bvit_edge.output_folder's rule, for a command that writes over time and can resume:

* absent or empty: a new run starts there (the marker records the resolved training config);
* a run of ``train`` (its marker) holding a checkpoint: ``--resume`` continues it, ``--overwrite`` replaces
  the whole folder, anything else is refused with exit 2 asking for one of the two; a run folder without any
  checkpoint yet (killed before its first one) starts again;
* anything else: refused unless ``--overwrite`` (replaced as a whole). A run written before run folders had
  a marker (``last/config.json`` present) can still be resumed.

``--resume`` continues a run with the options it was started with: an option given again with another
value (another ``--model``, ``--method``, ``--epochs``, ...) is a ConfigError naming each difference.
Options that only say where and how fast to run (:data:`RUNTIME_OPTIONS`) may change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bvit_edge.errors import ConfigError, UsageError
from bvit_edge.output_folder import MARKER, check_output_folder, claim_output_folder

COMMAND = "train"
#: options a resumed run may change: where and how fast it runs, and when it stops or saves
RUNTIME_OPTIONS = frozenset({"max_steps", "threads", "workers", "device", "out", "eval_every", "save_every_steps"})
#: checkpoints whose presence makes a folder a run (single-stage runs, and GSB's two stages)
CHECKPOINTS = ("last", "best", "stage1/last", "stage1/best", "stage2/last", "stage2/best")


def _has_checkpoint(run: Path) -> bool:
    return any((run / c / "config.json").is_file() or (run / c / "model.safetensors").is_file() for c in CHECKPOINTS)


def _legacy_run(run: Path) -> bool:
    """A run folder written before markers existed: a bvit-edge checkpoint in it, no marker."""
    return run.is_dir() and not (run / MARKER).exists() and _has_checkpoint(run)


def _started_with(run: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((run / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    cfg = doc.get("train_config") if isinstance(doc, dict) else None
    return cfg if isinstance(cfg, dict) else None


def check_resume_options(run: Path, explicit: dict[str, Any]) -> None:
    """ConfigError when an option given with --resume differs from the value the run was started with."""
    started = _started_with(run)
    if started is None:
        return
    diffs = []
    for key, value in sorted(explicit.items()):
        if key in RUNTIME_OPTIONS or key not in started or value is None:
            continue
        if key == "method_options":
            theirs = started.get(key) or {}
            changed = {k: v for k, v in (value or {}).items() if theirs.get(k) != v}
            if changed:
                diffs.append(f"method_options {changed} (started with {theirs})")
        elif value != started[key]:
            diffs.append(f"{key} {value!r} (started with {started[key]!r})")
    if diffs:
        raise ConfigError(
            f"--resume continues {run} with the options it was started with, but these differ: "
            f"{'; '.join(diffs)}. Drop them to continue the run, or start a new run in another "
            "--out (or replace this one with --overwrite)."
        )


@dataclass
class RunFolder:
    """What :func:`prepare_run_folder` decided: ``state`` is "new", "resume" or "replace"; :meth:`claim`
    makes it so (creates or replaces the folder, with its marker) and is called just before the run writes
    its first file, so a run that fails earlier (a missing teacher, bad data) leaves nothing behind."""

    path: Path
    state: str
    train_config: dict[str, Any]
    claimed: bool = False

    def claim(self) -> None:
        if self.claimed or self.state == "resume":
            return
        claim_output_folder(
            self.path, COMMAND, overwrite=True, keep_own=False, extra={"train_config": self.train_config}
        )
        self.claimed = True


def prepare_run_folder(
    out: str | os.PathLike[str],
    resume: bool,
    overwrite: bool,
    train_config: dict[str, Any],
    explicit: dict[str, Any],
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> RunFolder:
    """Check the run folder (nothing is written: call ``claim()`` on the result when the run writes).

    ``explicit``: the options the user gave (for the --resume comparison). ``inputs``: checkpoints and data the
    run reads, which must not lie inside a folder that --overwrite replaces. Every process of a distributed
    run calls it (all raise the same error); only the one that writes claims the folder."""
    run = Path(out).expanduser().absolute()
    if resume and overwrite:
        raise UsageError("Give --resume (continue the run in --out) or --overwrite (replace it), not both.")
    if resume:
        if not (run.is_dir() and _has_checkpoint(run)):
            raise UsageError(f"--resume: nothing to resume in {out} (no last/ checkpoint). Start without --resume.")
        if not _legacy_run(run):
            check_output_folder(run, COMMAND)  # refuses a folder another command wrote
        check_resume_options(run, explicit)
        return RunFolder(run, "resume", train_config)
    legacy = _legacy_run(run)
    state = "legacy" if legacy else check_output_folder(run, COMMAND, overwrite, inputs=inputs if overwrite else ())
    if state in ("own", "legacy") and _has_checkpoint(run) and not overwrite:
        raise UsageError(
            f"--out {out} already holds a training run. Continue it with --resume, or start over with "
            "--overwrite (the whole folder is replaced). A new run needs a new or empty --out."
        )
    if legacy:  # only reached with --overwrite
        check_output_folder(run, COMMAND, True, inputs=inputs)
    return RunFolder(
        run, "new" if state == "new" or (state == "own" and not _has_checkpoint(run)) else "replace", train_config
    )
