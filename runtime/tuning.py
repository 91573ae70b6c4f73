"""Tuning database of the binary kernels: the measured-best schedule knobs per kernel shape and target family.

The popcount kernels (bvit_edge.runtime.kernels) are scheduled by rule (bvit_edge.runtime.schedules) with
two knobs from the target family's :class:`FamilyParams`:

* ``n_tile``  - output columns kept in vector registers by the inner loop (the vectorized n loop);
* ``vector_popcount`` - vector popcount over the n tile, or one scalar ``popcnt`` per word with k innermost
  (on AVX2 LLVM lowers a vector popcount to the vpshufb nibble lookup; which is faster depends on the CPU).

Which values are fastest depends on the shape and the CPU, so they are measured, not guessed:
:func:`tune_kernels` builds every candidate of every distinct kernel of a model for the target, times it
(locally, or on a board through a TVM RPC session, since a cross-compiled kernel only runs there) and keeps
the fastest. A :class:`TuningDatabase` stores the result as JSON::

    {"schema_version": 1, "family": "x86-avx512", "records": {
        "binary_linear/signed/m198_k384_n1152/w64": {"n_tile": 16, "vector_popcount": true, "us": 152.1,
                                                     "tried": {"n_tile=16": 152.1, ...}, "cpu": "znver4"}}}

One database per target family ships with the package (``targets/tuning/<family>.json``) and is applied at
compile time without tuning; ``bvit-edge compile --tune N`` re-tunes (at most N candidates per kernel) and
``--tuning-db FILE`` keeps the result for later compiles. A kernel without a record uses the family rule.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bvit_edge.contract import DEFAULT_GSB_RATIOS
from bvit_edge.errors import ConfigError, ToolchainError, UsageError
from bvit_edge.runtime.schedules.family import FamilyParams

SCHEMA_VERSION = 1
KNOBS = ("n_tile", "vector_popcount")
_SHIPPED = Path(__file__).resolve().parent.parent / "targets" / "tuning"


@dataclass(frozen=True)
class KernelSpec:
    """One binary kernel instance of a model: which op, its static shape and modes."""

    op: str  # "binary_linear" | "binary_matmul"
    shape: tuple[int, ...]  # binary_linear: (m, k, n); binary_matmul: (batch, heads, m, k, n)
    modes: tuple[str, ...]  # binary_linear: (mode,); binary_matmul: (a_mode, b_mode)
    word_bits: int
    ratios: tuple[float, ...] = ()

    @property
    def key(self) -> str:
        """Database key, e.g. ``binary_linear/signed/m198_k384_n1152/w64``."""
        if self.op == "binary_linear":
            dims = "m{}_k{}_n{}".format(*self.shape)
        else:
            dims = "b{}_h{}_m{}_k{}_n{}".format(*self.shape)
        return f"{self.op}/{'_'.join(self.modes)}/{dims}/w{self.word_bits}"

    @property
    def n(self) -> int:
        return int(self.shape[-1])

    def build(self, params: FamilyParams) -> Any:
        """The scheduled prim func of this kernel with ``params``' knobs."""
        from bvit_edge.runtime.kernels import binary_linear_kernel, binary_matmul_kernel
        from bvit_edge.runtime.schedules import schedule_binary_linear, schedule_binary_matmul

        if self.op == "binary_linear":
            m, k, n = self.shape
            return schedule_binary_linear(binary_linear_kernel(m, k, n, self.modes[0], self.word_bits), params)
        b, h, m, k, n = self.shape
        func = binary_matmul_kernel(
            b, h, m, k, n, self.modes[0], self.modes[1], self.ratios or DEFAULT_GSB_RATIOS, self.word_bits
        )
        return schedule_binary_matmul(func, params)

    def random_args(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Inputs and output buffer of the prim func, in argument order (random values, right dtypes)."""
        from bvit_edge.runtime.kernels.words import n_words, word_dtype

        wd = np.dtype(word_dtype(self.word_bits))

        def f32(*shape: int) -> np.ndarray:
            return rng.standard_normal(shape).astype(np.float32)

        if self.op == "binary_linear":
            m, k, n = self.shape
            kw = n_words(k, self.word_bits)
            words = rng.integers(0, np.iinfo(wd).max, size=(kw, n), dtype=wd, endpoint=True)
            return [f32(m, k), f32(k), np.ones(1, np.float32), words, f32(n), f32(n), np.zeros((m, n), np.float32)]
        from bvit_edge.runtime.kernels.binary_matmul import n_planes

        b, h, m, k, n = self.shape
        return [
            f32(b, h, m, k),
            f32(b, h, k, n),
            np.abs(f32(n_planes(self.modes[0]))),
            np.abs(f32(n_planes(self.modes[1]))),
            np.zeros((b, h, m, n), np.float32),
        ]


def candidates(spec: KernelSpec, family: FamilyParams, trials: int) -> list[FamilyParams]:
    """At most ``trials`` knob settings for ``spec``: the family's rule first, then other n tiles dividing N
    (and, for BinaryLinear, the scalar-popcount variant of the rule)."""
    from bvit_edge.runtime.schedules.binary import _tile

    rule_tile = _tile(spec.n, family.n_tile) or family.n_tile  # the tile the rule itself ends up using
    base = dataclasses.replace(family, n_tile=rule_tile)
    tiles = [t for t in (8, 16, 32, 4, 64) if spec.n % t == 0]
    # other divisors (LLVM splits an 18-wide vector into 16 + 2): the only wide tiles when N = 198 tokens
    tiles += sorted((d for d in range(6, 65) if spec.n % d == 0 and d & (d - 1)), key=lambda d: abs(d - 20))[:3]
    out = [base] + [dataclasses.replace(family, n_tile=t) for t in tiles if t != rule_tile]
    if spec.op == "binary_linear":  # scalar popcnt per word (k innermost): the AVX2-style alternative
        out.insert(min(len(out), 2), dataclasses.replace(base, vector_popcount=not family.vector_popcount))
    return out[: max(int(trials), 1)]


def _label(p: FamilyParams) -> str:
    return f"n_tile={p.n_tile}" + ("" if p.vector_popcount else ",scalar_popcount")


class TuningDatabase:
    """Per-kernel records for one target family (see the module docstring for the file format)."""

    def __init__(self, family: str, records: dict[str, dict] | None = None, source: str = "memory") -> None:
        self.family = family
        self.records: dict[str, dict] = dict(records or {})
        self.source = source

    @classmethod
    def load(cls, path: str | os.PathLike[str], family: str) -> TuningDatabase:
        """Read a database file; a missing file is an empty database (it is created on save)."""
        path = Path(path)
        if not path.exists():
            return cls(family, source=str(path))
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(
                f"Tuning database {path} is not readable JSON ({exc}); delete it or pass another --tuning-db."
            ) from None
        if doc.get("schema_version") != SCHEMA_VERSION or not isinstance(doc.get("records"), dict):
            raise UsageError(
                f"Tuning database {path} has schema_version {doc.get('schema_version')!r} "
                f"(expected {SCHEMA_VERSION}) or no records; re-tune with --tune N."
            )
        if doc.get("family") not in (None, family):
            raise UsageError(
                f"Tuning database {path} was tuned for the {doc.get('family')} family, not {family}; "
                "pass a database of this target's family or re-tune."
            )
        return cls(family, doc["records"], source=str(path))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file + rename)."""
        from bvit_edge.atomic import write_json

        write_json(Path(path), self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "family": self.family, "records": dict(sorted(self.records.items()))}

    def merged(self, other: TuningDatabase | None) -> TuningDatabase:
        """A new database: these records, overridden by ``other``'s."""
        recs = dict(self.records)
        if other is not None:
            recs.update(other.records)
        return TuningDatabase(self.family, recs, source=f"{self.source}+{other.source}" if other else self.source)

    def params_for(self, family: FamilyParams, key: str) -> FamilyParams:
        """``family`` with the knobs recorded for ``key`` (unchanged when there is no record)."""
        rec = self.records.get(key)
        if not rec:
            return family
        knobs = {k: rec[k] for k in KNOBS if k in rec}
        return dataclasses.replace(family, **knobs)

    def __len__(self) -> int:
        return len(self.records)


def shipped_database(family: str) -> TuningDatabase:
    """The database shipped for ``family`` (targets/tuning/<family>.json), empty if none ships."""
    db = TuningDatabase.load(_SHIPPED / f"{family}.json", family)
    db.source = f"shipped:{family}" if len(db) else "none"
    return db


@dataclass
class _Active:
    db: TuningDatabase | None
    seen: dict[str, KernelSpec]
    applied: set[str]


_ACTIVE: contextvars.ContextVar[_Active | None] = contextvars.ContextVar("bvit_tuning", default=None)


@contextlib.contextmanager
def applying(db: TuningDatabase | None) -> Iterator[_Active]:
    """Within the block, the converters schedule each kernel with ``db``'s knobs and record its spec."""
    state = _Active(db, {}, set())
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def kernel_params(family: FamilyParams, spec: KernelSpec) -> FamilyParams:
    """The knobs to schedule ``spec`` with (called by the converters): the database's, else the family's."""
    state = _ACTIVE.get()
    if state is None:
        return family
    state.seen.setdefault(spec.key, spec)
    if state.db is None or spec.key not in state.db.records:
        return family
    state.applied.add(spec.key)
    return state.db.params_for(family, spec.key)


def _time_local(func: Any, target: Any, args: list[np.ndarray], number: int, repeat: int) -> tuple[float, np.ndarray]:
    """(median seconds per call, the output of one call) of the kernel built for this machine."""
    import tvm

    ex = tvm.compile(tvm.IRModule({"kernel": func.with_attr("global_symbol", "kernel")}), target=target)
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, device=dev) for a in args]
    ex.mod["kernel"](*tensors)
    out = tensors[-1].numpy()
    ev = ex.mod.time_evaluator("kernel", dev, number=number, repeat=repeat)
    return float(np.median(ev(*tensors).results)), out


