"""Logical sharding on 8 fake CPU devices: same numbers as one device, placement from the rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax.config import ConfigError
from r1jax.models import (
    default_positions,
    forward_with_cache,
    init_cache,
    init_params,
    init_value_head,
    lm_head_weight,
    value,
)
from r1jax.models import forward as model_forward
from r1jax.models.sharding import (
    LOGICAL_AXIS_RULES,
    MeshConfig,
    axis_rules,
    cache_shardings,
    constrain,
    logical_to_spec,
    make_mesh,
    param_shardings,
    shard_params,
)

pytestmark = pytest.mark.multidevice


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() >= 8, "tests/conftest.py must set XLA_FLAGS=--xla_force_host_platform_device_count=8"
    return make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), devices=jax.devices()[:8])


def test_parameters_carry_the_rules_table_shardings(mesh, make_config):
    config = make_config(architecture="qwen3", attention_bias=True)
    params = {**init_params(config, jax.random.key(0)), **init_value_head(config, jax.random.key(1))}
    sharded = shard_params(params, mesh)
    expected = {
        "embed": P("tensor", "fsdp"),
        "lm_head": P("fsdp", "tensor"),
        "final_norm": P("fsdp"),
        "layers/attn_norm": P(None, "fsdp"),
        "layers/q_proj": P(None, "fsdp", "tensor", None),
        "layers/k_proj": P(None, "fsdp", "tensor", None),
        "layers/o_proj": P(None, "tensor", None, "fsdp"),
        "layers/q_bias": P(None, "tensor", None),
        "layers/o_bias": P(None, "fsdp"),
        "layers/q_norm": P(None, None),
        "layers/gate_proj": P(None, "fsdp", "tensor"),
        "layers/down_proj": P(None, "tensor", "fsdp"),
        "value_head/kernel": P("fsdp"),
        "value_head/bias": P(),
    }
    for path, spec in expected.items():
        node = sharded
        for k in path.split("/"):
            node = node[k]
        assert node.sharding.spec == spec, path
        assert node.sharding.mesh.shape == mesh.shape
    # from a config (abstract shapes) gives the same placement as from the arrays
    from_config = param_shardings(config, mesh)
    from_params = param_shardings({k: v for k, v in params.items() if k != "value_head"}, mesh)
    assert jax.tree.map(lambda s: s.spec, from_config) == jax.tree.map(lambda s: s.spec, from_params)


def test_forward_and_gradient_on_mesh_equal_single_device(mesh, make_config):
    config = make_config(architecture="qwen3", attention_bias=True)
    params = {**init_params(config, jax.random.key(0)), **init_value_head(config, jax.random.key(1))}
    rng = np.random.RandomState(0)
    tokens = jnp.asarray(rng.randint(0, config.vocab_size, (4, 8)), jnp.int32)
    mask = jnp.asarray(np.arange(8)[None] >= np.array([[0], [3], [0], [5]]))

    def loss(p, tokens, mask):
        hidden = model_forward(p, config, tokens, attention_mask=mask)
        lp = jax.nn.log_softmax(hidden @ lm_head_weight(p, config))
        logp = jnp.take_along_axis(lp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
        v = value(p, config, hidden)
        return jnp.sum(jnp.where(mask[:, 1:], logp, 0.0)) / 20.0 + jnp.mean(v**2), hidden

    (ref_loss, ref_hidden), ref_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, tokens, mask)

    shardings = param_shardings(params, mesh)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    with jax.set_mesh(mesh):
        step = jax.jit(
            jax.value_and_grad(loss, has_aux=True),
            in_shardings=(shardings, batch, batch),
            out_shardings=((NamedSharding(mesh, P()), NamedSharding(mesh, P(("data", "fsdp")))), shardings),
        )
        (mesh_loss, mesh_hidden), mesh_grad = step(shard_params(params, mesh), jax.device_put(tokens, batch), jax.device_put(mask, batch))
    np.testing.assert_allclose(mesh_loss, ref_loss, atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(mesh_hidden, ref_hidden, atol=1e-5, rtol=0)
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(mesh_grad), jax.tree.leaves(ref_grad)):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
    # gradients come back laid out like the parameters (ZeRO-style)
    assert jax.tree.map(lambda x: x.sharding.spec, mesh_grad) == jax.tree.map(lambda s: s.spec, shardings)


def test_prefill_with_sharded_cache_equals_single_device(mesh, make_config):
    config = make_config()
    params = init_params(config, jax.random.key(2))
    tokens = jnp.asarray(np.random.RandomState(2).randint(0, 96, (4, 6)), jnp.int32)
    mask = jnp.asarray(np.arange(6)[None] >= np.array([[0], [2], [4], [1]]))
    pos = default_positions(tokens.shape, attention_mask=mask)
    step = jax.jit(forward_with_cache, static_argnums=1)
    ref, ref_cache = step(params, config, tokens, pos, mask, init_cache(config, 4, 8))
    cache = init_cache(config, 4, 8)
    with jax.set_mesh(mesh):
        cache = jax.device_put(cache, cache_shardings(cache, mesh))
        assert [k.sharding.spec for k in cache.k] == [P(("data", "fsdp"), "tensor", None, None)] * config.num_layers
        assert [v.sharding.spec for v in cache.v] == [P(("data", "fsdp"), "tensor", None, None)] * config.num_layers
        out, new_cache = step(shard_params(params, mesh), config, tokens, pos, mask, cache)
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(out)[m], np.asarray(ref)[m], atol=1e-5, rtol=0)
    for got, want in zip(new_cache.k + new_cache.v, ref_cache.k + ref_cache.v):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_impossible_shape_names_tensor_dimension_and_axis(mesh, make_config):
    config = make_config(num_heads=4, num_kv_heads=1)
    with pytest.raises(ValueError, match=r"layers/k_proj: dimension 2 \('kv_heads', size 1\) is not divisible by mesh axis 'tensor' \(size 2\)"):
        param_shardings(config, mesh)
    with pytest.raises(ValueError, match=r"embed: dimension 0 \('vocab', size 95\) is not divisible by mesh axis 'tensor'"):
        param_shardings(make_config(vocab_size=95), mesh)


def test_mesh_config_errors_and_wildcard():
    with pytest.raises(ConfigError, match=r"data\*fsdp\*tensor = 3\*1\*1 = 3 but there are 8 devices"):
        MeshConfig(data=3, fsdp=1, tensor=1).resolve(8)
    with pytest.raises(ConfigError, match="at most one size may be -1"):
        MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ConfigError, match="mesh.tensor: 0 is not a positive size"):
        MeshConfig(tensor=0)
    with pytest.raises(ConfigError, match="8 devices are not divisible by the fixed sizes"):
        MeshConfig(data=-1, fsdp=3).resolve(8)
    assert MeshConfig(data=-1, fsdp=2, tensor=2).resolve(8) == (2, 2, 2)
    assert MeshConfig(data=1, fsdp=-1, tensor=1).resolve(8) == (1, 8, 1)
    mesh = make_mesh(MeshConfig(data=-1, fsdp=1, tensor=4), devices=jax.devices()[:8])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 4}


def test_logical_rules_semantics():
    sizes = {"data": 2, "fsdp": 2, "tensor": 2}
    # activations: batch takes data+fsdp, so embed (fsdp already used) stays replicated
    assert logical_to_spec(("batch", "seq", "embed"), shape=(4, 8, 32), mesh_shape=sizes) == P(("data", "fsdp"), None, None)
    assert logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    # not divisible: strict raises, non-strict replicates
    assert logical_to_spec(("batch", "heads"), shape=(3, 4), mesh_shape=sizes, strict=False) == P(None, "tensor")
    with pytest.raises(ValueError, match="x: dimension 0"):
        logical_to_spec(("batch",), shape=(3,), mesh_shape=sizes, name="x")
    # a rule table swap is a config change: pure data parallel
    with axis_rules((("batch", ("data", "fsdp", "tensor")),)):
        assert logical_to_spec(("batch", "embed")) == P(("data", "fsdp", "tensor"), None)
    assert dict(LOGICAL_AXIS_RULES)["heads"] == "tensor"
    x = jnp.ones((2, 3, 4))
    assert constrain(x, ("batch", "seq", "embed")) is x  # no mesh: no-op


def test_shardings_of_optimizer_state(mesh, make_config):
    config = make_config()
    params = init_params(config, jax.random.key(0))
    opt_state = optax.adamw(1e-3).init(params)
    shardings = param_shardings(opt_state, mesh)
    mu = shardings[0].mu
    assert mu["layers"]["q_proj"].spec == P(None, "fsdp", "tensor", None)
    assert shardings[0].count.spec == P()
    with pytest.raises(ValueError, match="mystery: not a known parameter"):
        param_shardings({"mystery": jnp.ones((2, 2))}, mesh)


def test_load_pretrained_places_parameters_on_the_mesh(mesh, make_config, tmp_path):
    from r1jax.models import load_pretrained, save_pretrained

    config = make_config(architecture="qwen2")
    params = init_params(config, jax.random.key(0))
    save_pretrained(params, config, tmp_path)
    loaded, _ = load_pretrained(tmp_path, mesh=mesh)
    expected = param_shardings(config, mesh)
    assert jax.tree.map(lambda x: x.sharding.spec, loaded) == jax.tree.map(lambda s: s.spec, expected)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
