"""Property tests: damage checkpoints, trainer states, packed ONNX files and training configs at random, run
the CLI on them, and require a clean refusal: exit code 2, 3 or 4, no traceback (nor an abort or a hang), the
damaged input unchanged, nothing half-written next to it.

Each example is a CLI run in a subprocess (a few seconds), so the example counts are small and the examples
fixed (``derandomize``): the same cases on every run, which keeps the suite's time predictable. Damage that
leaves a file valid (a flipped bit inside an ONNX weight or a checkpoint tensor, a config value of the right
type) is not bad input and is not generated; an artifact folder is checked whole (its manifest records the
sha256 of lib.so and params.npz), so any byte of it may be damaged.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import string
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI
    import tomli as tomllib

pytestmark = pytest.mark.slow

SETTINGS = dict(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def _assert_refused_cleanly(cli, proc, inputs: dict[str, bytes], where: Path) -> None:
    detail = f"exit {proc.returncode}\nstderr: {proc.stderr[-3000:]}"
    assert proc.returncode in (2, 3, 4), detail
    assert "Traceback (most recent call last)" not in proc.stderr, detail
    assert cli.snapshot(*inputs_paths(inputs)) == inputs, "an input file changed"
    assert cli.leftovers(where) == [], "something half-written was left"


def inputs_paths(snapshot: dict[str, bytes]) -> list[str]:
    return sorted({k[: -len(":kind")] for k in snapshot if k.endswith(":kind")})


# ------------------------------------------------------------------------------------------------ packed ONNX
_WRONG_MODES = st.text(alphabet=string.ascii_letters + "_", min_size=0, max_size=12).filter(
    lambda s: s not in ("signed", "unsigned", "gsb_unsigned", "gsb_signed")
)

_onnx_damage = st.one_of(
    st.tuples(st.just("dims"), st.integers(0, 10_000), st.sampled_from(["reverse", "grow", "drop", "extra"])),
    st.tuples(st.just("mode"), st.integers(0, 10_000), _WRONG_MODES),
    st.tuples(st.just("in_features"), st.integers(0, 10_000), st.integers(-4, 5000)),
    st.tuples(st.just("version"), st.integers(-3, 40).filter(lambda v: v != 1)),
    st.tuples(st.just("drop_weights"), st.integers(0, 10_000)),
    st.tuples(st.just("truncate"), st.floats(0.0, 0.98)),
    st.tuples(st.just("garbage"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=64)),
)


def _valid_model(data: bytes) -> bool:
    try:
        onnx.checker.check_model(onnx.load_model_from_string(data), full_check=True)
        return True
    except Exception:  # noqa: BLE001 - anything the checker refuses
        return False


def _damage_onnx(src: Path, damage: tuple) -> bytes:
    kind = damage[0]
    raw = src.read_bytes()
    if kind == "truncate":
        cut = raw[: int(len(raw) * damage[1])]
        assume(not _valid_model(cut))
        return cut
    if kind == "garbage":
        at = int((len(raw) - 1) * damage[1])
        bad = raw[:at] + damage[2] + raw[at + len(damage[2]) :]
        assume(bad != raw and not _valid_model(bad))
        return bad
    proto = onnx.load_model_from_string(raw)
    nodes = [n for n in proto.graph.node if n.domain == "bvit_edge"]
    if kind == "version":
        for imp in proto.opset_import:
            if imp.domain == "bvit_edge":
                imp.version = damage[1]
        return proto.SerializeToString()
    node = nodes[damage[1] % len(nodes)]
    if kind == "mode":
        name = "mode" if node.op_type == "BinaryLinear" else "a_mode"
        for a in node.attribute:
            if a.name == name:
                a.s = damage[2].encode()
    elif kind == "in_features":
        assume(node.op_type == "BinaryLinear")
        for a in node.attribute:
            if a.name == "in_features":
                assume(a.i != damage[2])
                a.i = damage[2]
    elif kind == "drop_weights":
        node.input[min(3, len(node.input) - 1)] = ""
    else:  # dims of a constant input
        inits = {i.name: i for i in proto.graph.initializer}
        consts = [inits[name] for name in node.input if name in inits and len(inits[name].dims) >= 1]
        assume(consts)
        init = consts[damage[1] % len(consts)]
        dims = list(init.dims)
        new = {
            "reverse": dims[::-1],
            "grow": [*dims[:-1], dims[-1] + 1],
            "drop": dims[:-1] or [0],
            "extra": [*dims, 1],
        }[damage[2]]
        assume(new != dims)
        init.dims[:] = new
    return proto.SerializeToString()


@settings(max_examples=10, **SETTINGS)
@given(damage=_onnx_damage)
def test_a_damaged_packed_onnx_is_refused_cleanly(cli, tiny_pipeline, damage):
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "model.onnx"
        bad.write_bytes(_damage_onnx(tiny_pipeline["packed"], damage))
        before = cli.snapshot(bad)
        proc = cli.run("run", bad, "--image", tiny_pipeline["image"])
        _assert_refused_cleanly(cli, proc, before, Path(tmp))


# ------------------------------------------------------------------------------------------------ artifacts
_ANY_VALUE = st.one_of(
    st.none(), st.integers(-3, 3), st.text(max_size=6), st.lists(st.integers(0, 3), max_size=3), st.just({"x": 1})
)
_MANIFEST_FIELDS = ["schema_version", "input", "params", "target", "lib", "lib_sha256", "normalization", "entry"]
_artifact_damage = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(_MANIFEST_FIELDS), _ANY_VALUE),
    st.tuples(st.just("manifest_text"), st.binary(max_size=40)),
    st.tuples(
        st.just("bytes"),
        st.sampled_from(["lib.so", "params.npz", "manifest.json"]),
        st.floats(0.0, 1.0),
        st.binary(min_size=1, max_size=32),
    ),
    st.tuples(st.just("truncate"), st.sampled_from(["lib.so", "params.npz"]), st.floats(0.0, 0.99)),
)


def _same_json(a: bytes, b: bytes) -> bool:
    try:
        return bool(json.loads(a) == json.loads(b))
    except (ValueError, UnicodeDecodeError):
        return False


def _damage_artifact(art: Path, damage: tuple) -> None:
    kind = damage[0]
    if kind == "field":
        manifest = json.loads((art / "manifest.json").read_text())
        assume(manifest.get(damage[1]) != damage[2] and type(manifest.get(damage[1])) is not type(damage[2]))
        manifest[damage[1]] = damage[2]
        (art / "manifest.json").write_text(json.dumps(manifest))
    elif kind == "manifest_text":
        (art / "manifest.json").write_bytes(damage[1])
    elif kind == "bytes":
        f = art / damage[1]
        raw = f.read_bytes()
        at = int((len(raw) - 1) * damage[2])
        new = raw[:at] + damage[3] + raw[at + len(damage[3]) :]
        assume(new != raw)
        if damage[1] == "manifest.json":
            assume(not _same_json(new, raw))  # a manifest that is still the same JSON document is not damaged
        f.write_bytes(new)
    else:
        f = art / damage[1]
        raw = f.read_bytes()
        f.write_bytes(raw[: int(len(raw) * damage[2])])


@settings(max_examples=10, **SETTINGS)
@given(damage=_artifact_damage)
def test_a_damaged_artifact_is_refused_cleanly(cli, tiny_pipeline, damage):
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "art"
        shutil.copytree(tiny_pipeline["art"], art)
        _damage_artifact(art, damage)
        before = cli.snapshot(art)
        proc = cli.run("run", art, "--image", tiny_pipeline["image"])
        _assert_refused_cleanly(cli, proc, before, Path(tmp))


# ------------------------------------------------------------------------------------------------ checkpoints
_anything = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=4,
)
_WRONG = {  # config field -> values of a kind that field never has (or that no model fits)
    "model": st.one_of(
        st.none(),
        st.integers(),
        st.lists(st.text(max_size=3), max_size=2),
        st.text(string.ascii_lowercase + "_", min_size=1, max_size=12).filter(lambda s: "_" not in s),
    ),
    "model_kwargs": st.one_of(
        st.lists(st.integers(), max_size=2),
        st.text(max_size=5),
        st.dictionaries(st.sampled_from(["bogus", "depthh", "heads_x"]), st.integers(1, 3), min_size=1, max_size=2),
    ),
    "image_size": st.one_of(st.integers(-5, 0), st.integers(17, 64), st.text(max_size=3), st.floats(0.5, 40)),
    "num_classes": st.one_of(st.integers(-3, 0), st.text(max_size=3), st.integers(11, 30)),
    "classes": st.one_of(
        st.integers(),
        st.just([]),
        st.lists(st.integers(), min_size=1, max_size=3),
        st.lists(st.text(max_size=3), min_size=1, max_size=4),
    ),
    "mean": st.one_of(st.text(max_size=3), st.just([]), st.lists(st.text(max_size=2), min_size=1, max_size=3)),
    "std": st.one_of(st.just([0.0, 1.0, 1.0]), st.lists(st.floats(-2, 0), min_size=1, max_size=3), st.text(max_size=2)),
}
_checkpoint_damage = st.one_of(
    st.tuples(st.just("config_field"), st.sampled_from(sorted(_WRONG))).flatmap(
        lambda t: st.tuples(st.just(t[0]), st.just(t[1]), _WRONG[t[1]])
    ),
    st.tuples(st.just("config_text"), st.binary(max_size=40)),
    st.tuples(st.just("config_json"), _anything),
    st.tuples(st.just("weights_truncate"), st.floats(0.0, 0.99)),
    st.tuples(st.just("weights_header"), st.integers(0, 200), st.binary(min_size=1, max_size=16)),
)


def _damage_checkpoint(folder: Path, damage: tuple) -> None:
    kind = damage[0]
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if kind == "config_field":
        cfg = json.loads(cfg_path.read_text())
        assume(cfg.get(damage[1]) != damage[2])
        names = damage[2] if isinstance(damage[2], list) else None
        if damage[1] == "classes" and names and all(isinstance(c, str) for c in names):
            assume(len(names) != len(cfg["classes"]))  # another count of names: refused; renamed ones are fine
        cfg[damage[1]] = damage[2]
        cfg_path.write_text(json.dumps(cfg))
    elif kind == "config_text":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            assume(not isinstance(json.loads(damage[1]), dict))
        cfg_path.write_bytes(damage[1])
    elif kind == "config_json":
        cfg_path.write_text(json.dumps(damage[1]))
    elif kind == "weights_truncate":
        raw = weights.read_bytes()
        weights.write_bytes(raw[: int(len(raw) * damage[1])])
    else:  # bytes inside the safetensors header (its length and JSON), never the tensor data
        raw = bytearray(weights.read_bytes())
        header_end = 8 + int.from_bytes(raw[:8], "little")
        at = damage[1] % header_end
        new = raw[:at] + damage[2] + raw[at + len(damage[2]) :]
        assume(bytes(new[:header_end]) != bytes(raw[:header_end]))
        weights.write_bytes(bytes(new))


@settings(max_examples=10, **SETTINGS)
@given(damage=_checkpoint_damage)
def test_a_damaged_checkpoint_is_refused_cleanly(cli, tiny_pipeline, damage):
    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(tmp) / "ck"
        shutil.copytree(tiny_pipeline["teacher"] / "best", ck)
        _damage_checkpoint(ck, damage)
        before = cli.snapshot(ck)
        proc = cli.run("eval", ck, "--batch-size", "128")
        _assert_refused_cleanly(cli, proc, before, Path(tmp))


# ------------------------------------------------------------------------------------------------ trainer state
_state_damage = st.one_of(
    st.tuples(
        st.just("drop"),
        st.sampled_from(
            [
                "optimizer",
                "step",
                "epoch",
                "rng_torch",
                "rng_numpy",
                "rng_python",
                "history",
                "best_top1",
                "batch_in_epoch",
            ]
        ),
    ),
    st.tuples(
        st.just("retype"),
        st.sampled_from(["step", "epoch", "history", "best_top1", "rng_numpy", "rng_python", "optimizer"]),
        st.sampled_from(["x", [], {}, None]),
    ),
    st.tuples(st.just("rng_python_short"), st.integers(0, 600)),
    st.tuples(
        st.just("no_param_groups"),
    ),
    st.tuples(st.just("truncate"), st.floats(0.0, 0.99)),
    st.tuples(st.just("weights_truncate"), st.floats(0.0, 0.99)),
)


def _damage_state(last: Path, damage: tuple) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from bvit_edge.training.trainer_state import META_KEY

    path = last / "trainer_state.safetensors"
    kind = damage[0]
    if kind in ("truncate", "weights_truncate"):
        f = path if kind == "truncate" else last / "model.safetensors"
        raw = f.read_bytes()
        f.write_bytes(raw[: int(len(raw) * damage[1])])
        return
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in list(fh.keys())}  # a safe_open handle is not iterable
    doc: dict[str, Any] = json.loads(meta[META_KEY])
    if kind == "drop":
        del doc[damage[1]]
    elif kind == "retype":
        assume(not (damage[1] == "history" and damage[2] == []))
        assume(not (damage[1] == "optimizer" and damage[2] == {}))
        doc[damage[1]] = damage[2]
    elif kind == "rng_python_short":
        state = doc["rng_python"]["$tuple"]
        internal = state[1]["$tuple"]
        assume(damage[1] != len(internal))
        n = damage[1]
        state[1]["$tuple"] = internal[:n] if n < len(internal) else internal + [0] * (n - len(internal))
    else:
        doc["optimizer"]["param_groups"] = []
    meta[META_KEY] = json.dumps(doc)
    save_file(tensors, str(path), metadata=meta)


@settings(max_examples=8, **SETTINGS)
@given(damage=_state_damage)
def test_a_damaged_trainer_state_is_refused_cleanly(cli, tiny_pipeline, damage):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(tiny_pipeline["teacher"], run)
        _damage_state(run / "last", damage)
        before = cli.snapshot(run)
        proc = cli.run("train", "--out", run, "--resume")
        _assert_refused_cleanly(cli, proc, before, Path(tmp))


# ------------------------------------------------------------------------------------------------ configs
_KEYS = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=14)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if not isinstance(v, float) or v == v else "nan"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


_scalars = st.one_of(
    st.booleans(),
    st.integers(-10, 10),
    st.floats(-10, 10, allow_nan=False),
    st.text(max_size=6),
    st.lists(st.integers(0, 3), max_size=3),
)


def _bad_entry() -> st.SearchStrategy:
    from dataclasses import fields

    from bvit_edge.training.config import TrainConfig, check_options

    known = sorted(f.name for f in fields(TrainConfig) if f.name != "method_options")

    def wrong_for(key: str) -> st.SearchStrategy:
        def refused(value: Any) -> bool:
            try:
                check_options({key: value}, lambda k: "")
            except Exception:  # noqa: BLE001 - the value the options table refuses
                return True
            return False

        return _scalars.filter(refused).map(lambda v: ("top", key, v))

    return st.one_of(
        _KEYS.filter(lambda k: k not in [*known, "method_options", "train"]).flatmap(
            lambda k: _scalars.map(lambda v: ("top", k, v))
        ),
        st.sampled_from(known).flatmap(wrong_for),
        _KEYS.flatmap(lambda k: st.integers(0, 3).map(lambda v: ("method_options", k, v))),
    )


@settings(max_examples=12, **SETTINGS)
@given(entry=st.deferred(_bad_entry), garbage=st.booleans(), text=st.text(max_size=30))
def test_an_invalid_training_config_is_refused_cleanly(cli, entry, garbage, text):
    where, key, value = entry
    if garbage:  # text that is not TOML at all
        try:
            tomllib.loads(text)
            assume(False)
        except tomllib.TOMLDecodeError:
            pass
        body = text
    else:
        body = (
            f"{key} = {_toml_value(value)}\n" if where == "top" else f"[method_options]\n{key} = {_toml_value(value)}\n"
        )
        try:
            tomllib.loads(body)
        except tomllib.TOMLDecodeError:
            assume(False)
        assume(not (where == "top" and key == "method" and value == "fp"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.toml"
        cfg.write_text(body)
        out = Path(tmp) / "run"
        before = cli.snapshot(cfg)
        proc = cli.run(
            "train",
            "--config",
            cfg,
            "--model",
            "deit_test_patch4_16",
            "--image-size",
            "16",
            "--per-class",
            "2",
            "--max-steps",
            "1",
            "--out",
            out,
        )
        assert proc.returncode == 2, f"exit {proc.returncode}: {body!r}\n{proc.stderr[-2000:]}"
        _assert_refused_cleanly(cli, proc, before, Path(tmp))
        assert not out.exists(), f"{body!r} left a run folder"
