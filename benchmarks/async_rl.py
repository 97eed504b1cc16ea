"""Synchronous vs asynchronous RL (``rollout.async.max_staleness`` K), rollout server and trainer
on separate cores.

The demo's run (``configs/r1_zero_tiny.yaml``: GRPO on two-digit additions from the tiny base, 16
prompts × 8 samples × 64 new tokens per step) with ``rollout.mode: remote``: an ``r1jax serve``
process pinned to core 0 (``taskset``) samples, the trainer pinned to core 1 scores and updates.
Synchronous (K = 0) each waits for the other; with K ≥ 1 the trainer's producer thread has the
server sample the next steps with the policy K updates old while the trainer updates. Every arm
uses ``algo.tis: token`` (required for K ≥ 1; for K = 0 it corrects only the sampler/trainer
numerics), the same seeds and the same number of steps.

Measured per arm and seed: seconds per step (median over the steps after the first
``--warmup``, which compile), steps/s, the wall time at which the batch accuracy (moving mean of
5 steps) first reaches ``--target``, and the held-out accuracy after training (128 problems × 4
samples at temperature 1, with its 95% interval). The server is started once per engine and
reused by every arm (each trainer pushes its initial weights first); a warm-up request compiles
its sampler before the first arm.

An arm is ``K`` (``rollout.async.max_staleness``) or ``K/pS`` (and partial rollouts of S tokens per
segment, ``rollout.async.partial_tokens``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/async_rl.py                       # JAX engine, arms 0 1 2 2/p32, seeds 0-2
    .venv/bin/python benchmarks/async_rl.py --engine vllm         # needs `make vllm-env`

Writes ``benchmarks/results/async_rl_<engine>.json`` and ``async_rl_<engine>.png`` (batch accuracy
by step and by wall time, one line per arm, mean over seeds); once both engines have results,
``async_rl_engines.png`` puts their learning curves side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the root, first
    sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "r1_zero_tiny.yaml"
MODEL = ROOT / "r1jax" / "assets" / "tiny_base"


def worker(args: argparse.Namespace) -> None:
    """One arm: trains ``--steps`` steps against ``--server``, times each step, evaluates at the end."""
    from r1jax.train.config import load_experiment
    from r1jax.train.loop import Trainer

    overrides = [f"run.seed={args.seed}", f"run.steps={args.steps}", f"run.out_dir={args.run_dir}",
                 "run.name=arm", "run.progress=false", "run.tensorboard=false", "checkpoint.every=0",
                 "checkpoint.resume=false", "rollout.mode=remote", f"rollout.servers=[{args.server}]",
                 f"rollout.async.max_staleness={args.k}", f"rollout.async.partial_tokens={args.partial}",
                 "algo.tis=token", *args.set]
    trainer = Trainer(load_experiment(str(CONFIG), overrides))
    steps = []
    try:
        t_start = time.perf_counter()
        for step in range(args.steps):
            out = trainer.rl_step()
            m = out["metrics"]
            steps.append({"step": step, "wall_s": time.perf_counter() - t_start, "accuracy": m["accuracy"],
                          "reward": m["reward/total"], "staleness": m["staleness"],
                          "token_staleness": m.get("staleness/token_mean", m["staleness"]), "timing": out["timing"]})
        final = trainer.evaluate()
    finally:
        trainer.close()
    pathlib.Path(args.out).write_text(json.dumps({"steps": steps, "eval": final}))


def _pinned(core: int | None, cmd: list[str]) -> list[str]:
    return (["taskset", "-c", str(core)] if core is not None else []) + cmd


def start_server(engine: str, python: str, core: int | None, port_file: pathlib.Path) -> subprocess.Popen:
    cmd = [python, "-m", "r1jax.cli", "serve", "--engine", engine, "--model", str(MODEL), "--port", "0",
           "--port-file", str(port_file)]
    if engine == "vllm":
        cmd += ["--kv-cache-gib", "1"]  # compiled (not eager): its faster generation
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # vLLM is started outside the repository root (its own import paths); the JAX server anywhere
    return subprocess.Popen(_pinned(core, cmd), cwd=tempfile.gettempdir(), env=env,
                            stdout=subprocess.DEVNULL, stderr=open(port_file.with_suffix(".log"), "w"))


def wait_for_port(proc: subprocess.Popen, port_file: pathlib.Path, timeout: float = 600) -> int:
    """The server's port once it serves (its --port-file appears); fails if it exits first."""
    deadline = time.monotonic() + timeout
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None:
            raise RuntimeError(f"the rollout server exited ({proc.returncode}); see {port_file.with_suffix('.log')}")
        if time.monotonic() > deadline:
            raise TimeoutError("the rollout server did not start")
        time.sleep(0.5)  # polling a file another process writes; not a synchronisation stand-in
    return int(port_file.read_text().strip())


