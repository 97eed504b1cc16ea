"""Language consistency (DeepSeek-R1, arXiv 2501.12948 v2, §2.3.3 / eq. 7): reasoning RL with and without the
language-consistency reward, from a tiny base whose chain of thought mixes English and Chinese.

The base is ``r1jax/assets/tiny_bilingual_base`` (made by ``experiments/pretrain_bilingual_base.py``: the demo's
tiny base, its vocabulary grown by 加 / 进位, pre-training continued on arithmetic traces whose words "add" and
"carry" switch to Chinese at a per-document rate uniform in [0, 0.6]). Both arms run GRPO with the R1-Zero rule
rewards (``math_accuracy`` + ``format_strict``, weight 1 each) and the demo's settings
(``configs/r1_zero_tiny.yaml``); the ``with`` arm adds ``language_consistency_en`` (eq. 7, target English) with
weight ``--lang-weight`` (default 1.0: the paper sums accuracy and language rewards directly). The ``without``
arm carries the same component with weight 0, so it is measured at every step but not optimised. Same seeds in
both arms (``run.seed = data.seed = seed``): a seed's two runs start from the same base, prompts and first
samples, so differences are paired by seed.

Each final policy (and the base, once per seed) is evaluated on ``--eval-prompts`` held-out problems ×
``--eval-samples`` samples at temperature 1: accuracy (pass@1 by sampling), strict format rate, language
consistency (eq. 7 as rewarded: a sample without ``<think>`` scores 0), consistency of the formatted samples
only, and the share of formatted samples whose chain of thought is all English. Writes ``--out`` (JSON: per seed,
per arm means with 95% Student-t intervals over seeds, paired differences, learning curves, the machine) and the
PNG next to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import platform
import shutil
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from r1jax.config import from_dict  # noqa: E402
from r1jax.eval.stats import t_interval  # noqa: E402
from r1jax.train.config import ExperimentConfig  # noqa: E402
from r1jax.train.loop import Trainer  # noqa: E402
from r1jax.train.rollout import sample_and_score, step_seed  # noqa: E402

BASE = REPO / "r1jax" / "assets" / "tiny_bilingual_base"
DEMO = REPO / "configs" / "r1_zero_tiny.yaml"
LANG = "language_consistency_en"
ARMS = ("without", "with")
METRICS = ("accuracy", "format_rate", "consistency", "consistency_formatted", "all_english_formatted",
           "response_length")
CURVES = ("reward/" + LANG, "accuracy", "reward/format_strict")


def rl_config(seed: int, steps: int, lang_weight: float, *, quick: bool, run_dir: pathlib.Path) -> dict:
    """The demo's GRPO config from the bilingual base; ``lang_weight`` is the eq. 7 component's weight."""
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["run"].update(name=run_dir.name, out_dir=str(run_dir.parent), seed=seed, steps=steps, tensorboard=False,
                      progress=False)
    cfg["model"]["path"] = str(BASE)
    cfg["data"]["seed"] = seed
    cfg["reward"]["components"] = [{"name": "math_accuracy", "weight": 1.0}, {"name": "format_strict", "weight": 1.0},
                                   {"name": LANG, "weight": lang_weight}]
    cfg["checkpoint"] = {"every": 0, "keep": 1, "resume": False}
    cfg["eval"]["every"] = 0
    if quick:
        cfg["rollout"].update(prompts_per_step=4, group_size=4)
        cfg["algo"]["num_minibatches"] = 1
        cfg["reward"]["num_workers"] = 0
    return cfg


def evaluate(trainer: Trainer, params, *, prompts: int, samples: int, seed: int) -> dict[str, float]:
    """Held-out metrics of ``params`` (the same problems and sampling seed for every policy of a seed)."""
    c, cfg = trainer.components, trainer.config
    examples = [c.eval_set[i] for i in range(min(prompts, len(c.eval_set)))]
    ep = sample_and_score(cfg, trainer.tokenizer, trainer.eval_sampler, c.scorer, params, examples, n=samples,
                          temperature=1.0, seed=step_seed(seed, 0, salt=7), first_index=0, step=0)
    lang, fmt = ep.components[LANG].ravel(), ep.components["format_strict"].ravel()
    formatted = fmt > 0.5
    return {"accuracy": float(ep.correct.mean()), "format_rate": float(formatted.mean()),
            "consistency": float(lang.mean()),
            "consistency_formatted": float(lang[formatted].mean()) if formatted.any() else float("nan"),
            "all_english_formatted": float((lang[formatted] == 1.0).mean()) if formatted.any() else float("nan"),
            "response_length": float(ep.lengths.mean())}


def seed_key(seed: int, args) -> dict:
    """What a seed's result depends on: a finished seed with the same key is not run again."""
    digest = hashlib.sha256((BASE / "model.safetensors").read_bytes()).hexdigest()[:16]
    return {"seed": seed, "steps": args.steps, "lang_weight": args.lang_weight, "eval_prompts": args.eval_prompts,
            "eval_samples": args.eval_samples, "quick": args.quick, "base_sha256": digest}


