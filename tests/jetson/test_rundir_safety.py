"""Run folders cannot be prepared in advance by another user of a shared temp folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vaccel_plugins.jetson.rundir import RunDirs


def test_a_prepared_folder_or_symlink_is_not_used(tmp_path: Path) -> None:
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    base = tmp_path / "tmp"
    base.mkdir()
    (base / f"vaccel-{os.getpid()}").symlink_to(elsewhere)
    dirs = RunDirs(base, keep=False)
    dirs.open(1)
    out = dirs.output_path(1, "classify")
    assert out.parent.parent == dirs.process_dir
    assert dirs.process_dir.parent == base and not dirs.process_dir.is_symlink()
    assert stat.S_IMODE(dirs.process_dir.stat().st_mode) == 0o700
    assert list(elsewhere.iterdir()) == []
    assert RunDirs(base, keep=False).process_dir != dirs.process_dir
    dirs.close()
    assert not dirs.process_dir.exists()