_UPLOADS = itertools.count()


def _time_remote(
    func: Any, target: Any, args: list[np.ndarray], number: int, repeat: int, session: Any, compiler: str | None
) -> tuple[float, np.ndarray]:
    import tvm

    ex = tvm.compile(tvm.IRModule({"kernel": func.with_attr("global_symbol", "kernel")}), target=target)
    with tempfile.TemporaryDirectory() as tmp:
        # a fresh name per candidate: overwriting a library the board's server has loaded crashes it
        lib = Path(tmp) / f"bvit_tune_{os.getpid()}_{next(_UPLOADS)}.so"
        if compiler:
            ex.export_library(str(lib), cc=compiler)
        else:
            ex.export_library(str(lib))
        session.upload(str(lib))
        rmod = session.load_module(lib.name)
        with contextlib.suppress(Exception):  # loaded (mapped) already: unlinking it keeps the board tidy
            session.remove(lib.name)
    dev = session.cpu()
    tensors = [tvm.runtime.tensor(a, device=dev) for a in args]
    rmod["kernel"](*tensors)
    out = tensors[-1].numpy()  # copied back from the board, checked against the other candidates
    ev = rmod.time_evaluator("kernel", dev, number=number, repeat=repeat)
    return float(np.median(ev(*tensors).results)), out