def run_seed(seed: int, args, work: pathlib.Path) -> dict:
    """Both arms of one seed (and the base's evaluation); returns their metrics and learning curves.

    The result is kept in ``work/seed<S>/result.json`` with its :func:`seed_key`; a later call with the same key
    reads it instead of training again (so adding seeds to a finished run costs only the new seeds).
    """
    done, key = work / f"seed{seed}" / "result.json", seed_key(seed, args)
    if done.is_file():
        cached = json.loads(done.read_text())
        if cached.get("key") == key:
            print(f"seed {seed}: finished earlier, read from {done}", flush=True)
            return {**cached["result"], "from_earlier_run": True}
    out, t0 = {}, time.time()
    for arm in ARMS:
        run_dir = work / f"seed{seed}" / arm
        cfg = from_dict(ExperimentConfig, rl_config(seed, args.steps, args.lang_weight if arm == "with" else 0.0,
                                                    quick=args.quick, run_dir=run_dir))
        if run_dir.exists():
            shutil.rmtree(run_dir)
        trainer = Trainer(cfg, run_dir)
        try:
            kw = dict(prompts=args.eval_prompts, samples=args.eval_samples, seed=seed)
            if arm == ARMS[0]:
                out["base"] = evaluate(trainer, trainer.state.params, **kw)
            t_train = time.time()
            records = trainer.run()
            out[arm] = {**evaluate(trainer, trainer.state.params, **kw),
                        "train_seconds": round(time.time() - t_train, 1),
                        "curves": {k: [float(r[k]) for r in records] for k in CURVES}}
        finally:
            trainer.close()
    out["minutes"] = round((time.time() - t0) / 60, 2)
    done.write_text(json.dumps({"key": key, "result": out}, indent=2))
    return {**out, "from_earlier_run": False}


def summarise(per_seed: dict, seeds) -> dict:
    """Means with 95% t-intervals over seeds per arm (and the base), and paired with - without differences."""
    def stat(vals):
        vals = [v for v in vals if np.isfinite(v)]
        ci = t_interval(vals) if len(vals) > 1 else None
        return {"mean": float(np.mean(vals)) if vals else float("nan"), "values": vals,
                "ci95": None if ci is None else [ci.low, ci.high]}

    summary = {arm: {m: stat([per_seed[s][arm][m] for s in seeds]) for m in METRICS} for arm in ("base",) + ARMS}
    summary["with_minus_without"] = {}
    for m in METRICS:
        d = stat([per_seed[s]["with"][m] - per_seed[s]["without"][m] for s in seeds])
        d["with_ahead_in"] = int(sum(v > 0 for v in d["values"]))
        summary["with_minus_without"][m] = d
    return summary


def verdict(summary: dict) -> str:
    """Whether the paper's trade-off (consistency up, accuracy slightly down) appears, in words."""
    dc, da = summary["with_minus_without"]["consistency"], summary["with_minus_without"]["accuracy"]
    if dc["ci95"] is None:
        return "one seed: no interval, no verdict"
    up = dc["ci95"][0] > 0
    down = da["ci95"][1] < 0
    acc = ("accuracy lower with the language reward (interval below 0)" if down else
           "accuracy higher with the language reward (interval above 0)" if da["ci95"][0] > 0 else
           f"no accuracy difference detected (mean {da['mean']:+.3f}, interval contains 0)")
    con = "consistency up (interval above 0)" if up else "consistency not clearly up (interval contains 0 or below)"
    full = "the paper's trade-off appears" if up and down else (
        "only the consistency half of the paper's trade-off appears" if up else "the paper's trade-off does not appear")
    return f"{full}: {con}; {acc}"


