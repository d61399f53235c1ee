"""The error vocabulary knows no HTTP; the edge maps every kind to a status in one place."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service import errors
from service.http.error_mapping import STATUS, http_status

SERVICE = Path(__file__).resolve().parents[2] / "service"
# What the engine process runs: every module of the engine and device rooms (the room direction itself is
# tests/test_architecture.py's), and the shared modules at the top of service/ but the entry points.
ENGINE_MODULES = sorted(
    ".".join(p.relative_to(SERVICE.parent).with_suffix("").parts)
    for p in [*(SERVICE / "engine").glob("*.py"), *(SERVICE / "device").glob("*.py"), *SERVICE.glob("*.py")]
    if p.stem not in ("cli", "supervisor", "__init__"))


def test_the_engine_process_modules_do_not_import_the_web_framework():
    assert "service.engine.process" in ENGINE_MODULES and "service.device.runner" in ENGINE_MODULES
    code = (f"import sys\nfor m in {ENGINE_MODULES!r}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_every_error_kind_has_one_http_status_at_the_edge():
    kinds = {cls.kind for cls in [errors.ServiceError, *errors.ServiceError.__subclasses__()]}
    assert kinds <= set(STATUS), kinds - set(STATUS)
    assert not any(hasattr(cls, "status") for cls in errors.ServiceError.__subclasses__())
    assert http_status(errors.Overloaded("full")) == 429 and http_status(errors.EngineDead("gone")) == 503


def test_both_paths_share_one_readiness_check_and_model_lookup(tmp_path):
    """In-process (`AppState.model`) and the engine process (`EngineServer`) refuse alike."""
    import pytest

    from service.engine.process import EngineServer
    from service.metrics import Metrics
    from service.settings import Settings
    from service.http.state import AppState

    state = AppState(Settings(models={}), Metrics())
    engine = EngineServer(Settings(models={}), str(tmp_path / "engine.sock"))
    refusals = []
    for lookup in (state.model, lambda name: engine._queue(name, "classify")):
        with pytest.raises(errors.NotReady) as not_ready:
            lookup("cb")
        refusals.append(not_ready.value.message)
    state.ready = engine.ready = True
    for lookup in (state.model, lambda name: engine._queue(name, "classify")):
        with pytest.raises(errors.UnknownModel) as unknown:
            lookup("nope")
        refusals.append(unknown.value.message)
    assert refusals[0] == refusals[1] and refusals[2] == refusals[3]
