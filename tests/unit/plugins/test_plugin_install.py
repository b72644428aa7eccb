"""Third-party plugins installed for real: the example package and a broken one, pip-installed
into a fresh virtual environment and loaded by name through the registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "plugin"

BROKEN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "edgefl-broken-plugin"
version = "0.0.1"

[project.entry-points."edgefl.aggregators"]
broken = "edgefl_broken_plugin.absent:Aggregator"
halfdone = "edgefl_broken_plugin:HalfDone"

[tool.setuptools]
packages = ["edgefl_broken_plugin"]
"""

BROKEN_MODULE = """\
class HalfDone:
    def __init__(self, settings):
        pass

    def accept(self, update, current_version):
        pass
"""


def run_python(python: Path, script: str, cwd: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", textwrap.dedent(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment on top of this one with both plugin packages installed."""
    root = tmp_path_factory.mktemp("plugin-env")
    shutil.copytree(
        EXAMPLE,
        root / "median",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    broken = root / "broken"
    (broken / "edgefl_broken_plugin").mkdir(parents=True)
    (broken / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    (broken / "edgefl_broken_plugin" / "__init__.py").write_text(BROKEN_MODULE)

    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python = venv / "bin" / "python"
    # --system-site-packages exposes the base interpreter's packages, not this virtual
    # environment's; chain ours (torch, numpy, the editable edgefl) in with a .pth file.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "_edgefl_parent_env.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n"
    )
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"),
            *("--no-deps", "--no-build-isolation", "--no-index"),
            *(str(root / "median"), str(broken)),
        ],
        check=True,
        capture_output=True,
    )
    return python


def test_installed_plugin_loads_by_name_and_aggregates(plugin_env: Path, tmp_path: Path) -> None:
    out = run_python(
        plugin_env,
        """
        import json, sys
        import numpy as np
        from edgefl.api import AggregatorSettings, Update
        from plugins import AGGREGATORS, Registry

        registry = Registry.from_entry_points()
        settings = AggregatorSettings(3, 1.0, False, None, 5)
        agg = registry.aggregator("median", settings, {"statistic": "median"})
        for i, d in enumerate([[1.0, 10.0], [2.0, 20.0], [100.0, -5.0]]):
            agg.accept(Update(str(i), str(i), 2, {"p": np.array(d, np.float32)}), 2)
        ready = agg.ready(2, selected=2)
        new = agg.aggregate({"p": np.zeros(2, np.float32), "b": np.ones(1, np.float32)}, 2)
        (info,) = registry.provenance()
        print(json.dumps({
            "names": registry.names(AGGREGATORS),
            "ready": ready,
            "p": new["p"].tolist(),
            "b": new["b"].tolist(),
            "provenance": [info.group, info.name, info.value, info.dist, info.version],
            "broken_imported": "edgefl_broken_plugin" in sys.modules,
        }))
        """,
        tmp_path,
    )
    result = json.loads(out)
    assert {"fedbuff", "median", "broken", "halfdone"} <= set(result["names"])
    assert result["ready"] is True
    assert result["p"] == [2.0, 10.0]
    assert result["b"] == [1.0]
    assert result["provenance"] == [
        "edgefl.aggregators",
        "median",
        "edgefl_example_median:CoordinateMedian",
        "edgefl-example-median",
        "0.1.0",
    ]
    assert result["broken_imported"] is False  # only the named plugin was imported


def test_broken_plugins_fail_clearly(plugin_env: Path, tmp_path: Path) -> None:
    out = run_python(
        plugin_env,
        """
        import json
        from edgefl.api import AggregatorSettings
        from plugins import PluginError, Registry

        registry = Registry.from_entry_points()
        settings = AggregatorSettings(3, 1.0, False, None, 5)
        errors = []
        for name in ("broken", "halfdone", "mediam"):
            try:
                registry.aggregator(name, settings)
            except PluginError as exc:
                errors.append([str(exc), exc.group, exc.name, exc.dist, exc.version])
        print(json.dumps(errors))
        """,
        tmp_path,
    )
    broken, halfdone, missing = json.loads(out)
    assert broken[0].startswith(
        "edgefl.aggregators plugin 'broken' (from edgefl-broken-plugin 0.0.1): cannot import "
        "edgefl_broken_plugin.absent:Aggregator: ModuleNotFoundError: "
    )
    assert broken[1:] == ["edgefl.aggregators", "broken", "edgefl-broken-plugin", "0.0.1"]
    assert halfdone[0].startswith(
        "edgefl.aggregators plugin 'halfdone' (from edgefl-broken-plugin 0.0.1): "
        "edgefl_broken_plugin:HalfDone does not satisfy edgefl.api.Aggregator: missing ready()"
    )
    assert "missing load_state_dict()" in halfdone[0]
    assert missing[0].startswith("edgefl.aggregators plugin 'mediam': not installed; installed")
    assert "median" in missing[0]
    assert missing[0].endswith("(did you mean 'median'?)")


def test_cli_lists_and_checks_installed_plugins(plugin_env: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(plugin_env), "-m", "edgefl", "plugins", "--check", "--group", "aggregators"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1  # two broken plugins
    rows = {line.split()[1]: line for line in done.stdout.splitlines()[1:]}
    assert rows["median"].split()[2:5] == [
        "edgefl-example-median",
        "0.1.0",
        "edgefl_example_median:CoordinateMedian",
    ]
    assert rows["median"].rstrip().endswith("ok")
    assert "cannot import edgefl_broken_plugin.absent:Aggregator" in rows["broken"]
    assert "missing ready()" in rows["halfdone"]
    assert rows["fedbuff"].rstrip().endswith("ok")
