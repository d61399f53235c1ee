"""Settings come from DHRD_* variables and `dhrd serve` flags; flags win."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.cli import build_parser, check_exports, main, settings_from_args
from service.settings import Settings


def test_environment_variables_with_one_prefix(monkeypatch):
    monkeypatch.setenv("DHRD_MODELS", "cb=exports/cb,rte=exports/rte")
    monkeypatch.setenv("DHRD_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("DHRD_COT", "true")
    s = Settings()
    assert s.models == {"cb": Path("exports/cb"), "rte": Path("exports/rte")}
    assert s.max_batch_size == 7 and s.cot is True


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("DHRD_PORT", "9000")
    monkeypatch.setenv("DHRD_MAX_WAIT_MS", "3")
    args = build_parser().parse_args(["serve", "--model", "cb=exports/cb", "--port", "8123", "--no-verify-hashes"])
    s = settings_from_args(args)
    assert s.port == 8123 and s.max_wait_ms == 3 and s.verify_hashes is False and "cb" in s.models


@pytest.mark.parametrize("env,value", [("DHRD_MODELS", "cb"), ("DHRD_MAX_BATCH_SIZE", "0"), ("DHRD_DTYPE", "fp8")])
def test_bad_values_are_refused(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError):
        Settings()


def test_serve_refuses_a_missing_export(tmp_path, capsys):
    assert main(["serve", "--model", f"cb={tmp_path}"]) == 2
    assert "is not a DHRD export" in capsys.readouterr().err


def test_a_request_size_that_could_never_be_queued_is_a_settings_error():
    with pytest.raises(ValidationError, match="max_inputs_per_request .* is over max_queue"):
        Settings(max_queue=16, max_inputs_per_request=17)


def test_help_shows_real_defaults_not_pydantic_internals(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    assert "PydanticUndefined" not in out and "default []" in out


def test_skipping_hash_checks_is_logged_as_a_warning(tiny_export, caplog):
    with caplog.at_level("WARNING", logger="dhrd.service"):
        check_exports(Settings(models={"cb": tiny_export}, verify_hashes=False))
    assert any("NOT checked" in r.getMessage() for r in caplog.records)


def test_hashes_checked_before_start_up_are_not_checked_again(tiny_export, monkeypatch):
    import asyncio

    import contract.export_reader as reader

    from .conftest import serving

    calls = []
    real = reader.check_files
    monkeypatch.setattr(reader, "check_files", lambda *a: calls.append(a) or real(*a))
    settings = Settings(models={"cb": tiny_export}, dtype="float32")
    check_exports(settings)

    async def go():
        async with serving(settings, hashes_checked=True) as client:
            return (await client.get("/ready")).status_code

    assert asyncio.run(go()) == 200 and len(calls) == 1


def test_front_end_processes_default_to_one_process_on_cpu_and_several_on_a_gpu():
    from service.settings import Settings

    assert Settings().front_ends == 0
    assert Settings(device="cuda").front_ends >= 1
    assert Settings(device="cuda", workers=0).front_ends == 0
    assert Settings(workers=3).front_ends == 3


# --- issue 23, item 11: configuration traps are refused, naming the flag --------------------------------
@pytest.mark.parametrize("extra,flag", [
    (["--api-key", ""], "--api-key"),  # used to disable auth silently
    (["--api-key", "   "], "--api-key"),
    (["--api-key", "clé-secrète"], "--api-key"),  # a UTF-8 client's bytes never matched it
    (["--api-key", "two words"], "--api-key"),
    (["--model", "cb=exports/other"], "--model"),  # used to serve the last one silently
])
def test_configuration_traps_are_refused_naming_the_flag(tmp_path, capsys, extra, flag):
    assert main(["serve", "--model", f"cb={tmp_path}", *extra]) == 2
    err = capsys.readouterr().err
    assert flag in err, err
    assert "is not a DHRD export" not in err  # refused as a setting, before any export is looked at
    if flag == "--api-key" and extra[1].strip():
        assert extra[1] not in err  # a key is not echoed into logs


@pytest.mark.parametrize("env,value", [("DHRD_API_KEY", ""), ("DHRD_MODELS", '{"cb": "a", "cb": "b"}'),
                                       ("DHRD_MODELS", "cb=a,cb=b")])
def test_configuration_traps_are_refused_from_the_environment_too(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError, match="--api-key|--model"):
        Settings()


def test_dtype_auto_is_bfloat16_only_where_the_device_runs_it_natively(monkeypatch):
    """An AVX2-only CPU emulates bf16 matmuls ~100x slower than fp32: "auto" (the default) serves fp32 there."""
    import torch

    from contract import model

    assert Settings().dtype == "auto"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert model.resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert model.resolve_dtype("auto", "cpu") == "bfloat16"
    assert model.resolve_dtype("float32", "cpu") == "float32" and model.resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be"):
        model.resolve_dtype("fp8", "cpu")


def test_the_access_log_and_the_fast_path_can_be_turned_off_and_uvicorn_is_told():
    from service.http.connections import uvicorn_options

    on = settings_from_args(build_parser().parse_args(["serve", "--model", "cb=exports/cb"]))
    off = settings_from_args(build_parser().parse_args(["serve", "--model", "cb=exports/cb", "--no-access-log",
                                                        "--no-fast-path"]))
    assert (on.access_log, on.fast_path) == (True, True) and (off.access_log, off.fast_path) == (False, False)
    assert uvicorn_options(on)["access_log"] is True and uvicorn_options(off)["access_log"] is False
