"""Installing plugin packages for a test, as a third party's users would: pip, with the
package's own build backend (hatchling, from the test extra), into a private folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pip_install_into(target: Path, *projects: Path) -> None:
    """``pip install`` the project folders ``projects`` into ``target`` (no dependencies, no
    index, no build isolation: offline and fast)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            *map(str, projects),
        ],
        check=True,
        timeout=180,
    )