def machine() -> dict:
    import jax  # noqa: PLC0415

    cpu = platform.processor()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "jax": jax.__version__, "backend": jax.default_backend(),
            "python": platform.python_version(), "load_average_at_end": list(os.getloadavg())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--steps", type=int, default=60, help="RL steps per arm")
    ap.add_argument("--lang-weight", type=float, default=1.0, help="weight of language_consistency_en in 'with'")
    ap.add_argument("--eval-prompts", type=int, default=128)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "language_consistency.json"))
    ap.add_argument("--work-dir", default="runs/language_consistency",
                    help="the runs' directories; a seed finished there with the same settings is not run again")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 steps, 4 prompts x 4 samples, 8 eval prompts")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.eval_prompts, args.eval_samples = min(args.steps, 2), 8, 2
    if not (BASE / "config.json").is_file():
        print(f"language_consistency: the bilingual base {BASE} is missing "
              "(python experiments/pretrain_bilingual_base.py)", file=sys.stderr)
        return 2
    out, work = pathlib.Path(args.out), pathlib.Path(args.work_dir)

    t0, per_seed = time.time(), {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(seed, args, work)
        row = {arm: {m: round(per_seed[seed][arm][m], 3) for m in ("accuracy", "format_rate", "consistency")}
               for arm in ("base",) + ARMS}
        print(f"seed {seed} ({(time.time() - t0) / 60:.1f} min): {row}", flush=True)

    summary = summarise(per_seed, args.seeds)
    result = {"base_model": str(BASE.relative_to(REPO)), "steps": args.steps, "lang_weight": args.lang_weight,
              "seeds": args.seeds, "quick": args.quick,
              "eval": {"prompts": args.eval_prompts, "samples": args.eval_samples, "temperature": 1.0},
              "rewards": {"without": {"math_accuracy": 1.0, "format_strict": 1.0, LANG: 0.0},
                          "with": {"math_accuracy": 1.0, "format_strict": 1.0, LANG: args.lang_weight}},
              "summary": summary, "verdict": verdict(summary), "per_seed": per_seed,
              "machine": machine(), "wall_minutes": round((time.time() - t0) / 60, 2),
              "seeds_from_earlier_runs": [s for s in args.seeds if per_seed[s]["from_earlier_run"]],
              "minutes_per_seed": {s: per_seed[s].get("minutes") for s in args.seeds}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, allow_nan=True))
    print(format_table(summary, len(args.seeds)))
    print(f"\n{result['verdict']}")
    png = plot(summary, per_seed, args.seeds, out.with_suffix(".png"))
    print(f"\nresults: {out}" + (f"  plot: {png}" if png else "") + f"  ({result['wall_minutes']} min)")
    return 0


def format_table(summary: dict, n: int) -> str:
    def cell(s):
        ci = s["ci95"]
        return f"{s['mean']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{s['mean']:.3f}"

    keys = ("consistency", "consistency_formatted", "accuracy", "format_rate")
    lines = [f"{'arm':22s}" + "".join(f"{k:>26s}" for k in keys) + f"   (95% t-intervals over {n} seeds)"]
    for arm, label in (("base", "base (before RL)"), ("without", "RL without eq. 7"), ("with", "RL with eq. 7"),
                       ("with_minus_without", "with - without (paired)")):
        lines.append(f"{label:22s}" + "".join(f"{cell(summary[arm][k]):>26s}" for k in keys))
    return "\n".join(lines)


def plot(summary: dict, per_seed: dict, seeds, path: pathlib.Path) -> pathlib.Path | None:
    """Left: consistency / accuracy / format per arm (95% intervals, seeds as dots). Right: consistency by step."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return None
    keys = ("consistency", "accuracy", "format_rate")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.27
    for i, arm in enumerate(("base",) + ARMS):
        x = np.arange(len(keys)) + (i - 1) * width
        means = [summary[arm][k]["mean"] for k in keys]
        cis = [summary[arm][k]["ci95"] or [m, m] for k, m in zip(keys, means)]
        ax.bar(x, means, width, yerr=[[m - c[0] for m, c in zip(means, cis)], [c[1] - m for m, c in zip(means, cis)]],
               capsize=3, label={"base": "base (before RL)", "without": "RL without eq. 7",
                                 "with": "RL with eq. 7"}[arm], alpha=0.8)
        for j, k in enumerate(keys):
            ax.scatter([x[j]] * len(summary[arm][k]["values"]), summary[arm][k]["values"], color="k", s=6, zorder=3)
    ax.set_xticks(np.arange(len(keys)), ["language consistency\n(eq. 7, English)", "accuracy (pass@1)",
                                         "format rate"])
    ax.set_ylim(0, 1.05)
    ax.set_title("held-out, after RL (95% t-intervals over seeds)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    for arm, color in zip(ARMS, ("tab:orange", "tab:green")):
        curves = np.array([per_seed[s][arm]["curves"]["reward/" + LANG] for s in seeds])
        steps = np.arange(1, curves.shape[1] + 1)
        for c in curves:
            ax2.plot(steps, c, color=color, alpha=0.2, lw=0.8)
        ax2.plot(steps, curves.mean(0), color=color, lw=2, label=f"RL {arm} eq. 7 (mean of {len(seeds)} seeds)")
    ax2.set_xlabel("RL step")
    ax2.set_ylabel("language consistency of the step's samples")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("training samples' language consistency by step", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
