"""Lift an artifact's weights out of lib.so: large Relax constants of "main" become extra parameters.

``lift_params_pass(holder)`` is a Relax module pass for :func:`bvit_edge.runtime.compile.relax_pipeline`. It
runs after legalize + constant folding + our float schedules, so the weights are final (8-bit weights int8,
packed for the target's dot instructions; binary weights repacked into the target's words) and keep their
dtype: params.npz holds float32, int8, int32 and word (uint64/uint32) arrays, each .npy entry with its
dtype. In the function ``main`` it replaces every tensor constant with at least one dimension and at least
``min_elements`` elements by a new parameter appended after the image input(s), numbered in order of first
use: ``p0``, ``p1``, ... The same constant object used twice becomes one parameter. Scalars and tiny
constants (shape helpers, a one-element scale) stay embedded in lib.so. The pass fills ``holder`` (a
:class:`LiftedParams`): names and numpy arrays in parameter order, which the compiler writes to
``params.npz``.

The compiled ``main`` is then called as ``main(image, *params)`` (see bvit_edge.runtime.artifact).
Only ``import tvm`` happens inside the pass; reading ``params.npz`` at run time needs numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Constants with fewer elements than this stay inside lib.so.
MIN_ELEMENTS = 16
ENTRY = "main"


@dataclass
class LiftedParams:
    """What :func:`lift_params_pass` took out of ``main``: names and arrays in parameter order."""

    names: list[str] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)
    #: entries an earlier pass of the same pipeline added (bvit_edge.runtime.compact_params); kept by this one
    kept: int = 0
    #: name -> how to rebuild a compactly stored parameter at load time (bvit_edge.runtime.compact_params)
    decode: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: further arrays the decodings read (scales, zero points), saved beside the parameters
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (the data alone, without the .npz framing)."""
        return int(sum(a.nbytes for a in self.arrays))

    def as_dict(self) -> dict[str, np.ndarray]:
        """name -> array, in parameter order."""
        return dict(zip(self.names, self.arrays, strict=True))

    def save_npz(self, path: Any) -> None:
        """Write the arrays to ``path`` with ``np.savez`` (uncompressed; keys in parameter order)."""
        # Any: numpy's stub types savez's **kwds like its allow_pickle flag; every value here is an array
        entries: dict[str, Any] = self.as_dict()
        extras: dict[str, Any] = self.extras
        with open(path, "wb") as f:
            np.savez(f, **entries, **extras)

    def clear(self) -> None:
        self.names.clear()
        self.arrays.clear()
        self.decode.clear()
        self.extras.clear()
        self.kept = 0


def _liftable(const: Any, min_elements: int) -> bool:
    """True for a tensor constant of rank >= 1 with at least ``min_elements`` elements."""
    value = getattr(const, "value", None)
    shape = getattr(value, "shape", None)
    if shape is None or not hasattr(value, "numpy"):
        return False
    dims = [int(d) for d in shape]
    return len(dims) >= 1 and int(np.prod(dims)) >= min_elements


def lift_params_pass(holder: LiftedParams, min_elements: int = MIN_ELEMENTS, entry: str = ENTRY) -> Any:
    """A module pass lifting the large constants of ``entry`` into parameters; fills ``holder``."""
    import tvm
    from tvm import relax
    from tvm.ir import GenericConst
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Lift(PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.by_handle: dict[int, Any] = {}  # the constant's object address -> its new parameter
            self.new_params: list[Any] = []
            self.keep: list[Any] = []  # the lifted constants, alive until the pass ends (addresses stay unique)

        def visit_generic_const_(self, op: GenericConst) -> Any:
            if not _liftable(op, min_elements):
                return op
            key = int(op.__chandle__())
            var = self.by_handle.get(key)
            if var is None:
                name = f"p{len(holder)}"
                var = relax.Var(name, op.ty)
                self.by_handle[key] = var
                self.new_params.append(var)
                self.keep.append(op)
                holder.names.append(name)
                holder.arrays.append(np.ascontiguousarray(op.value.numpy()))
            return var

    @tvm.transform.module_pass(opt_level=0, name="BvitEdgeLiftParams")
    def _pass(mod: Any, _ctx: Any) -> Any:
        del holder.names[holder.kept :], holder.arrays[holder.kept :]
        gv = next((g for g in mod.get_global_vars() if g.name_hint == entry), None)
        func = mod[gv] if gv is not None else None
        if not isinstance(func, relax.Function):
            return mod
        lift = _Lift(mod)
        body = lift.visit_expr(func.body)
        if not lift.new_params:
            return mod
        new_func = relax.Function(
            list(func.params) + lift.new_params, body, func.ret_ty, func.is_pure, func.attrs, func.span
        )
        if func.attrs is None or "num_input" not in func.attrs:  # the image input(s) first, then the weights
            new_func = new_func.with_attr("num_input", len(func.params))
        mod = mod.clone()
        mod[gv] = new_func
        return mod

    return _pass
