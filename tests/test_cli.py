"""The `r1jax` command: subcommands listed, bad input reported in one line with exit status 2."""

import pytest

from r1jax.cli import build_parser, main
from r1jax.train.demo import DEMO_CONFIG


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "config", "demo", "serve"):
        assert command in out


def test_config_error_names_the_key(capsys):
    assert main(["config", str(DEMO_CONFIG), "rollout.temperature=-1"]) == 2
    assert "rollout.temperature: -1.0 is out of range; must be > 0.0" in capsys.readouterr().err


def test_missing_model_directory_is_named(capsys, tmp_path):
    missing = tmp_path / "no_model"
    assert main(["serve", "--engine", "jax", "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
