"""Checkpoint I/O: parity with transformers' Chameleon, both q/k-norm layouts, save/load, bad folders, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from lumina_mgpt.errors import CheckpointError
from lumina_mgpt.model import ModelConfig, Transformer, load_model, save_model
from model_fixtures import hf_chameleon, hf_logits, rewrite_qk_norm_rows, share_norm_rows, tiny_model

pytest.importorskip("transformers")


def assert_logits_match(ours: torch.Tensor, reference: torch.Tensor) -> None:
    scale = reference.abs().max().item()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("swin_norm", [False, True])
@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_transformers_folder_loads_and_matches(tmp_path, swin_norm, num_kv_heads):
    reference = hf_chameleon(tmp_path, swin_norm=swin_norm, num_kv_heads=num_kv_heads)
    model = load_model(tmp_path)
    assert model.config.swin_norm is swin_norm
    assert model.config.qk_norm_rows == 4 and model.config.k_norm_rows == num_kv_heads
    input_ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        assert_logits_match(model(input_ids), hf_logits(reference, input_ids))


@pytest.mark.parametrize("rows", [1, 2])
def test_official_rank_shared_norm_layout_matches_expanded_norms(tmp_path, rows):
    reference = hf_chameleon(tmp_path, swin_norm=False, num_kv_heads=2)
    rewrite_qk_norm_rows(tmp_path, rows)
    share_norm_rows(reference, rows)
    model = load_model(tmp_path)
    assert model.model.layers[0].self_attn.q_norm.weight.shape == (rows, 16)
    assert model.config.qk_norm_rows == rows
    input_ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        assert_logits_match(model(input_ids), hf_logits(reference, input_ids))


def test_saved_folder_loads_in_transformers(tmp_path):
    from transformers import ChameleonForConditionalGeneration

    model = tiny_model()
    model.config.hf_extras["vocabulary_map"] = {"<image>": 3}
    save_model(model, tmp_path)
    reference = ChameleonForConditionalGeneration.from_pretrained(tmp_path).eval()
    input_ids = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        assert_logits_match(model(input_ids), hf_logits(reference, input_ids))


@pytest.mark.parametrize("max_shard_bytes", [5 * 1024**3, 40_000])
def test_save_then_load_is_bit_exact(tmp_path, max_shard_bytes):
    model = tiny_model(swin_norm=True, dropout=0.05)
    save_model(model, tmp_path, max_shard_bytes=max_shard_bytes)
    sharded = max_shard_bytes < 5 * 1024**3
    assert (tmp_path / "model.safetensors.index.json").exists() is sharded
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    input_ids = torch.randint(0, 512, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids), model(input_ids))


def test_resave_with_fewer_shards_removes_stale_files(tmp_path):
    model = tiny_model()
    save_model(model, tmp_path, max_shard_bytes=40_000)
    save_model(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(load_model(tmp_path).lm_head.weight, model.lm_head.weight)


def test_load_converts_dtype_and_ignores_vqmodel(tmp_path):
    model = tiny_model()
    save_model(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.vqmodel.quantize.embedding.weight"] = torch.zeros(16, 4)
    save_file(tensors, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))


def test_missing_shard_is_reported(tmp_path):
    save_model(tiny_model(), tmp_path, max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    lost = index["weight_map"]["model.norm.weight"]
    (tmp_path / lost).unlink()
    with pytest.raises(CheckpointError, match=rf"{lost}.*missing.*model\.norm\.weight"):
        load_model(tmp_path)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    save_model(tiny_model(), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(100, 64)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\[100, 64\].*\[176, 64\]"):
        load_model(tmp_path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    save_model(tiny_model(), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.norm.weight"]
    tensors["model.extra.weight"] = torch.zeros(3)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*model\.extra\.weight"):
        load_model(tmp_path)


def test_unknown_rope_scaling_is_rejected(tmp_path):
    save_model(tiny_model(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_scaling"] = {"type": "dynamic", "factor": 2.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="rope_scaling.*dynamic"):
        load_model(tmp_path)


def test_folder_without_weights_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(ModelConfig.preset("tiny").to_hf_config()))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path)


_LOAD_AND_TOUCH = textwrap.dedent(
    """
    import sys
    import torch
    from lumina_mgpt.model import load_model

    def peak_rss_bytes():  # VmHWM restarts at exec, unlike ru_maxrss which keeps the forking parent's peak
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    baseline = peak_rss_bytes()
    model = load_model(sys.argv[1])
    for p in model.parameters():
        p.detach().view(-1)[:: 4096 // p.element_size()].float().sum()  # fault in every page
    print(peak_rss_bytes() - baseline)
    """
)


@pytest.mark.slow  # writes and maps 1.2 GB: ~20-30 s on 2 busy cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_loading_one_gigabyte_costs_about_one_copy(tmp_path):
    config = ModelConfig(
        vocab_size=65536, hidden_size=4096, intermediate_size=256, num_layers=1, num_heads=32, num_kv_heads=32
    )
    with torch.device("meta"):
        model = Transformer(config)
    state = {key: torch.zeros(t.shape, dtype=torch.bfloat16) for key, t in model.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_config()))
    file_bytes = (tmp_path / "model.safetensors").stat().st_size
    del state
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_TOUCH, str(tmp_path)], capture_output=True, text=True, check=True
    )
    peak_bytes = int(result.stdout.strip().splitlines()[-1])
    assert file_bytes > 1.1e9
    # The lower bound shows that the child really faulted the weights in.
    assert 0.9 * file_bytes < peak_bytes < 1.3 * file_bytes, (peak_bytes, file_bytes)
