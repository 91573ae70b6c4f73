"""Compile targets, cross toolchains, boards and the RPC client (``bvit_edge.targets``).

- ``registry``: target presets by name (``load_target``, ``list_targets``, ``TargetSpec``);
- ``toolchain``: find the cross compiler of a target (``find_compiler``);
- ``board``: the emulated aarch64 board (qemu user mode + TVM RPC server);
- ``rpc``: connect to a board (``connect``, ``connect_tracker``) and check its architecture.

Only the registry is imported here; the other modules import TVM lazily when used.
"""

from bvit_edge.targets.registry import TargetSpec, list_targets, load_target

__all__ = ["TargetSpec", "list_targets", "load_target"]
