"""Logit parity with Hugging Face `transformers` PyTorch models, and checkpoint round trips."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from r1jax.models import default_positions, load_pretrained, logits, save_pretrained

import torch  # the parity reference (test extra)
import transformers

jit_logits = jax.jit(logits, static_argnums=1)

COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # small, so that the 24-token test sequences straddle all three frequency bands
    "original_max_position_embeddings": 16,
}

CASES = {
    # GQA (4 query heads over 2 kv heads), q/k/v biases, tied embeddings, θ = 1e6
    "qwen2_gqa_bias_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)),
    # llama3 rope scaling, q/k/v/o biases, untied
    "llama3_rope_bias_untied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(num_key_value_heads=2, attention_bias=True, rope_theta=5e5, rope_scaling=LLAMA3_ROPE),
    ),
    # q/k RMSNorm, head_dim (16) != hidden/heads (8), multi-query attention, untied
    "qwen3_qknorm_mqa_untied": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=1, head_dim=16)),
    # plain multi-head attention, tied
    "llama_mha_tied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4, tie_word_embeddings=True)),
}


def _hf_model(case):
    cfg_cls, model_cls, extra = CASES[case]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**COMMON, **extra)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: perturb them so a mix-up shows
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _batch():
    """Two full rows and two left-padded rows (lengths 17 and 9) of 24 tokens."""
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, 96, (4, 24)).astype(np.int64)
    mask = np.ones((4, 24), bool)
    mask[2, :7] = False
    mask[3, :15] = False
    tokens[~mask] = 0
    positions = np.asarray(default_positions((4, 24), attention_mask=jnp.asarray(mask)))
    return tokens, mask, positions


def _hf_logits(model, tokens, mask, positions):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            position_ids=torch.tensor(positions.astype(np.int64)),
        )
    return out.logits.float().numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_logit_parity_and_round_trip(case, tmp_path):
    model = _hf_model(case)
    model.save_pretrained(tmp_path / "hf")
    params, config = load_pretrained(tmp_path / "hf")
    assert config.architecture == CASES[case][1].removesuffix("ForCausalLM").lower()
    assert config.param_dtype == "float32"

    tokens, mask, positions = _batch()
    ref = _hf_logits(model, tokens, mask, positions)
    ours = np.asarray(jit_logits(params, config, jnp.asarray(tokens, jnp.int32), attention_mask=jnp.asarray(mask)))
    assert np.abs(ref).max() > 0.1  # not a degenerate model
    err = np.abs(ours - ref)[mask].max()
    assert err <= 1e-4, f"{case}: max |logit diff| {err}"

    # r1jax -> disk -> transformers gives the same model.
    save_pretrained(params, config, tmp_path / "ours")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    assert type(reloaded).__name__ == CASES[case][1]
    np.testing.assert_allclose(_hf_logits(reloaded, tokens, mask, positions)[mask], ref[mask], atol=1e-6, rtol=0)
    # ... and r1jax reads back exactly what it wrote.
    params2, config2 = load_pretrained(tmp_path / "ours")
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_sharded_checkpoint_and_bfloat16(tmp_path):
    model = _hf_model("qwen2_gqa_bias_tied")
    model.save_pretrained(tmp_path / "hf")
    params, config = load_pretrained(tmp_path / "hf", param_dtype="bfloat16")
    assert config.param_dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))

    save_pretrained(params, config, tmp_path / "sharded", max_shard_bytes=8_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "sharded" / "model.safetensors").exists()
    assert json.loads((tmp_path / "sharded" / "config.json").read_text())["dtype"] == "bfloat16"

    params2, config2 = load_pretrained(tmp_path / "sharded")
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)

    # float32 weights written as bfloat16 read back as the rounded values
    params32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    save_pretrained(params32, dataclasses.replace(config, param_dtype="float32"), tmp_path / "cast", dtype="bfloat16")
    params3, config3 = load_pretrained(tmp_path / "cast")
    assert config3 == config
    jax.tree.map(np.testing.assert_array_equal, params3, params)

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", attn_implementation="eager")
    assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16
    emb = reloaded.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(emb, np.asarray(params["embed"]).astype(np.float32))
    q = reloaded.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()  # [H*Dh, D]
    ours_q = np.asarray(params["layers"]["q_proj"][1]).astype(ml_dtypes.bfloat16).astype(np.float32)  # [D, H, Dh]
    np.testing.assert_array_equal(q, ours_q.reshape(32, -1).T)


@pytest.mark.parametrize("case", ["qwen2_gqa_bias_tied", "qwen3_qknorm_mqa_untied"])
def test_gradient_parity(case, tmp_path):
    """The gradient of summed token log-probs w.r.t. every weight equals torch autograd on the HF
    model. Our gradients are written with save_pretrained, so they come back under HF names and
    layouts (the name/layout map is a pure relayout, linear in the weights)."""
    from safetensors.numpy import load_file

    model = _hf_model(case)
    model.save_pretrained(tmp_path / "hf")
    params, config = load_pretrained(tmp_path / "hf")
    tokens, mask, positions = _batch()
    targets = np.roll(tokens, -1, axis=1)  # position t predicts token t + 1
    weight = mask & np.roll(mask, -1, axis=1)
    weight[:, -1] = False

    def loss(p):
        z = logits(p, config, jnp.asarray(tokens, jnp.int32), attention_mask=jnp.asarray(mask))
        logp = jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), jnp.asarray(targets)[..., None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(jnp.asarray(weight), logp, 0.0))

    save_pretrained(jax.jit(jax.grad(loss))(params), config, tmp_path / "grads")
    ours = load_file(tmp_path / "grads" / "model.safetensors")

    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                position_ids=torch.tensor(positions.astype(np.int64)))
    logp = torch.log_softmax(out.logits.double(), -1).gather(-1, torch.tensor(targets)[..., None])[..., 0]
    (logp * torch.tensor(weight)).sum().backward()
    ref = {name: p.grad.numpy() for name, p in model.named_parameters()}
    assert sorted(ours) == sorted(ref)
    for name, g in ref.items():
        scale = np.abs(g).max()
        assert scale > 1e-3, f"{name}: degenerate reference gradient"
        np.testing.assert_allclose(ours[name], g, atol=2e-5 * scale, rtol=0, err_msg=name)