def warm_up(address: str, partials: set[int]) -> None:
    """Requests of the arms' shapes, so the server's sampler is compiled before any arm is timed: a
    step's batch, and for partial rollouts of S tokens the continuations (prompt + j·S tokens, one
    sample each, any number of rows: the sampler pads rows to powers of two, at most 64 per batch)."""
    from r1jax.rollout import RolloutClient
    from r1jax.rollout.types import GenerateRequest, SamplingParams

    client = RolloutClient([address], timeout=600)
    try:
        # distinct prompts: the sampler prefills each distinct prompt once (its prefill batch is their count)
        distinct = lambda rows, length: [[1 + r % 50, 1 + r // 50] + [3] * (length - 2) for r in range(rows)]  # noqa: E731
        client.generate(GenerateRequest(distinct(16, 10), SamplingParams(temperature=1.0, max_new_tokens=64, n=8,
                                                                          seed=0)))
        for size in sorted(partials):  # continuations: samples with equal prefixes share a prefill too
            for j in range(1, -(-64 // size)):
                for rows in (1, 2, 4, 8, 16, 32, 64):
                    for unique in (u for u in (1, 2, 4, 8, 16, 32, 64) if u <= rows):
                        prompts = distinct(unique, 10 + j * size)
                        client.generate(GenerateRequest([prompts[r % unique] for r in range(rows)], SamplingParams(
                            temperature=1.0, max_new_tokens=min(size, 64 - j * size), n=1, seed=0)))
    finally:
        client.close()


def first_reaching(steps: list[dict], target: float, window: int = 5) -> float | None:
    """Wall seconds at which the moving mean of ``window`` batch accuracies first reaches ``target``."""
    acc = [s["accuracy"] for s in steps]
    for i in range(window - 1, len(acc)):
        if statistics.fmean(acc[i - window + 1:i + 1]) >= target:
            return steps[i]["wall_s"]
    return None


def summarise(arm: list[dict], warmup: int, target: float) -> dict:
    from r1jax.eval.stats import t_interval

    per_seed = []
    for run in arm:
        st = run["steps"]
        dt = [b["wall_s"] - a["wall_s"] for a, b in zip(st[warmup - 1:], st[warmup:])]
        per_seed.append({"seed": run["seed"], "median_step_s": statistics.median(dt),
                         "steps_per_s": len(dt) / (st[-1]["wall_s"] - st[warmup - 1]["wall_s"]),
                         "time_to_target_s": first_reaching(st, target),
                         "final_accuracy": run["eval"]["eval/accuracy"],
                         "mean_staleness": statistics.fmean(s["staleness"] for s in st),
                         "mean_token_staleness": statistics.fmean(s.get("token_staleness", s["staleness"])
                                                                  for s in st)})
    out = {"per_seed": per_seed}
    for key in ("median_step_s", "steps_per_s", "final_accuracy"):
        values = [p[key] for p in per_seed]
        ci = t_interval(values) if len(values) > 1 else None
        out[key] = {"mean": statistics.fmean(values), "ci95": [ci.low, ci.high] if ci else None}
    reached = [p["time_to_target_s"] for p in per_seed if p["time_to_target_s"] is not None]
    out["time_to_target_s"] = {"mean": statistics.fmean(reached) if reached else None,
                               "reached": f"{len(reached)}/{len(per_seed)}"}
    return out


def parse_arm(arm: str) -> tuple[int, int]:
    """``"K"`` or ``"K/pS"`` -> (K, S); S = 0 without partial rollouts."""
    k, _, partial = arm.partition("/p")
    return int(k), int(partial or 0)


def arm_label(arm: str) -> str:
    k, partial = parse_arm(arm)
    return "sync" if k == 0 else f"async K={k}" + (f", partial {partial}" if partial else "")


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, arm in results["arms"].items():
        acc = np.mean([[s["accuracy"] for s in run["steps"]] for run in arm["runs"]], axis=0)
        wall = np.mean([[s["wall_s"] for s in run["steps"]] for run in arm["runs"]], axis=0)
        smooth = np.convolve(acc, np.ones(5) / 5, mode="valid")
        label = arm_label(k)
        axes[0].plot(np.arange(4, len(acc)), smooth, label=label)
        axes[1].plot(wall[4:], smooth, label=label)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("wall seconds (trainer)")
    for ax in axes:
        ax.set_ylabel("batch accuracy (moving mean of 5)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"r1jax sync vs async RL, {results['engine']} engine on core 0, trainer on core 1 "
                 f"(mean of {len(results['seeds'])} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_engines(paths: list[pathlib.Path], path: pathlib.Path) -> None:
    """Batch accuracy by step of every arm of every engine's results (solid: JAX, dashed: vLLM)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    for p in paths:
        results = json.loads(p.read_text())
        for i, (k, arm) in enumerate(results["arms"].items()):
            acc = np.mean([[s["accuracy"] for s in run["steps"]] for run in arm["runs"]], axis=0)
            smooth = np.convolve(acc, np.ones(5) / 5, mode="valid")
            ax.plot(np.arange(4, len(acc)), smooth, color=f"C{i}", ls="-" if results["engine"] == "jax" else "--",
                    label=f"{results['engine']}: {arm_label(k)}")
    ax.set_xlabel("step")
    ax.set_ylabel("batch accuracy (moving mean of 5)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("the demo task against r1jax serve: JAX engine vs vLLM-CPU engine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=("jax", "vllm"), default="jax")
    ap.add_argument("--server-python", default=None, help="python of the server (default: this one; "
                                                          "vllm: .venv-vllm/bin/python)")
    ap.add_argument("--arms", nargs="+", default=["0", "1", "2", "2/p32"],
                    help="K (rollout.async.max_staleness) or K/pS (and rollout.async.partial_tokens=S); 0 = sync")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3, help="first steps left out of the step times (compiles)")
    ap.add_argument("--target", type=float, default=0.6, help="batch accuracy of time-to-accuracy")
    ap.add_argument("--cores", type=int, nargs=2, default=[0, 1], help="server core, trainer core")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides of every arm (key=value)")
    ap.add_argument("--out", default=None)
    # one arm (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--partial", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    from benchmarks._machine import describe_machine

    server_python = args.server_python or (str(ROOT / ".venv-vllm" / "bin" / "python") if args.engine == "vllm"
                                           else sys.executable)
    out = pathlib.Path(args.out or ROOT / "benchmarks" / "results" / f"async_rl_{args.engine}.json")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="r1jax-async-bench-"))
    port_file = tmp / "port"
    for arm in args.arms:
        parse_arm(arm)  # a malformed arm fails here, before the server starts
    server = start_server(args.engine, server_python, args.cores[0], port_file)
    arms: dict[str, dict] = {arm: {"runs": []} for arm in args.arms}
    try:
        address = f"127.0.0.1:{wait_for_port(server, port_file)}"
        warm_up(address, {parse_arm(arm)[1] for arm in args.arms} - {0})
        for seed in args.seeds:
            for arm in args.arms:  # arms interleaved per seed: slow drift of the machine hits every arm alike
                k, partial = parse_arm(arm)
                name = f"k{k}p{partial}_s{seed}"
                result = tmp / f"{name}.json"
                cmd = [sys.executable, __file__, "--worker", "--server", address, "--k", str(k), "--partial",
                       str(partial), "--seed", str(seed), "--steps", str(args.steps), "--set", *args.set,
                       "--run-dir", str(tmp / f"runs_{name}"), "--out", str(result)]
                t0 = time.perf_counter()
                subprocess.run(_pinned(args.cores[1], cmd), check=True, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
                run = {"seed": seed, **json.loads(result.read_text())}
                arms[arm]["runs"].append(run)
                print(f"{arm_label(arm)} seed={seed}: {run['steps'][-1]['wall_s']:.1f} s for {args.steps} steps "
                      f"({time.perf_counter() - t0:.0f} s with start-up and eval), held-out accuracy "
                      f"{run['eval']['eval/accuracy']:.3f}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    for k, arm in arms.items():
        arm.update(summarise(arm["runs"], args.warmup, args.target))
    sync = arms.get("0")
    if sync is not None:
        for k, arm in arms.items():
            ratios = [a["steps_per_s"] / s["steps_per_s"] for a, s in zip(arm["per_seed"], sync["per_seed"])]
            arm["speedup_vs_sync"] = {"per_seed": ratios, "mean": statistics.fmean(ratios)}
    results = {"benchmark": "async_rl", "engine": args.engine, "machine": describe_machine(),
               "config": str(CONFIG.relative_to(ROOT)), "overrides": args.set, "steps": args.steps, "warmup": args.warmup,
               "seeds": args.seeds, "target_accuracy": args.target,
               "cores": {"server": args.cores[0], "trainer": args.cores[1]},
               "command": " ".join([pathlib.Path(sys.executable).name, *sys.argv]), "arms": arms}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out.with_suffix(".png"))
    engines = [out.parent / f"async_rl_{e}.json" for e in ("jax", "vllm")]
    if args.out is None and all(p.exists() for p in engines):
        plot_engines(engines, out.parent / "async_rl_engines.png")
    print(f"{'arm':>22s} {'s/step':>8s} {'steps/s':>8s} {'×sync':>6s} {'t→target':>9s} {'held-out acc [95% CI]':>24s}")
    for k, arm in arms.items():
        acc = arm["final_accuracy"]
        ttt = arm["time_to_target_s"]["mean"]
        print(f"{arm_label(k):>22s} {arm['median_step_s']['mean']:8.3f} "
              f"{arm['steps_per_s']['mean']:8.3f} {arm.get('speedup_vs_sync', {}).get('mean', float('nan')):6.2f} "
              f"{(f'{ttt:.0f} s' if ttt is not None else 'never'):>9s} "
              f"{acc['mean']:.3f} " + (f"[{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]" if acc["ci95"] else ""))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
