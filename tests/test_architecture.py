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
    module.write_text("def f():\n    from training.data import load_examples\n    import service.app\n")
    assert imported_packages(module) == {"training", "service"}


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
        from service.app import create_app
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