def tune_kernels(
    specs: list[KernelSpec],
    target_spec: Any,
    family: FamilyParams,
    trials: int,
    session: Any = None,
    compiler: str | None = None,
    number: int = 10,
    repeat: int = 5,
    log: Callable[[str], None] | None = None,
) -> TuningDatabase:
    """Measure up to ``trials`` candidates per kernel on the target; a database of the fastest.

    Locally the kernels run on this machine, so the target must be this machine's architecture (a
    ConfigError otherwise: tune over RPC on the board). Each candidate is built alone, timed with TVM's
    time_evaluator (``number`` calls per sample, the median of ``repeat`` samples) and checked to give
    the same output as the family rule's schedule (exactly: the kernels are integer-exact up to the f32
    epilogue, which every candidate computes in the same order).
    """
    import platform

    if trials < 1:
        raise ConfigError(f"--tune {trials}: the number of candidates per kernel must be >= 1.")
    if session is None:
        host = platform.machine().lower()
        arch = str(target_spec.arch).lower()
        same = arch == host or (arch in ("x86_64", "x86-64", "amd64") and host in ("x86_64", "amd64"))
        if not same:
            raise ConfigError(
                f"Tuning for {target_spec.name!r} ({target_spec.arch}) needs the kernels to run on that board: "
                "pass --rpc HOST:PORT (or --tracker/--key) of a board; this machine is "
                f"{platform.machine()}."
            )
    say = log or (lambda _m: None)
    target = target_spec.tvm()
    db = TuningDatabase(family.family, source="tuned")
    rng = np.random.default_rng(0)
    cpu = (target_spec.tvm_target or {}).get("mcpu", "") if hasattr(target_spec, "tvm_target") else ""
    for i, spec in enumerate(sorted({s.key: s for s in specs}.values(), key=lambda s: s.key)):
        args = spec.random_args(rng)
        tried: dict[str, float] = {}
        best: tuple[float, FamilyParams] | None = None
        ref = None
        for cand in candidates(spec, family, trials):
            func = spec.build(cand)
            try:
                if session is None:
                    secs, out = _time_local(func, target, [a.copy() for a in args], number, repeat)
                else:
                    secs, out = _time_remote(func, target, [a.copy() for a in args], number, repeat, session, compiler)
            except Exception as exc:  # noqa: BLE001 - one failing candidate is skipped, not fatal
                say(f"  {spec.key} {_label(cand)}: failed ({str(exc).strip().splitlines()[-1][:120]})")
                continue
            if out is not None:
                if ref is None:
                    ref = out
                elif not np.allclose(out, ref, rtol=1e-5, atol=1e-5):
                    raise ToolchainError(
                        f"Tuning {spec.key}: candidate {_label(cand)} computes a different result "
                        "than the rule schedule; this is a bug in bvit_edge's schedules."
                    )
            tried[_label(cand)] = round(secs * 1e6, 2)
            if best is None or secs < best[0]:
                best = (secs, cand)
        if best is None:
            continue
        secs, cand = best
        db.records[spec.key] = {
            "n_tile": cand.n_tile,
            "vector_popcount": cand.vector_popcount,
            "us": round(secs * 1e6, 2),
            "tried": tried,
            "cpu": cpu,
            "date": dt.date.today().isoformat(),
        }
        say(f"[{i + 1}] {spec.key}: best {_label(cand)} {secs * 1e6:.1f} us (tried {len(tried)})")
    return db
