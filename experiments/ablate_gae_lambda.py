"""GRPO vs PPO with GAE λ ∈ {0.95, 1.0} (DeepSeek-R1 appendix ablation), several seeds each.

Same task, same base model, same budget (steps × prompts × samples per prompt), same evaluation.
The paper reports that PPO with λ = 0.95 falls clearly behind GRPO while λ = 1.0 nearly matches
it: with a sparse final-token reward and γ = 1, λ < 1 leans on a value model that is poor early
in training. This script measures whether the tiny CPU setting reproduces that ordering.

    python experiments/ablate_gae_lambda.py                     # GRPO + PPO λ 0.95 / 1.0, 3 seeds
    python experiments/ablate_gae_lambda.py --lambdas 0.9 0.95 0.99 1.0 --seeds 0 1 2 3 --steps 40

Writes ``OUT/results.json`` (per run: final held-out accuracy and the training curve), prints a
table of final accuracy with 95% t-intervals over seeds, and plots ``OUT/curves.png``.
PPO's critic is a separate model of the policy's architecture initialised from the policy (plus a
fresh value head), as in the paper's PPO baseline; its KL to the reference is a per-token reward
penalty (k1, β = algo.kl_coef). Every arm aggregates its loss token-mean (``--loss-agg``), so the
comparison is GRPO's group-normalised advantages vs PPO's critic + GAE, nothing else.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time

import numpy as np

from r1jax.config import load_config
from r1jax.eval import t_interval
from r1jax.train.config import ExperimentConfig
from r1jax.train.demo import BASE_MODEL, DEMO_CONFIG
from r1jax.train.loop import Trainer


def variants(lambdas):
    yield "grpo", []
    for lam in lambdas:
        yield f"ppo_lambda_{lam:g}", ["algo.name=ppo", "algo.advantage=gae", f"algo.gae_lambda={lam}",
                                      "algo.gamma=1.0"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(DEMO_CONFIG), help="base experiment config")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.95, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="RL steps per run (default: the config's)")
    ap.add_argument("--out", default="runs/ablate_gae_lambda")
    ap.add_argument("--loss-agg", default="token_mean", help="loss aggregation of every arm")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = ap.parse_args(argv)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"model.path={BASE_MODEL}", "run.progress=false", "run.tensorboard=false", "checkpoint.every=0",
              "checkpoint.resume=false", f"algo.loss_agg={args.loss_agg}", *args.overrides]
    if args.steps is not None:
        common.append(f"run.steps={args.steps}")
    results = {}
    t0 = time.time()
    for name, extra in variants(args.lambdas):
        for seed in args.seeds:
            run_dir = out / f"{name}_seed{seed}"
            if run_dir.exists():
                shutil.rmtree(run_dir)
            cfg = load_config(ExperimentConfig, args.config, [*common, *extra, f"run.seed={seed}",
                                                              f"data.seed={seed}", f"run.name={run_dir.name}"])
            trainer = Trainer(cfg, run_dir)
            records = trainer.run()
            final = trainer.evaluate()
            trainer.close()
            results[f"{name}/seed{seed}"] = {
                "variant": name, "seed": seed, "final": final,
                "curve": {k: [r.get(k) for r in records] for k in ("accuracy", "reward/total", "response_length/mean")},
            }
            print(f"{name:18s} seed {seed}: held-out accuracy {final['eval/accuracy']:.3f}  "
                  f"({(time.time() - t0) / 60:.1f} min elapsed)", flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=2))

    print(f"\n{'variant':18s} {'accuracy':>9s}   95% CI over {len(args.seeds)} seeds")
    summary = {}
    for name, _ in variants(args.lambdas):
        accs = [r["final"]["eval/accuracy"] for r in results.values() if r["variant"] == name]
        ci = t_interval(accs) if len(accs) > 1 else None
        summary[name] = {"mean": float(np.mean(accs)), "ci": None if ci is None else [ci.low, ci.high], "runs": accs}
        ci_text = f"[{ci.low:.3f}, {ci.high:.3f}]" if ci else "(one seed)"
        print(f"{name:18s} {np.mean(accs):9.3f}   {ci_text}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(results, args.lambdas, out / "curves.png")
    print(f"\nresults: {out / 'results.json'}  curves: {out / 'curves.png'}")
    return 0


def plot(results, lambdas, path):
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, _ in variants(lambdas):
        curves = np.array([r["curve"]["accuracy"] for r in results.values() if r["variant"] == name], float)
        mean = curves.mean(0)
        ax.plot(np.arange(len(mean)), mean, label=name)
        if len(curves) > 1:
            ax.fill_between(np.arange(len(mean)), curves.min(0), curves.max(0), alpha=0.15)
    ax.set_xlabel("RL step")
    ax.set_ylabel("training accuracy (sampled)")
    ax.set_title("GRPO vs PPO (GAE λ): tiny arithmetic, CPU")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
