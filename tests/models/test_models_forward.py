"""Forward modes: positions, KV-cache prefill/decode vs the full forward, packing, remat, dtypes."""

import dataclasses
import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.config import ConfigError
from r1jax.models import (
    default_positions,
    forward,
    forward_with_cache,
    init_cache,
    init_params,
    init_value_head,
    lm_head_weight,
    logits,
    value,
)
from r1jax.models.transformer import restack_layers, unstack_layers
from r1jax_kernels import token_logprobs

# Compiled once per (config, shapes); eager scans are slow to dispatch on CPU.
jit_forward = jax.jit(forward, static_argnums=1)
jit_logits = jax.jit(logits, static_argnums=1)


def test_default_positions_hand_computed():
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    np.testing.assert_array_equal(
        default_positions((2, 5), attention_mask=mask), [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]
    )
    np.testing.assert_array_equal(default_positions((1, 4)), [[0, 1, 2, 3]])
    seg = jnp.array([[1, 1, 2, 2, 2, 0], [3, 3, 3, 4, 5, 5]])
    valid = jnp.array([[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(default_positions((2, 6), segment_ids=seg), [[0, 1, 0, 1, 2, 0], [0, 1, 2, 0, 0, 1]])
    np.testing.assert_array_equal(
        default_positions((2, 6), segment_ids=seg, attention_mask=valid), [[0, 1, 0, 1, 2, 0], [0, 0, 1, 0, 0, 1]]
    )


@settings(max_examples=20, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    valid=st.lists(st.booleans(), min_size=10, max_size=10),
)
def test_default_positions_match_a_loop(lengths, valid):
    T = 10
    seg = np.zeros(T, np.int32)
    t = 0
    for s, n in enumerate(lengths):
        seg[t : t + n] = s + 1
        t += n
    seg[t:] = 0  # trailing padding segment
    out = np.asarray(
        default_positions((1, T), segment_ids=jnp.asarray(seg)[None], attention_mask=jnp.asarray(valid)[None])
    )[0]
    count = 0
    for i in range(T):
        if i == 0 or seg[i] != seg[i - 1]:
            count = 0
        count += valid[i]
        assert out[i] == max(count - 1, 0), (i, seg, valid, out)


def _left_pad(rows, width, pad=0):
    tokens = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        tokens[i, width - len(r) :] = r
        mask[i, width - len(r) :] = True
    return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.parametrize("table", [False, True], ids=["rope_computed", "rope_table"])
def test_kv_cache_prefill_and_decode_match_full_forward(qwen3_model, table):
    config, params = qwen3_model
    rng = np.random.RandomState(0)
    prompt_lens, P, G = [3, 6, 1], 6, 4
    prompts = [rng.randint(1, config.vocab_size, n) for n in prompt_lens]
    ptoks, pmask = _left_pad(prompts, P)
    gen = jnp.asarray(rng.randint(1, config.vocab_size, (3, G)), jnp.int32)
    full_toks = jnp.concatenate([ptoks, gen], axis=1)
    full_mask = jnp.concatenate([pmask, jnp.ones((3, G), bool)], axis=1)
    full_pos = default_positions(full_toks.shape, attention_mask=full_mask)
    full = jit_forward(params, config, full_toks, attention_mask=full_mask)

    # positions_below = the cache length (the sampler's bound): cos / sin from a table
    def fn(*args):
        return forward_with_cache(*args, positions_below=P + G + 3 if table else None)

    chex.clear_trace_counter()  # counted per code object, across the parametrizations

    step = jax.jit(chex.assert_max_traces(fn, n=2), static_argnums=1)  # prefill + decode shapes
    cache = init_cache(config, batch=3, max_len=P + G + 3)
    hidden, cache = step(params, config, ptoks, full_pos[:, :P], pmask, cache)
    assert int(cache.index) == P
    np.testing.assert_array_equal(cache.mask[:, :P], pmask)
    m = np.asarray(pmask)
    np.testing.assert_allclose(np.asarray(hidden)[m], np.asarray(full[:, :P])[m], atol=1e-5, rtol=0)
    for t in range(G):
        hidden, cache = step(params, config, gen[:, t : t + 1], full_pos[:, P + t : P + t + 1], jnp.ones((3, 1), bool), cache)
        np.testing.assert_allclose(hidden[:, 0], full[:, P + t], atol=1e-5, rtol=0)
    assert int(cache.index) == P + G
    assert not bool(cache.mask[:, P + G :].any())


def test_packed_segments_equal_separate_sequences(qwen3_model):
    config, params = qwen3_model
    rng = np.random.RandomState(1)
    lens = [[4, 3, 5], [6, 6]]
    T = 14
    toks = np.zeros((2, T), np.int32)
    seg = np.zeros((2, T), np.int32)
    seqs = []
    for r, row in enumerate(lens):
        start = 0
        for s, n in enumerate(row):
            x = rng.randint(1, config.vocab_size, n)
            toks[r, start : start + n] = x
            seg[r, start : start + n] = s + 1
            seqs.append((r, start, x))
            start += n
    valid = seg > 0
    packed = jit_forward(params, config, jnp.asarray(toks), segment_ids=jnp.asarray(seg), attention_mask=jnp.asarray(valid))
    # Reference: each sequence alone in its own row, right-padded (later pads cannot reach earlier
    # tokens under the causal mask), positions 0..n-1.
    alone = np.zeros((len(seqs), T), np.int32)
    for i, (_, _, x) in enumerate(seqs):
        alone[i, : len(x)] = x
    ref = jit_forward(params, config, jnp.asarray(alone))
    for i, (r, start, x) in enumerate(seqs):
        np.testing.assert_allclose(packed[r, start : start + len(x)], ref[i, : len(x)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("T", [100, 130])
def test_query_blocks_give_the_full_attention(make_config, T):
    """``attention_blocks``: the full-sequence forward attends in query blocks (block i reads keys up
    to its end only, issue 15): with padding and packed segments the hidden states and gradients
    equal one block over all keys, and the compiled forward does fewer FLOPs."""
    whole_config = make_config(architecture="qwen2")
    params = init_params(whole_config, jax.random.key(3))
    rng = np.random.RandomState(3)
    tokens = jnp.asarray(rng.randint(1, 96, (3, T)), jnp.int32)
    mask = jnp.asarray(np.arange(T)[None] >= np.array([[0], [7], [45]]))  # left padding
    seg = jnp.asarray(np.minimum(np.arange(T) // 31, 3)[None].repeat(3, axis=0))  # packed rows

    def run(config):
        def loss(params, kw):  # over real tokens: a padding query's output is garbage either way
            out = jnp.tanh(forward(params, config, tokens, **kw)) * (jnp.arange(config.hidden_size) % 3 - 1.0)
            return jnp.sum(jnp.where(mask[..., None], out, 0.0))

        f = jax.jit(jax.value_and_grad(loss))
        flops = f.lower(params, dict(attention_mask=mask)).compile().cost_analysis()["flops"]
        return [f(params, kw) for kw in (dict(attention_mask=mask), dict(segment_ids=seg, attention_mask=mask))], flops

    blocked, blocked_flops = run(dataclasses.replace(whole_config, attention_blocks=4))
    whole, whole_flops = run(whole_config)
    for (lb, gb), (lw, gw) in zip(blocked, whole, strict=True):
        np.testing.assert_allclose(lb, lw, rtol=1e-5)
        chex.assert_trees_all_close(gb, gw, atol=1e-4, rtol=1e-4)  # summation order; gradients up to ~40
    assert blocked_flops < 0.98 * whole_flops, (blocked_flops, whole_flops)
    with pytest.raises(ConfigError, match="attention_blocks"):
        make_config(attention_blocks=0)


def test_flash_attention_maps_the_mask_and_layouts(make_config, monkeypatch):
    """``attention_impl: cudnn`` goes through ``jax.nn.dot_product_attention``; on CPU its ``xla``
    implementation checks the mapping (cache layouts, GQA, the mask as a bias, the scale): with left
    padding and packed segments the bfloat16 forward and its gradients match ``_attend``'s on real
    tokens. cuDNN itself runs only on an NVIDIA GPU (``benchmarks/gpu.py``)."""
    import r1jax.models.transformer as tf

    base = make_config(architecture="qwen2", param_dtype="bfloat16")
    params = init_params(base, jax.random.key(5))
    rng = np.random.RandomState(5)
    T = 40
    tokens = jnp.asarray(rng.randint(1, 96, (3, T)), jnp.int32)
    mask = jnp.asarray(np.arange(T)[None] >= np.array([[0], [5], [23]]))  # left padding
    seg = jnp.asarray(np.minimum(np.arange(T) // 13, 2)[None].repeat(3, axis=0))
    seen = []
    flash = tf._flash_attend

    def on_cpu(q, k, v, m, config, implementation="cudnn"):
        seen.append(implementation)
        return flash(q, k, v, m, config, implementation="xla")

    monkeypatch.setattr(tf, "_flash_attend", on_cpu)

    def run(config, kw):
        def loss(params):
            out = jnp.tanh(forward(params, config, tokens, **kw).astype(jnp.float32))
            return jnp.sum(jnp.where(mask[..., None], out * (jnp.arange(config.hidden_size) % 3 - 1.0), 0.0))
        return jax.value_and_grad(loss)(params)

    for kw in (dict(attention_mask=mask), dict(segment_ids=seg, attention_mask=mask)):
        lf, gf = run(dataclasses.replace(base, attention_impl="cudnn"), kw)
        lx, gx = run(base, kw)
        np.testing.assert_allclose(lf, lx, rtol=2e-2)
        for a, b in zip(jax.tree.leaves(gf), jax.tree.leaves(gx), strict=True):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            assert np.linalg.norm(a - b) <= 5e-2 * np.linalg.norm(b) + 1e-6
    assert seen and set(seen) == {"cudnn"}  # the config reached the flash path, which asks for cuDNN
    with pytest.raises(ConfigError, match="attention_impl"):
        make_config(attention_impl="cudnn")  # float32 compute
    with pytest.raises(ConfigError, match="attention_impl"):
        make_config(attention_impl="flash")


def test_default_positions_take_rope_from_a_table(make_config):
    """Without ``positions`` the forward looks cos and sin up in a table of the first T positions
    (XLA fused computed ones into every layer's q/k rotation, per head: about 14% of an update, issue
    15): the same hidden states as passing those positions, and no cos/sin left in the HLO."""
    config = make_config(architecture="qwen2")
    params = init_params(config, jax.random.key(2))
    rng = np.random.RandomState(2)
    tokens = jnp.asarray(rng.randint(1, 96, (3, 40)), jnp.int32)
    mask = jnp.asarray(np.arange(40)[None] >= np.array([[0], [5], [17]]))  # left padding
    seg = jnp.asarray(np.repeat([[0, 1, 2, 3]], 3, axis=0).repeat(10, axis=1))
    for kw in (dict(attention_mask=mask), dict(segment_ids=seg)):
        looked_up = jit_forward(params, config, tokens, **kw)
        positions = default_positions(tokens.shape, **kw)
        computed = jit_forward(params, config, tokens, positions=positions, **kw)
        np.testing.assert_allclose(looked_up, computed, atol=2e-5, rtol=0)
    hlo = jax.jit(forward, static_argnums=1).lower(params, config, tokens, attention_mask=mask).compile().as_text()
    assert " cosine(" not in hlo and " sine(" not in hlo
    hlo = jax.jit(forward, static_argnums=1).lower(params, config, tokens, positions=positions).compile().as_text()
    assert " cosine(" in hlo  # given positions (any values): computed
    cache = init_cache(config, batch=3, max_len=48)
    decode = functools.partial(forward_with_cache, positions_below=48)
    hlo = jax.jit(decode, static_argnums=1).lower(params, config, tokens[:, :1], positions[:, :1],
                                                  mask[:, :1], cache).compile().as_text()
    assert " cosine(" not in hlo and " sine(" not in hlo


def test_padding_does_not_change_valid_tokens(make_config):
    config = make_config(architecture="qwen2", tie_word_embeddings=True)
    params = init_params(config, jax.random.key(2))
    x = jnp.asarray(np.random.RandomState(2).randint(1, 96, (1, 5)), jnp.int32)
    alone = jit_forward(params, config, x)
    both = jnp.concatenate([jnp.pad(x, ((0, 0), (0, 3))), jnp.pad(x, ((0, 0), (3, 0)))])
    mask = jnp.stack([jnp.arange(8) < 5, jnp.arange(8) >= 3])
    out = jit_forward(params, config, both, attention_mask=mask)
    right, left = out[:1], out[1:]
    np.testing.assert_allclose(right[:, :5], alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(left[:, 3:], alone, atol=1e-5, rtol=0)


def test_cache_overflow_is_loud(make_config):
    config = make_config()
    params = init_params(config, jax.random.key(0))
    cache = init_cache(config, batch=1, max_len=4)
    toks = jnp.ones((1, 3), jnp.int32)
    pos = jnp.arange(3)[None]
    hidden, cache = forward_with_cache(params, config, toks, pos, jnp.ones((1, 3), bool), cache)
    assert bool(jnp.isfinite(hidden).all())
    hidden, _ = forward_with_cache(params, config, toks, pos + 3, jnp.ones((1, 3), bool), cache)
    assert bool(jnp.isnan(hidden).all())
    with pytest.raises(ValueError, match="do not fit a cache of 4 slots"):
        forward_with_cache(params, config, jnp.ones((1, 5), jnp.int32), jnp.zeros((1, 5), jnp.int32), jnp.ones((1, 5), bool), init_cache(config, 1, 4))
    with pytest.raises(ValueError, match="cache: holds 1 rows but tokens has 2"):
        forward_with_cache(params, config, jnp.ones((2, 1), jnp.int32), jnp.zeros((2, 1), jnp.int32), jnp.ones((2, 1), bool), init_cache(config, 1, 4))


def test_input_errors_name_the_argument(make_config):
    config = make_config()
    params = init_params(config, jax.random.key(0))
    with pytest.raises(TypeError, match="tokens: expected integer"):
        forward(params, config, jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="tokens: expected shape"):
        forward(params, config, jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask: expected shape \\(1, 3\\)"):
        forward(params, config, jnp.ones((1, 3), jnp.int32), attention_mask=jnp.ones((1, 4), bool))


def test_remat_and_scanned_layers_give_same_loss_and_gradient(make_config):
    base = make_config()
    params = init_params(base, jax.random.key(3))
    toks = jnp.asarray(np.random.RandomState(3).randint(0, 96, (2, 6)), jnp.int32)

    @functools.partial(jax.jit, static_argnums=1)
    def grad(p, cfg):
        return jax.value_and_grad(lambda q: jnp.mean(jax.nn.log_softmax(logits(q, cfg, toks))[..., 0]))(p)

    ref_l, ref_g = grad(params, base)
    assert not base.scan_layers
    for change in (dict(remat="full"), dict(remat="dots"), dict(scan_layers=True),
                   dict(scan_layers=True, remat="dots")):
        l, g = grad(params, dataclasses.replace(base, **change))
        np.testing.assert_allclose(l, ref_l, rtol=1e-6, err_msg=str(change))
        chex.assert_trees_all_close(g, ref_g, atol=1e-6, rtol=1e-5)


def test_unstacked_layers_give_same_loss_and_gradient_and_restack_exactly(make_config):
    """The update's micro-batches read one array per layer (``unstack_layers``) and their gradients
    go back to the stacked layout (``restack_layers``): the same numbers, layer order kept."""
    config = make_config()
    params = init_params(config, jax.random.key(4))
    toks = jnp.asarray(np.random.RandomState(4).randint(0, 96, (2, 6)), jnp.int32)
    loss = jax.jit(jax.value_and_grad(lambda q: jnp.mean(jax.nn.log_softmax(logits(q, config, toks))[..., 0])))
    ref_l, ref_g = loss(params)
    split = unstack_layers(params)
    assert isinstance(split["layers"], tuple) and len(split["layers"]) == config.num_layers
    l, g = loss(split)
    np.testing.assert_allclose(l, ref_l, rtol=1e-6)
    chex.assert_trees_all_equal(restack_layers(g), ref_g)
    chex.assert_trees_all_equal(restack_layers(split), params)


def test_value_head(make_config):
    config = make_config()
    params = {**init_params(config, jax.random.key(0)), **init_value_head(config, jax.random.key(1))}
    params["value_head"]["bias"] = jnp.asarray(0.5)
    hidden = jit_forward(params, config, jnp.ones((2, 3), jnp.int32))
    v = value(params, config, hidden)
    assert v.shape == (2, 3) and v.dtype == jnp.float32
    expect = np.asarray(hidden, np.float64) @ np.asarray(params["value_head"]["kernel"], np.float64) + 0.5
    np.testing.assert_allclose(v, expect, atol=1e-5)
    with pytest.raises(KeyError, match="init_value_head"):
        value(init_params(config, jax.random.key(0)), config, hidden)


def test_bfloat16_parameters_compute_close_to_float32(make_config):
    cfg32 = make_config(architecture="qwen3", initializer_range=0.05)
    cfg16 = make_config(architecture="qwen3", initializer_range=0.05, param_dtype="bfloat16")
    p16 = init_params(cfg16, jax.random.key(4))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p16)
    toks = jnp.asarray(np.random.RandomState(4).randint(0, 96, (2, 7)), jnp.int32)
    assert jax.eval_shape(functools.partial(forward, config=cfg16), p16, tokens=toks).dtype == jnp.bfloat16
    l16 = jit_logits(p16, cfg16, toks)
    assert l16.dtype == jnp.float32
    l32 = jit_logits(p32, cfg32, toks)
    np.testing.assert_allclose(l16, l32, atol=0.05 * float(jnp.abs(l32).max()))
    cache = init_cache(cfg16, 2, 8)
    assert {x.dtype for x in cache.k + cache.v} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in init_cache(cfg16, 2, 8, dtype=jnp.float32).k} == {jnp.dtype(jnp.float32)}


def test_jit_and_eager_agree_and_tied_head(qwen3_model):
    config, params = qwen3_model
    toks = jnp.asarray(np.random.RandomState(5).randint(0, 96, (2, 5)), jnp.int32)
    eager = logits(params, config, toks)
    jitted = jit_logits(params, config, toks)
    np.testing.assert_allclose(eager, jitted, atol=1e-5)
    np.testing.assert_array_equal(lm_head_weight(params, config), params["embed"].T)


def test_layer_weight_gradients_read_activations_without_transposing_copies(make_config):
    """XLA:CPU computes the MLP, q and o weight gradients with a dot that reads the saved activations
    and the incoming gradient as they are. (Plain autodiff of the MLP matmuls made it a slow
    generic dot fed by transposing copies of [tokens, width] activations, issue 15.) The k/v
    weight gradients are left out: their cotangents come back in the KV-cache layout [B, K, T, Dh]
    and one copy of [tokens, K·Dh] moves them to token-major, which is the layout change itself."""
    config = make_config()
    params = init_params(config, jax.random.key(0))
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 96, (3, 10)), jnp.int32)  # 30 tokens: no weight's size

    def loss(p):
        hidden = forward(p, config, tokens)
        return jnp.sum(token_logprobs(hidden[:, :-1], lm_head_weight(p, config), tokens[:, 1:]))

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    defs = {m.group(1): m.group(2) for m in re.finditer(r"%(\S+) = \S+ ([\w-]+)\(", hlo)}
    # Where each instruction came from: "transpose(jvp" marks the backward pass. A copy the
    # forward makes (the attention output rearranged to token-major for o_proj, when the layers
    # are unrolled) feeds the forward matmul too, and is not a copy made for the gradient.
    origin = {m.group(1): m.group(2) for m in re.finditer(r"%(\S+) = .*?op_name=\"([^\"]*)\"", hlo)}
    D, F = config.hidden_size, config.intermediate_size
    HD = config.num_heads * config.resolved_head_dim
    weight_shapes = {tuple(sorted(s)) for s in [(D, F), (D, HD)]}
    weight_dots, fed_by_copies = 0, []
    for m in re.finditer(r"%(\S+) = \w+\[([\d,]+)\]\S* dot\(%(\S+?), %(\S+?)\)", hlo):
        name, dims, *operands = m.groups()
        if tuple(sorted(int(d) for d in dims.split(","))) not in weight_shapes:
            continue
        weight_dots += 1
        for op in operands:
            copy = defs[op] in ("copy", "transpose") or op.startswith(("copy", "transpose"))
            if copy and "transpose(jvp" in origin.get(op, "transpose(jvp"):
                fed_by_copies.append(f"{name} <- {op}")
    assert fed_by_copies == []
    assert weight_dots >= 3  # the MLP weight gradients are standalone dots the test can see
