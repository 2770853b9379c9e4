"""dinolab installs as a package, not only as this checkout: sdist, wheel, a fresh venv.

The sdist and the wheel are built as a release would build them (``python -m build``: the
sdist first, then the wheel from the unpacked sdist) from a copy of the checkout, so nothing
is written into the working tree. The wheel is installed with ``--no-deps`` into a new venv
that sees this interpreter's packages (torch, ...) through a ``.pth`` line, which keeps the
test offline and takes seconds instead of a 5 GB install. Marked ``install``: it runs in the
normal suite; ``-m "not install"`` skips it.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install


def _source_version() -> str:
    """``__version__`` as written in dinolab/__init__.py (read as text, not imported)."""
    text = (ROOT / "dinolab" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert m, "dinolab/__init__.py has no line __version__ = \"...\""
    return m.group(1)


def _run(cmd: list[str | Path], cwd: Path, timeout: float = 180) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
        f"{proc.stderr[-3000:]}"
    )
    return proc.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the sdist and the wheel from a copy of the checkout; {'sdist': path, 'wheel': path}."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "dinolab", src / "dinolab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    # --no-isolation: the build backend (setuptools>=77, the dev extra) comes from this
    # interpreter instead of a download; build still checks that it satisfies build-system.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", src], tmp)
    sdists = list((tmp / "dist").glob("dinolab-*.tar.gz"))
    wheels = list((tmp / "dist").glob("dinolab-*-py3-none-any.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted((tmp / "dist").iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0]}


@pytest.fixture(scope="module")
def fresh_venv(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the wheel installed (no deps); this interpreter's packages on its path."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env_dir
    ).strip()
    # Appended after the venv's own site-packages: the wheel's dinolab comes first, and .pth
    # files of this interpreter (the editable dinolab's among them) are not processed.
    Path(purelib, "_outer_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
         "--no-index", dists["wheel"]],
        env_dir,
    )
    return env_dir


def test_wheel_metadata_version_license_and_typing(dists: dict[str, Path]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(whl.read(f"{dist_info}/METADATA"))
        license_text = whl.read(f"{dist_info}/licenses/LICENSE").decode()
    assert meta["Version"] == _source_version(), (meta["Version"], _source_version())
    assert dists["wheel"].name.startswith(f"dinolab-{_source_version()}-")
    assert meta["License-Expression"] == project["license"] == "MIT"
    assert license_text == (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License"), "LICENSE is not the MIT text pyproject names"
    assert "dinolab/py.typed" in names, "py.typed is not shipped: type checkers ignore dinolab"
    assert {"dinolab/assets/course_teacher.pth", "dinolab/assets/course_teacher.json"} <= names
    requires = meta.get_all("Requires-Dist")
    assert "torch>=2.14.1" in requires and not any(r.startswith("torch==") for r in requires)


def test_sdist_has_what_a_rebuild_needs(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    expected = {"pyproject.toml", "README.md", "LICENSE", "PKG-INFO", "dinolab/__init__.py",
                "dinolab/py.typed", "dinolab/cli.py", "dinolab/assets/course_teacher.pth"}
    assert expected <= names, f"missing from the sdist: {sorted(expected - names)}"


def test_installed_wheel_imports_and_runs_the_cli(fresh_venv: Path, tmp_path: Path) -> None:
    bindir = fresh_venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    out = _run(
        [python, "-c",
         "import importlib.metadata as m, pathlib, dinolab; "
         "p = pathlib.Path(dinolab.__file__).parent; "
         "print(p); print(dinolab.__version__); print(m.version('dinolab')); "
         "print((p / 'py.typed').exists())"],
        tmp_path,  # not the checkout: its dinolab/ folder would shadow the installed one
    ).split("\n")
    installed_at, version, dist_version, typed = out[:4]
    assert Path(installed_at).is_relative_to(fresh_venv), f"imported {installed_at}, not the wheel"
    assert version == dist_version == _source_version()
    assert typed == "True"
    help_text = _run([bindir / "dinolab", "--help"], tmp_path)
    assert "usage: dinolab" in help_text and "train" in help_text, help_text[:500]
