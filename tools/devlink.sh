#!/usr/bin/env bash
# Development only: builds a symlink tree that mirrors the installed wheel's layout
# (bvit_edge + export/runtime/targets/cli.py mapped into it) so code can be run without reinstalling.
# Usage: bash tools/devlink.sh [DEST] ; then PYTHONPATH=DEST python -m bvit_edge ...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-/tmp/bvit_dev}
rm -rf "$dest/bvit_edge"; mkdir -p "$dest/bvit_edge"
for f in "$root"/bvit_edge/*; do ln -s "$f" "$dest/bvit_edge/$(basename "$f")"; done
ln -s "$root/export" "$dest/bvit_edge/export"
ln -s "$root/runtime" "$dest/bvit_edge/runtime"
ln -s "$root/targets" "$dest/bvit_edge/targets"
ln -s "$root/cli.py" "$dest/bvit_edge/cli.py"
echo "$dest"
