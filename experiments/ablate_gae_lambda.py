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
penalty (k1, β = algo.kl_coef), and its GAE advantages are whitened over each batch
(``algo.whiten_advantages``, on by default, as in verl and TRL). Every arm aggregates its loss
token-mean (``--loss-agg``), so the comparison is GRPO's group-normalised advantages vs PPO's
critic + GAE, nothing else.

All λ arms of a seed train as ONE compiled program: the pure update is ``jax.vmap``-ed over a vector
of λ (a traced hyper-parameter) and over the arms' stacked train states and rollouts; each arm still
samples from its own policy, on the same prompts.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.eval import t_interval
from r1jax.train.config import load_experiment
from r1jax.train.demo import BASE_MODEL, DEMO_CONFIG
from r1jax.train.evaluation import evaluate_policy
from r1jax.train.loop import Trainer
from r1jax.train.rollout import assemble_rollout, sample_and_score, step_seed
from r1jax.train.state import Hyper
from r1jax.train.steps import make_rl_update

CURVE_KEYS = ("accuracy", "reward/total", "response_length/mean")


def run_grpo(cfg, run_dir):
    """One GRPO run: (training records, final held-out evaluation)."""
    trainer = Trainer(cfg, run_dir)
    records = trainer.run()
    final = trainer.evaluate()
    trainer.close()
    return records, final


def run_ppo_arms(cfg, lambdas, run_dir):
    """PPO with every λ of ``lambdas`` at once: one vmapped update over the arms' states and rollouts.

    Returns one (records, final evaluation) pair per λ.
    """
    trainer = Trainer(cfg, run_dir)  # the template arm: components, initial state, sampler, iterator
    c, algo, arms = trainer.components, cfg.algo, len(lambdas)
    update = make_rl_update(trainer.model_cfg, algo, cfg.kernels, trainer.tx, trainer.critic_tx, jit=False,
                            max_new_tokens=cfg.rollout.max_new_tokens)
    hp_axes = Hyper(**{k: 0 if k == "gae_lambda" else None for k in trainer.hparams.as_dict()})
    vupdate = jax.jit(jax.vmap(update, in_axes=(0, 0, hp_axes)), donate_argnums=(0,))
    hps = trainer.hparams.replace(gae_lambda=jnp.asarray(lambdas, jnp.float32))
    states = jax.tree.map(lambda x: jnp.stack([x] * arms), trainer.state)
    records = [[] for _ in lambdas]
    for step in range(cfg.run.steps):
        examples = next(trainer.iterator)  # the same prompts for every arm
        episodes = [sample_and_score(cfg, trainer.tokenizer, trainer.sampler, c.scorer,
                                     jax.tree.map(lambda x: x[i], states.params), examples,
                                     n=cfg.rollout.group_size, temperature=cfg.rollout.temperature,
                                     seed=step_seed(cfg.run.seed, step), step=step,
                                     first_index=step * cfg.rollout.prompts_per_step) for i in range(arms)]
        rollouts = [assemble_rollout(ep.prompts, ep.samples, ep.rewards, trainer.tokenizer.pad_id, length=c.max_length)
                    for ep in episodes]
        states, metrics = vupdate(states, jax.tree.map(lambda *x: np.stack(x), *rollouts), hps)
        metrics = jax.device_get(metrics)
        for i, ep in enumerate(episodes):
            records[i].append({"step": step, "accuracy": float(ep.correct.mean()),
                               "reward/total": float(ep.rewards.mean()),
                               "response_length/mean": float(ep.lengths.mean()),
                               **{k: float(v[i]) for k, v in metrics.items()}})
    finals = [evaluate_policy(cfg, trainer.tokenizer, trainer.sampler, c.scorer, c.eval_set,
                              jax.tree.map(lambda x: x[i], states.params), step=cfg.run.steps) for i in range(arms)]
    trainer.close()
    return list(zip(records, finals))


def variant_names(lambdas):
    return ["grpo"] + [f"ppo_lambda_{lam:g}" for lam in lambdas]


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
    ppo = ["algo.name=ppo", "algo.advantage=gae", "algo.gamma=1.0"]
    results = {}
    t0 = time.time()
    for seed in args.seeds:
        seeded = [*common, f"run.seed={seed}", f"data.seed={seed}"]
        runs = {"grpo": run_grpo(load_experiment(args.config, [*seeded, f"run.name=grpo_seed{seed}"]),
                                 _fresh(out / f"grpo_seed{seed}"))}
        arms = run_ppo_arms(load_experiment(args.config, [*seeded, *ppo, f"run.name=ppo_seed{seed}"]),
                            args.lambdas, _fresh(out / f"ppo_seed{seed}"))
        runs.update(zip(variant_names(args.lambdas)[1:], arms))
        for name, (records, final) in runs.items():
            results[f"{name}/seed{seed}"] = {
                "variant": name, "seed": seed, "final": final,
                "curve": {k: [r.get(k) for r in records] for k in CURVE_KEYS}}
            print(f"{name:18s} seed {seed}: held-out accuracy {final['eval/accuracy']:.3f}  "
                  f"({(time.time() - t0) / 60:.1f} min elapsed)", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))

    print(f"\n{'variant':18s} {'accuracy':>9s}   95% CI over {len(args.seeds)} seeds")
    summary = {}
    for name in variant_names(args.lambdas):
        accs = [r["final"]["eval/accuracy"] for r in results.values() if r["variant"] == name]
        ci = t_interval(accs) if len(accs) > 1 else None
        summary[name] = {"mean": float(np.mean(accs)), "ci": None if ci is None else [ci.low, ci.high], "runs": accs}
        ci_text = f"[{ci.low:.3f}, {ci.high:.3f}]" if ci else "(one seed)"
        print(f"{name:18s} {np.mean(accs):9.3f}   {ci_text}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(results, args.lambdas, out / "curves.png")
    print(f"\nresults: {out / 'results.json'}  curves: {out / 'curves.png'}")
    return 0


def _fresh(run_dir: pathlib.Path) -> pathlib.Path:
    """This experiment's own run directory, emptied: an earlier run of it is moved aside, never deleted."""
    if run_dir.exists():
        aside = run_dir.with_name(f"{run_dir.name}.old-{int(time.time())}")
        run_dir.rename(aside)
        print(f"moved the earlier {run_dir} aside to {aside}")
    return run_dir


def plot(results, lambdas, path):
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in variant_names(lambdas):
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
