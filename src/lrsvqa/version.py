"""Which lrsvqa this is: the release and, in a source checkout, the git commit.

Run records and ``lrsvqa --version`` both name the commit, so an answers file or a bug
report can be traced to the code that made it. Torch-free, for the command line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import lrsvqa


def source_commit() -> str | None:
    """The source checkout's commit (``+dirty`` with uncommitted changes), if it is one."""
    here = Path(lrsvqa.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def version_line() -> str:
    """``lrsvqa 0.1.0`` with `` (commit abc123...)`` when run from a git checkout."""
    commit = source_commit()
    return f"lrsvqa {lrsvqa.__version__}" + (f" (commit {commit})" if commit else "")
