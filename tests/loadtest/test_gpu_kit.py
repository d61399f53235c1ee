"""The GPU kit's wheels: derived from pyproject.toml, enough for the serve path beside the device's own
torch and transformers, and a failed download fails the script (the device time it would waste is scarce)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from loadtest import REPO
from loadtest.gpu import deps as gpu_deps

# What runs on the device: the service, the dispatcher, and the kit with the modules it imports or spawns.
SERVE_PATH = [REPO / "service", REPO / "contract", REPO / "dhrd", *(REPO / "loadtest" / f for f in (
    "__init__.py", "gpu", "servers.py", "provenance.py", "rawclient.py", "null_server.py"))]
FIRST_PARTY = {"service", "contract", "dhrd", "loadtest", "training"}  # training: `dhrd train`, not the serve path
IMPORTS = ["service.http.app", "service.engine.process", "service.cli", "service.supervisor", "dhrd.cli", "loadtest.gpu.cli"]


def imported_modules(paths: list[Path]) -> set[str]:
    """Top-level names of every import (module level and inside functions) under `paths`."""
    names: set[str] = set()
    files = [f for p in paths for f in (sorted(p.rglob("*.py")) if p.is_dir() else [p])]
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - FIRST_PARTY - {"__future__"}


def closure(requirements: list[str]) -> set[str]:
    """Distribution names `requirements` install, their own requirements included (from installed metadata)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        extras = req.extras
        for r in map(Requirement, requires):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append(r)
    return seen


def test_the_wheel_list_is_pyprojects_serve_and_client_extras_less_what_the_device_has(tmp_path):
    reqs = gpu_deps.requirements()
    assert "fastapi-swagger" in {gpu_deps.name_of(r) for r in reqs}  # the one the hand list missed
    assert not {gpu_deps.name_of(r) for r in reqs} & gpu_deps.ON_DEVICE
    edited = tmp_path / "pyproject.toml"  # a dependency added to the extra travels without other edits
    edited.write_text(gpu_deps.PYPROJECT.read_text().replace('serve = ["', 'serve = ["newdep>=1", "', 1))
    assert "newdep>=1" in gpu_deps.requirements(edited)


def test_the_wheels_and_the_device_image_cover_every_import_of_the_serve_path():
    modules = imported_modules(SERVE_PATH)
    dists = metadata.packages_distributions()
    unknown = {m for m in modules if m not in dists}
    assert not unknown - {"uvloop"}, f"imported but not installed here: {unknown}"
    needed = {dists[m][0].lower().replace("_", "-") for m in modules if m in dists}
    covered = closure(gpu_deps.requirements()) | closure(sorted(gpu_deps.ON_DEVICE))
    assert needed <= covered, f"imported by the serve path, carried by nobody: {needed - covered}"


def device_site(target: Path) -> Path:
    """The device image stood in for by links to this venv's torch and transformers (and what they need)."""
    site = Path(metadata.distribution("torch").locate_file(""))
    target.mkdir()
    for name in closure(sorted(gpu_deps.ON_DEVICE)):
        for entry in {Path(str(f)).parts[0] for f in metadata.distribution(name).files or []}:
            if entry not in ("..", "__pycache__") and (site / entry).exists() and not (target / entry).exists():
                (target / entry).symlink_to(site / entry)
    return target


def wheels(dest: Path, version: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_PYTHON_VERSION": version, "GPU_WHEELS_DIR": str(dest)}
    return subprocess.run(["bash", str(REPO / "loadtest" / "gpu" / "wheels.sh")], capture_output=True, text=True,
                          env=env, timeout=600)


def pypi_reachable() -> bool:
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", "/tmp/dhrd-pypi-probe",
                            "fastapi-swagger"], capture_output=True, timeout=120)
    return probe.returncode == 0


@pytest.mark.slow
def test_the_service_and_the_kit_import_with_only_the_device_image_and_the_carried_wheels(tmp_path):
    if not pypi_reachable():
        pytest.skip("PyPI is unreachable: the kit's wheels cannot be downloaded here")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"  # this interpreter stands in for the device's
    made = wheels(tmp_path / "wheels", version)
    assert made.returncode == 0, made.stderr[-2000:]
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links",
                                str(tmp_path / "wheels"), "--target", str(tmp_path / "site"), "-r",
                                str(tmp_path / "wheels" / "requirements.txt")], capture_output=True, text=True,
                               timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    path = os.pathsep.join([str(REPO), str(tmp_path / "site"), str(device_site(tmp_path / "device"))])
    code = f"import {', '.join(IMPORTS)}"
    # -S: no site-packages at all, so nothing of this venv's web stack can stand in for a missing wheel.
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": path, "PYTHONNOUSERSITE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_the_wheel_script_fails_when_no_wheel_can_be_had(tmp_path):
    if not pypi_reachable():
        pytest.skip("PyPI is unreachable: a failed download would prove nothing")
    made = wheels(tmp_path / "wheels", "2.0")  # no wheel of fastapi exists for Python 2.0
    assert made.returncode != 0 and not (tmp_path / "wheels" / "requirements.txt").exists()
    assert "ERROR" in made.stderr, made.stderr[-1000:]  # pip says why, and the script stops there
