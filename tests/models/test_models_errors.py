"""Bad checkpoints and bad configs fail with messages that name what is wrong."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from r1jax.config import ConfigError, from_dict
from r1jax.models import ModelConfig, init_params, load_pretrained, save_pretrained


@pytest.fixture()
def checkpoint(tmp_path, make_config):
    config = make_config(intermediate_size=64)
    save_pretrained(init_params(config, jax.random.key(0)), config, tmp_path / "ck")
    return tmp_path / "ck"


def _edit_config(ck, **changes):
    path = ck / "config.json"
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def test_missing_files_are_named(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="nowhere: checkpoint directory does not exist"):
        load_pretrained(tmp_path / "nowhere")
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_pretrained(checkpoint)
    (checkpoint / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_pretrained(checkpoint)


def test_missing_shard_is_named(checkpoint):
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002.safetensors: shard listed"):
        load_pretrained(checkpoint)


def test_unsupported_architecture_is_named_with_the_supported_list(checkpoint):
    _edit_config(checkpoint, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ConfigError) as e:
        load_pretrained(checkpoint)
    assert "unsupported architecture GPT2LMHeadModel" in str(e.value)
    assert "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM" in str(e.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}, rope_parameters=None), "rope_type 'yarn' is not supported"),
        (dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
        (dict(mlp_bias=True), "mlp_bias=true is not supported"),
        (dict(num_key_value_heads=3), "num_heads: 4 is not divisible by num_kv_heads=3"),
    ],
)
def test_unsupported_features_are_named(checkpoint, change, message):
    _edit_config(checkpoint, **change)
    with pytest.raises(ConfigError, match=message):
        load_pretrained(checkpoint)


def test_shape_mismatch_names_tensor_expected_and_found(checkpoint):
    _edit_config(checkpoint, intermediate_size=48)
    with pytest.raises(ValueError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(64, 32\), expected \(48, 32\)"):
        load_pretrained(checkpoint)


def test_missing_and_unused_tensors_are_named(checkpoint):
    path = checkpoint / "model.safetensors"
    tensors = load_file(path)
    original = dict(tensors)
    del tensors["model.layers.1.input_layernorm.weight"]
    save_file(tensors, path)
    with pytest.raises(ValueError, match="'model.layers.1.input_layernorm.weight' is missing"):
        load_pretrained(checkpoint)
    save_file({**original, "model.layers.0.mlp.up_proj.bias": np.zeros(64, np.float32)}, path)
    with pytest.raises(ValueError, match=r"not used by a LlamaForCausalLM.*model.layers.0.mlp.up_proj.bias"):
        load_pretrained(checkpoint)


def test_save_rejects_params_that_do_not_match_the_config(tmp_path, make_config):
    config = make_config()
    params = init_params(config, jax.random.key(0))
    params["layers"]["up_proj"] = params["layers"]["up_proj"][:, :, :8]
    with pytest.raises(ValueError, match=r"'layers/up_proj' has shape \(2, 32, 8\), expected \(2, 32, 64\)"):
        save_pretrained(params, config, tmp_path / "x")
    del params["layers"]["up_proj"]
    with pytest.raises(ValueError, match="'layers/up_proj' is missing"):
        save_pretrained(params, config, tmp_path / "x")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_heads=6, num_kv_heads=4), "num_heads: 6 is not divisible by num_kv_heads=4"),
        (dict(hidden_size=0), "hidden_size: 0 is out of range"),
        (dict(hidden_size=30, num_heads=4, num_kv_heads=2), "hidden_size: 30 is not divisible by num_heads=4"),
        (dict(head_dim=7), "head_dim: 7 must be even"),
        (dict(architecture="gpt2"), "architecture: 'gpt2' is not allowed"),
        (dict(param_dtype="float16"), "param_dtype: 'float16' is not allowed"),
        (dict(architecture="qwen2", attention_bias=False), "attention_bias: qwen2 always has q/k/v biases"),
        (dict(architecture="llama", qk_norm=True), "qk_norm: only qwen3"),
        (dict(rope_theta=-1.0), "rope_theta: -1.0 is out of range"),
        (dict(rope_scaling={"low_freq_factor": 4.0, "high_freq_factor": 1.0}), "rope_scaling.high_freq_factor"),
        (dict(rope_scaling={"rope_type": "yarn"}), "rope_scaling.rope_type: 'yarn' is not allowed"),
    ],
)
def test_bad_config_fields_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


def test_config_from_dict_names_the_key():
    with pytest.raises(ConfigError, match="num_layers: -1 is out of range"):
        from_dict(ModelConfig, {"num_layers": -1})
    with pytest.raises(ConfigError, match="did you mean 'num_layers'"):
        from_dict(ModelConfig, {"num_layer": 2})
    cfg = from_dict(ModelConfig, {"architecture": "qwen3", "rope_scaling": {"factor": 2.0}})
    assert cfg.use_qk_norm and cfg.rope_scaling.factor == 2.0 and hash(cfg) == hash(cfg)
