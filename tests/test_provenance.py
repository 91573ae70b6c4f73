"""git_revision: the commit of the checkout bvit_edge runs from (what reports record), found by git or, without
git, from the .git files (worktrees and packed refs too); "unknown" outside a bvit-edge checkout.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import bvit_edge
from bvit_edge.provenance import UNKNOWN, git_revision, read_head
from bvit_edge.runtime.bench import git_revision as bench_git_revision

ROOT = Path(__file__).resolve().parents[1]
SHA_A = "a" * 40
SHA_B = "b" * 40


def test_the_revision_of_this_checkout_is_its_head():
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not running from a git checkout")
    if Path(bvit_edge.__file__).resolve().parent != ROOT / "bvit_edge":
        pytest.skip("bvit_edge is imported from elsewhere (an installed wheel)")
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert git_revision() == head == bench_git_revision()
    assert read_head(ROOT) == head  # the same without git


def test_without_git_the_head_is_read_from_the_files(tmp_path, monkeypatch):
    top = tmp_path / "repo"
    (top / "bvit_edge").mkdir(parents=True)
    git = top / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(SHA_A + "\n")
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert git_revision(top / "bvit_edge") == SHA_A
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{SHA_B} refs/heads/main\n")
    assert git_revision(top / "bvit_edge") == SHA_B


def test_a_worktree_reads_its_own_head_and_the_common_refs(tmp_path):
    main_git = tmp_path / "main" / ".git"
    (main_git / "refs" / "heads").mkdir(parents=True)
    (main_git / "refs" / "heads" / "feature").write_text(SHA_B + "\n")
    wt_git = main_git / "worktrees" / "wt"
    wt_git.mkdir(parents=True)
    (wt_git / "HEAD").write_text("ref: refs/heads/feature\n")
    (wt_git / "commondir").write_text("../..\n")
    wt = tmp_path / "wt"
    (wt / "bvit_edge").mkdir(parents=True)
    (wt / ".git").write_text(f"gitdir: {wt_git}\n")
    assert read_head(wt) == SHA_B
    (wt_git / "HEAD").write_text(SHA_A + "\n")  # detached
    assert read_head(wt) == SHA_A


def test_a_package_outside_a_bvit_edge_checkout_has_no_revision(tmp_path):
    site = tmp_path / "site-packages" / "bvit_edge"
    site.mkdir(parents=True)
    assert git_revision(site) == UNKNOWN
