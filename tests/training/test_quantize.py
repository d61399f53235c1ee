"""`dhrd quantize` writes an int8 export of a float export (issue 31): int8 weights with float32 scales, the
manifest says so, it loads (on the CPU only) to answers close to the float export's, and `dhrd serve`
refuses it where its gate has not passed unless told to serve it anyway."""
from __future__ import annotations

import asyncio
import json

import pytest
import torch
from safetensors.torch import load_file

from contract.cpu import cpu_kind
from contract.export_reader import ExportError, load_export
from contract.int8 import GATE_FILE, SCHEME, Int8Linear, gate_for, record_gate
from training.cli import main


@pytest.fixture(scope="module")
def int8_export(tiny_export, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "cb-int8"
    assert main(["quantize", str(tiny_export), "--out", str(out), "--calibration", "8",
                 "--data-dir", str(data_dir), "--verify-examples", "4"]) == 0
    return out


def test_the_manifest_says_int8_and_where_it_came_from(int8_export, tiny_export):
    q = json.loads((int8_export / "manifest.json").read_text())["quantization"]
    assert q["scheme"] == SCHEME and q["calibration"] == {"split": "train", "inputs": 8}
    assert q["int8_layers"] == 14 and q["keep_float"] == []  # 2 blocks x (q, k, v, o, gate, up, down)
    assert q["source"] == str(tiny_export) and len(q["source_manifest_sha256"]) == 64
    assert json.loads((int8_export / "verify.json").read_text())["max_prob_diff_vs_written_model"] <= 1e-4


def test_int8_weights_are_stored_int8_with_float32_scales(int8_export):
    state = load_file(str(int8_export / "model.safetensors"))
    int8 = {k for k, v in state.items() if v.dtype == torch.int8}
    assert len(int8) == 14 and all(k.endswith(".weight_t") for k in int8)
    assert all(state[k.replace("weight_t", "weight_scale")].dtype == torch.float32 for k in int8)
    assert not any(k.endswith("q_proj.weight") for k in state)  # no float copy rides along


def test_it_loads_as_int8_layers_and_answers_close_to_the_float_export(int8_export, tiny_export):
    ids = torch.tensor([[5, 9, 11, 4, 7, 30]])
    mask = torch.ones_like(ids)
    int8 = load_export(int8_export, dtype=torch.bfloat16)
    assert sum(isinstance(m, Int8Linear) for m in int8.model.modules()) == 14
    # a bf16 model keeps the int8 layers' scales in float32 (Int8Linear._apply)
    assert all(m.weight_scale.dtype == torch.float32 for m in int8.model.modules() if isinstance(m, Int8Linear))
    with torch.inference_mode():
        p_int8 = int8.model(ids, mask).softmax(-1)
        p_float = load_export(tiny_export, dtype=torch.float32).model(ids, mask).softmax(-1)
    assert 0 < float((p_int8 - p_float).abs().max()) < 0.1


def test_an_int8_export_is_refused_on_a_gpu_before_anything_is_built(int8_export):
    with pytest.raises(ExportError, match="CPU only"):
        load_export(int8_export, device="cuda")


def test_an_int8_export_is_not_quantized_again(int8_export, tmp_path, data_dir, capsys):
    assert main(["quantize", str(int8_export), "--out", str(tmp_path / "again"), "--data-dir", str(data_dir)]) == 2
    assert "already an int8 export" in capsys.readouterr().err


def test_a_layer_name_to_keep_in_float_must_exist(tiny_export, tmp_path, data_dir, capsys):
    assert main(["quantize", str(tiny_export), "--out", str(tmp_path / "q"), "--calibration", "4",
                 "--data-dir", str(data_dir), "--keep-float", "layers.0.mlp.nope"]) == 2
    assert "layers.0.mlp.nope" in capsys.readouterr().err


def test_kept_layers_stay_float(tiny_export, tmp_path, data_dir):
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_export), "--out", str(out), "--calibration", "4", "--data-dir", str(data_dir),
                 "--keep-float", "layers.1.mlp.down_proj,layers.0.self_attn.q_proj"]) == 0
    model = load_export(out, dtype=torch.float32).model
    assert isinstance(model.backbone.layers[1].mlp.down_proj, torch.nn.Linear)
    assert isinstance(model.backbone.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 12


def test_serve_refuses_an_int8_export_whose_gate_has_not_passed_here(int8_export, tmp_path):
    import shutil

    from service.cli import check_exports
    from service.settings import Settings

    export = tmp_path / "q"
    shutil.copytree(int8_export, export)
    with pytest.raises(ValueError, match="gate has not run on this CPU .*--allow-ungated-int8"):
        check_exports(Settings(models={"cb": export}))
    record_gate(export, cpu_kind(), {"passed": False, "failed": ["agreement"]})
    with pytest.raises(ValueError, match=r"gate failed \(agreement\)"):
        check_exports(Settings(models={"cb": export}))
    check_exports(Settings(models={"cb": export}, allow_ungated_int8=True))  # told to: it serves
    record_gate(export, "some-other-cpu-avx2", {"passed": True, "failed": []})
    record_gate(export, cpu_kind(), {"passed": True, "failed": []})
    check_exports(Settings(models={"cb": export}))  # passed here: it serves
    assert set(json.loads((export / GATE_FILE).read_text())) == {cpu_kind(), "some-other-cpu-avx2"}
    assert gate_for(export, "never-seen") is None


def test_models_endpoint_names_the_quantization(int8_export):
    from service.settings import Settings

    from ..service.conftest import serving

    async def go():
        async with serving(Settings(models={"cb": int8_export}, dtype="float32", allow_ungated_int8=True)) as client:
            return (await client.get("/v1/models")).json()

    (card,) = asyncio.run(go())["data"]
    assert card["quantization"]["scheme"] == SCHEME and card["quantization"]["int8_layers"] == 14


def test_a_float_exports_manifest_has_no_quantization_key(tiny_export):
    """So a float export written by this build still loads in a service built before int8 existed (those
    refuse unknown manifest keys)."""
    assert "quantization" not in json.loads((tiny_export / "manifest.json").read_text())


def test_a_bf16_export_quantizes_and_its_written_model_checks_out(tiny_export, data_dir, tmp_path):
    """The export's float tensors are stored in its own dtype: the written-and-reloaded check compares the
    reloaded model with the model as written (bf16-rounded), not with the float32 one it came from
    (exports/cb, a bf16 export, failed that check by 0.11 before)."""
    bf16 = tmp_path / "cb-bf16"
    assert main(["export", str(tiny_export.parent / "run"), "--out", str(bf16), "--dtype", "bfloat16",
                 "--verify-examples", "4"]) == 0
    out = tmp_path / "cb-bf16-int8"
    assert main(["quantize", str(bf16), "--out", str(out), "--calibration", "8", "--data-dir", str(data_dir),
                 "--verify-examples", "4"]) == 0
    assert json.loads((out / "verify.json").read_text())["max_prob_diff_vs_written_model"] <= 1e-4
    state = load_file(str(out / "model.safetensors"))
    assert any(v.dtype == torch.bfloat16 for v in state.values())  # its float parts stay bf16



def test_an_export_that_fails_its_check_never_takes_the_place_of_the_good_one(int8_export, tiny_export, data_dir,
                                                                              tmp_path, monkeypatch):
    import shutil

    import training.quantize as quantize

    out = tmp_path / "cb-int8"
    shutil.copytree(int8_export, out)
    before = (out / "model.safetensors").read_bytes()

    def failing_check(*args, **kwargs):
        raise RuntimeError("int8 export check failed")

    monkeypatch.setattr(quantize, "verify_int8_export", failing_check)
    with pytest.raises(RuntimeError, match="check failed"):
        quantize.quantize_export(tiny_export, out, calibration=8, alpha=0.8, data_dir=data_dir, verify_examples=4)
    assert (out / "model.safetensors").read_bytes() == before  # the older, checked export is untouched
