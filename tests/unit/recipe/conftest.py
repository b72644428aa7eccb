"""The job folder a user's script writes, shared by the recipe tests (one export per session)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("_user_script.py")


@pytest.fixture(scope="session")
def user_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Run ``_user_script.py`` in a fresh interpreter; its model classes live in its
    ``__main__``, which this process cannot import. Returns the job folder and its report."""
    out = tmp_path_factory.mktemp("user-job")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return Path(report["folder"]), report
