"""The `r1jax` command.

    r1jax train CONFIG [key=value ...]   run an RL experiment (GRPO and variants, PPO) from a YAML config
          [--overwrite]                  with checkpoint.resume=false: move an existing run aside (DIR.old-N)
          [--allow-config-change]        resume although the config changes what the run trains
    r1jax eval  CONFIG [key=value ...]   pass@k and majority voting on a held-out set
    r1jax serve --engine jax --model DIR  start a rollout server
    r1jax demo                            the tiny R1-Zero run of the README
    r1jax config CONFIG [key=value ...]  print the fully resolved config (and check it)
    r1jax pipeline CONFIG [key=value ...] run (or resume) a multi-stage pipeline; prints its table
          [--status]                     print the table of its manifest, run nothing
    r1jax rl|sft|sample|distill|rm CONFIG [key=value ...] [--out DIR]
                                         run one stage of that kind (a one-stage pipeline in DIR)

Subcommands import their modules lazily, so `r1jax --help` is instant and a missing optional
part only fails the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from r1jax.config import ConfigError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML experiment config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. algo.kl_coef=0.001")


def _cmd_train(args: argparse.Namespace) -> int:
    from r1jax.train.loop import run_from_cli

    return run_from_cli(args.config, args.overrides, overwrite=args.overwrite,
                        allow_config_change=args.allow_config_change)


def _cmd_eval(args: argparse.Namespace) -> int:
    from r1jax.train.evaluation import eval_from_cli

    return eval_from_cli(args.config, args.overrides)


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from r1jax.config import load_config, to_dict
    from r1jax.train.config import ExperimentConfig

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from r1jax.train.demo import main as demo_main

    return demo_main(args.overrides)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from r1jax.pipeline.runner import pipeline_from_cli

    return pipeline_from_cli(args.config, args.overrides, status=args.status)


def _cmd_stage(args: argparse.Namespace) -> int:
    from r1jax.pipeline.runner import stage_from_cli

    return stage_from_cli(args.command, args.config, args.overrides, out=args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r1jax",
        description="DeepSeek-R1's reinforcement-learning recipe (GRPO, PPO/GAE and follow-ups) in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="run an experiment: r1jax train CONFIG [key=value ...]")
    _add_config_args(p)
    p.add_argument("--overwrite", action="store_true",
                   help="with checkpoint.resume=false, move a previous run in the run directory aside to DIR.old-N "
                        "(without it such a run is refused; nothing is ever deleted)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although the checkpoint was made with a config that trains something else "
                        "(model, data, reward, algo, optim, ...); the changes are logged")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="pass@k / cons@k of a policy: r1jax eval CONFIG [key=value ...]")
    _add_config_args(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("config", help="check a config and print it fully resolved")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("demo", help="the tiny R1-Zero run on CPU (what `make demo` runs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of configs/r1_zero_tiny.yaml")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("pipeline", help="run a multi-stage pipeline (R1: RL → SFT → RL → ...): "
                                        "r1jax pipeline CONFIG [key=value ...]")
    p.add_argument("config", help="YAML pipeline config (out_dir, seed, imports, eval, stages)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides; stages.<name>.… addresses a stage, e.g. stages.zero.config.run.steps=10")
    p.add_argument("--status", action="store_true", help="print the table of the pipeline's manifest and run nothing")
    p.set_defaults(func=_cmd_pipeline)

    for kind, what in (("rl", "RL (GRPO / PPO) from an input model"), ("sft", "supervised fine-tuning"),
                       ("sample", "sampling (rejection sampling, distillation data)"),
                       ("distill", "distillation into a student"),
                       ("rm", "reward-model training (pairwise preferences or pointwise labels)")):
        p = sub.add_parser(kind, help=f"one {kind} stage: {what}: r1jax {kind} CONFIG [key=value ...] [--out DIR]")
        p.add_argument("config", help="YAML stage config (inputs, config; optional name, label, seed, imports, eval)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. inputs.model=DIR")
        p.add_argument("--out", metavar="DIR", default=None,
                       help="the pipeline directory (manifest, stage directory); default runs/<name>")
        p.set_defaults(func=_cmd_stage)

    try:
        from r1jax.rollout.cli import add_serve_parser, run_serve
    except ImportError:  # the rollout service is optional at import time (grpcio)
        pass
    else:
        p = add_serve_parser(sub)
        p.set_defaults(func=run_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"r1jax: config error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # a model, tokenizer or data path named on the command line
        print(f"r1jax: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
