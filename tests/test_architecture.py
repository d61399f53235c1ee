"""Dependencies point one way: `training/` and `service/` import `contract/`, never each other, and
`contract/` imports neither. `dhrd serve` runs without the training side or its extras installed."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "training", "service", "dhrd", "loadtest")

# package -> the first-party packages it may import (itself always allowed).
ALLOWED = {
    "contract": set(),
    "training": {"contract"},
    "service": {"contract"},
    "dhrd": set(),  # dispatches by module *name* (importlib), so it imports no side at all
    # A measuring tool over the service: reading a task's splits and its metrics is the contract's
    # (issue 23, item 15: a copy of split reading in the locustfile broke every FLAN task).
    "loadtest": {"contract", "service"},
}


def imported_packages(path: Path) -> set[str]:
    """First-party top-level packages a module imports anywhere (module level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_it_may(package):
    offences = []
    for path in sorted((REPO / package).rglob("*.py")):
        bad = imported_packages(path) - ALLOWED[package] - {package}
        offences += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(bad)]
    assert not offences, "dependency direction broken:\n" + "\n".join(offences)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from training.data import load_examples\n    import service.http.app\n")
    assert imported_packages(module) == {"training", "service"}



# Inside service/: the HTTP edge, the engine (queues, batches, the engine process), the device (the only code
# that runs torch). Imports go http -> engine -> device, never back and never around the engine; the
# modules at the top of service/ are either shared below every room (settings, errors, metrics, ...) or the
# entry points that assemble the rooms (cli, supervisor).
ROOMS = ("http", "engine", "device")
ENTRY_POINTS = {"service.cli", "service.supervisor"}
MAY_IMPORT = {"http": {"http", "engine", "shared"}, "engine": {"engine", "device", "shared"},
              "device": {"device", "shared"}, "shared": {"shared"}}


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "shared"


def service_imports(path: Path) -> set[str]:
    """service.* modules a module imports, relative imports resolved, leaving out imports under
    `if TYPE_CHECKING:` (type hints cross rooms; code does not)."""
    tree = ast.parse(path.read_text(), str(path))
    hints = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
             for child in node.body for n in ast.walk(child)}
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "service"}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module.split(".")[0] != "service":
                continue
            # `from .m import x`: module m.x where x is a module or package (`from . import graphs`,
            # `from service import http`), else module m.
            found |= {f"{module}.{a.name}" if is_module(f"{module}.{a.name}") else module for a in node.names}
    return found


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def service_modules() -> dict[str, Path]:
    return {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted((REPO / "service").rglob("*.py"))}


def test_inside_service_imports_go_from_http_to_engine_to_device_never_back():
    offences = []
    for module, path in service_modules().items():
        if module in ENTRY_POINTS:
            continue
        for imported in sorted(service_imports(path)):
            if room_of(imported) not in MAY_IMPORT[room_of(module)]:
                offences.append(f"{module} ({room_of(module)}) imports {imported} ({room_of(imported)})")
    assert not offences, "rooms out of order:\n" + "\n".join(offences)


def test_only_the_device_room_imports_torch():
    offenders = [m for m, p in service_modules().items() if room_of(m) != "device" and "torch" in imported_names(p)]
    assert not offenders, offenders


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_room_checker_resolves_relative_imports_and_skips_type_hints(tmp_path, monkeypatch):
    for module in ("device/m", "device/graphs", "engine/core", "http/app", "http/state", "errors"):
        (tmp_path / "service" / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "service" / module).with_suffix(".py").touch()
    (tmp_path / "service" / "device" / "m.py").write_text(
        "from typing import TYPE_CHECKING\nfrom ..engine.core import X\nfrom . import graphs\n"
        "from .. import errors\nif TYPE_CHECKING:\n    from ..http.app import Y\n"
        "def f():\n    from service.http import state\n    from service import http\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = service_imports(tmp_path / "service" / "device" / "m.py")
    assert found == {"service.engine.core", "service.device.graphs", "service.errors", "service.http.state",
                     "service.http"}
    assert [room_of(m) for m in sorted(found)] == ["device", "engine", "shared", "http", "http"]

TRAINING_ONLY = {"peft", "gguf", "accelerate"}


def serving_only_path(root: Path) -> Path:
    """A site directory as the serving image has it: every installed package but the training extras,
    and of this repository only contract/, service/ and dhrd/."""
    site = root / "site"
    site.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        distribution = entry.name.split("-")[0].split(".")[0].lower()
        if distribution in TRAINING_ONLY or entry.suffix == ".pth" or entry.name.startswith("__editable__"):
            continue
        (site / entry.name).symlink_to(entry)
    for package in ("contract", "service", "dhrd"):
        (site / package).symlink_to(REPO / package)
    return site


def test_serving_runs_without_the_training_side_or_its_extras(tiny_export, tmp_path):
    """With neither `training/` nor peft, gguf and accelerate importable, `dhrd serve --help` works
    and the app loads a real export and classifies through HTTP."""
    script = textwrap.dedent(f"""
        import asyncio, contextlib, io, json, sys
        for name in ("training", "peft", "gguf", "accelerate"):
            try:
                __import__(name)
            except ImportError:
                continue
            raise SystemExit(f"{{name}} is importable: the check would prove nothing")
        from dhrd.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                main(["serve", "--help"])
            except SystemExit as exc:
                assert exc.code == 0, exc.code
        assert "--max-batch-size" in out.getvalue()

        import httpx
        from service.http.app import create_app
        from service.settings import Settings

        async def go():
            app = create_app(Settings(models={{"cb": {str(tiny_export)!r}}}))
            async with app.router.lifespan_context(app):
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                    for _ in range(400):
                        if (await c.get("/ready")).status_code == 200:
                            break
                        await asyncio.sleep(0.05)
                    r = await c.post("/classify", json={{"model": "cb", "input": {{"premise": "a", "hypothesis": "b"}}}})
                    assert r.status_code == 200, r.text
                    print(json.dumps(r.json()["data"][0]["label"]))
        asyncio.run(go())
    """)
    env = {**os.environ, "PYTHONPATH": str(serving_only_path(tmp_path))}
    proc = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) in {"entailment", "contradiction", "neutral"}


def test_the_serving_image_ships_no_training_code():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    copied = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert "training" not in " ".join(copied), copied
    assert {"contract", "service"} <= {c.rstrip("/").split("/")[-1] for c in copied}
