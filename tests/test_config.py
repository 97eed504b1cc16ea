"""The config system: every error kind names the key, the value and what is allowed."""

import dataclasses

import pytest

from r1jax.config import (
    ConfigError,
    apply_overrides,
    describe,
    field,
    from_dict,
    load_config,
    replace,
    save_config,
    to_dict,
)


@dataclasses.dataclass(frozen=True)
class Algo:
    kl_coef: float = field(0.001, ge=0.0, help="beta")
    clip_eps: float = field(0.2, gt=0.0, lt=1.0)
    loss_agg: str = field("token_mean", choices=("token_mean", "seq_mean_token_mean"))
    group_size: int = field(8, ge=2)
    lambdas: tuple[float, ...] = field((0.95, 1.0), ge=0.0, le=1.0)
    stop: int | None = field(None)

    def check(self):
        if self.loss_agg == "seq_mean_token_mean" and self.group_size > 64:
            raise ConfigError("algo.group_size: must be <= 64 with seq_mean_token_mean")


@dataclasses.dataclass(frozen=True)
class Run:
    name: str = field("r")
    use_tb: bool = field(False)
    tags: dict[str, int] = field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Top:
    algo: Algo = field(default_factory=Algo)
    run: Run = field(default_factory=Run)


def test_defaults_and_hashable():
    cfg = from_dict(Top, {})
    assert cfg.algo.kl_coef == 0.001 and cfg.run.name == "r"
    assert hash(cfg) == hash(from_dict(Top, {}))


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("algo:\n  kl_coef: 1e-3\n  lambdas: [0.9]\nrun:\n  tags: {a: 1}\n")
    cfg = load_config(Top, path, ["algo.kl_coef=0.01", "algo.stop=7", "run.name=abc"])
    assert cfg.algo.kl_coef == 0.01
    assert cfg.algo.lambdas == (0.9,)
    assert cfg.algo.stop == 7
    assert cfg.run.name == "abc" and cfg.run.tags["a"] == 1


def test_yaml_1_1_scientific_string_is_a_float(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("algo:\n  kl_coef: 1e-3\n")
    assert load_config(Top, path).algo.kl_coef == pytest.approx(1e-3)


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown key 'algo\.kl_cof'.*did you mean 'algo\.kl_coef'"):
        from_dict(Top, {"algo": {"kl_cof": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown key 'algoo'"):
        load_config(Top, None, ["algoo.kl_coef=1"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"algo\.group_size: expected an integer, got 'eight'"):
        from_dict(Top, {"algo": {"group_size": "eight"}})
    with pytest.raises(ConfigError, match=r"run\.use_tb: expected true or false, got 1"):
        from_dict(Top, {"run": {"use_tb": 1}})
    with pytest.raises(ConfigError, match=r"algo\.lambdas\[1\]: expected a number"):
        from_dict(Top, {"algo": {"lambdas": [0.9, "x"]}})
    with pytest.raises(ConfigError, match=r"algo: expected a mapping"):
        from_dict(Top, {"algo": 3})


def test_out_of_range_names_key_value_and_bound():
    with pytest.raises(ConfigError, match=r"algo\.kl_coef: -1\.0 is out of range; must be >= 0\.0"):
        from_dict(Top, {"algo": {"kl_coef": -1}})
    with pytest.raises(ConfigError, match=r"algo\.clip_eps: 1\.0 is out of range; must be < 1\.0"):
        load_config(Top, None, ["algo.clip_eps=1.0"])
    with pytest.raises(ConfigError, match=r"algo\.lambdas: 1\.5 is out of range"):
        from_dict(Top, {"algo": {"lambdas": [0.5, 1.5]}})
    with pytest.raises(ConfigError, match=r"algo\.loss_agg: 'mean' is not allowed; allowed: 'token_mean'"):
        from_dict(Top, {"algo": {"loss_agg": "mean"}})
    with pytest.raises(ConfigError, match=r"NaN"):
        from_dict(Top, {"algo": {"kl_coef": float("nan")}})


def test_cross_field_check():
    with pytest.raises(ConfigError, match=r"algo\.group_size: must be <= 64"):
        from_dict(Top, {"algo": {"loss_agg": "seq_mean_token_mean", "group_size": 128}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(Top, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo:\n  kl_coef: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(Top, bad)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(Top, None, ["algo.kl_coef"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"algo": {"kl_coef": 1}}, ["algo.kl_coef.x=1"])


def test_save_round_trip(tmp_path):
    cfg = load_config(Top, None, ["algo.stop=3", "run.tags={b: 2}"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(Top, path) == cfg
    assert to_dict(cfg)["algo"]["lambdas"] == [0.95, 1.0]
    assert replace(cfg, ["algo.group_size=4"]).algo.group_size == 4


def test_frozen_dict_is_read_only():
    cfg = from_dict(Top, {"run": {"tags": {"a": 1}}})
    with pytest.raises(TypeError):
        cfg.run.tags["b"] = 2


def test_describe_lists_every_key():
    lines = describe(Top)
    assert any(l.startswith("algo.kl_coef: float = 0.001 [ge 0.0]") for l in lines)
    assert any(l.startswith("run.tags") for l in lines)
