"""Seconds per GRPO step (rollout + reward + update): r1jax's ``Trainer`` vs TRL's ``GRPOTrainer``.

Both sides train the SAME tiny random Qwen2 (hidden 256, 4 layers, 4 query / 2 KV heads,
intermediate 512, vocab 512, float32; built once with ``transformers`` from a fixed seed and saved
with ``save_pretrained``) on the SAME 8 arithmetic prompts per step with 8 samples each (group size
8), exactly 64 new tokens per sample at temperature 1.0, the SAME rule reward (:func:`bench_reward`,
one Python function called by both), AdamW lr 1e-6 (β=(0.9, 0.999), no weight decay, global-norm
clip 1.0, constant schedule), one optimizer step per RL step, KL to the reference with β=0.04
(so both do a reference-model forward), clip ε=0.2, seq-mean-token-mean loss, float32, on CPU.
TRL generates with Hugging Face ``generate`` (``use_vllm=False``); r1jax with its embedded JAX
sampler.

Set-up, once (TRL lives in its own virtual environment, never in r1jax's dependencies)::

    python3 -m venv /tmp/venv-bench
    /tmp/venv-bench/bin/pip install torch==2.13.0            # first: the local CPU wheel
    /tmp/venv-bench/bin/pip install "trl==1.16.*" accelerate "transformers==5.23.0"
    /tmp/venv-bench/bin/pip list | grep -i nvidia              # must print nothing

Run (from the repository root; one command, both sides measured in this one invocation)::

    .venv/bin/python benchmarks/grpo_step.py

Options: ``--trl-python`` (default ``/tmp/venv-bench/bin/python``), ``--warmup 2``,
``--steps 7`` (measured steps per side), ``--runs 1`` (repeat each comparison with fresh
processes), ``--threads 2`` (comma-separated, e.g. ``2,1``: one comparison per setting, the first
is the headline; ``torch.set_num_threads(n)``, and XLA's default pool when n is at least the core
count, else ``intra_op_parallelism_threads=n``), ``--out benchmarks/results/grpo_step.json``.
The committed result was made with ``--runs 2 --threads 1,2`` (see its ``command``): on a shared,
oversubscribed machine torch's two OpenMP threads spend most of a step waiting for each other
(process CPU time per step is recorded next to wall time), so one thread per side is the
comparison that measures the frameworks rather than the scheduler; two threads each, as
first planned, is reported beside it.

How it runs: this driver (r1jax's venv) builds the model directory and the prompt list, then
starts two worker processes, ``--worker r1jax`` (r1jax's venv) and ``--worker trl`` (the bench
venv), and steps them in lock-step, one RL step at a time, alternating which side goes first
(so load changes on a shared machine hit both alike; the waiting side is blocked on a pipe and
uses no CPU). r1jax's step is ``Trainer.rl_step()`` timed around the call (its result is on the
host when it returns); TRL's step is the time from ``on_step_begin`` to ``on_step_end`` of a
``TrainerCallback`` (generation, reward, reference forward, forward/backward and the optimizer
step; the Trainer's own logging after ``on_step_end`` is not counted). The first ``--warmup``
steps of each side (JAX compilation, torch first calls) are excluded; medians of the rest are
compared. Results, the machine, the versions, the load average and the asymmetries that could
not be removed go to ``benchmarks/results/grpo_step.json``.

Exactly 64 tokens on both sides: TRL is given ``generation_kwargs={"min_new_tokens": 64}``
(Hugging Face masks EOS for the first 64 tokens); r1jax's Trainer stops on its tokenizer's EOS
ids, so it is given the same character tokenizer saved without an EOS token (``model.tokenizer``
pointing at a second directory): no stop ids, every sample runs to ``max_new_tokens``.
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
# The repository root goes on sys.path in main(), except in the TRL worker: there the root's
# `kernels/` directory would shadow Hugging Face's optional `kernels` package and break transformers.

REWARD_NAME = "bench_digit_share"
MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=512, vocab_size=512, max_position_embeddings=512)
PROMPTS_PER_STEP = 8
GROUP_SIZE = 8
MAX_NEW_TOKENS = 64
LR = 1e-6
BETA = 0.04
CLIP_EPS = 0.2
SEED = 0


def bench_reward(prompt: str, completion: str, reference=None) -> float:
    """The benchmark's rule reward, called per sample by both trainers: the share of decimal digits
    among the completion's non-space characters, plus 1 when it contains the reference answer.
    Cheap, pure Python, and varied enough on a random model that group advantages are not all zero."""
    chars = [c for c in completion if not c.isspace()]
    digits = sum(c.isdigit() for c in chars) / max(len(chars), 1)
    return float(digits + (1.0 if reference is not None and str(reference) in completion else 0.0))


# ----------------------------------------------------------------------------------- worker protocol
# Workers answer on a private copy of their original stdout; their fd 1 is pointed at stderr so
# that library prints (the Trainer's log lines, JAX warnings) cannot corrupt the protocol.


def _protocol_channel():
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _send(chan, obj) -> None:
    chan.write(json.dumps(obj) + "\n")
    chan.flush()


def _wait_command() -> str:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("driver closed the pipe")
    return line.strip()


def _worker_r1jax(work: pathlib.Path, total_steps: int) -> None:
    chan = _protocol_channel()
    import jax
    import jaxlib
    import optax
    import flax

    import benchmarks.grpo_step as this  # the importable module, not __main__
    from r1jax.config import from_dict
    from r1jax.rewards import register_reward
    from r1jax.train.config import ExperimentConfig
    from r1jax.train.loop import Trainer

    register_reward(REWARD_NAME, this.bench_reward, description="benchmarks/grpo_step.py: digit share + answer")
    cfg = from_dict(ExperimentConfig, {
        "run": {"name": "bench", "out_dir": str(work / "r1jax_runs"), "seed": SEED, "steps": total_steps,
                "tensorboard": False, "progress": False},
        "model": {"path": str(work / "model"), "tokenizer": str(work / "tokenizer_no_eos")},
        "data": {"task": "arithmetic", "difficulty": 2, "operations": ["+"], "template": "plain", "seed": SEED},
        "reward": {"num_workers": 0, "components": [{"name": REWARD_NAME, "weight": 1.0}]},
        "algo": {"name": "grpo", "kl_coef": BETA, "kl_estimator": "k3", "eps_low": CLIP_EPS,
                 "eps_high": CLIP_EPS, "loss_agg": "seq_mean_token_mean", "ref_update_every": 0,
                 "num_epochs": 1, "num_minibatches": 1, "num_microbatches": 1},
        "optim": {"lr": LR, "b1": 0.9, "b2": 0.999, "weight_decay": 0.0, "grad_clip": 1.0, "warmup_steps": 0},
        "rollout": {"mode": "embedded", "prompts_per_step": PROMPTS_PER_STEP, "group_size": GROUP_SIZE,
                    "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": MAX_NEW_TOKENS},
        "checkpoint": {"resume": False},
    })
    trainer = Trainer(cfg, run_dir=work / "r1jax_runs" / "bench")
    # Timing split only: the jitted update (its reference forward included) inside the "train" phase.
    phase_seconds: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a):
            start = time.perf_counter()
            out = jax.block_until_ready(fn(*a))
            phase_seconds[name] = phase_seconds.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    trainer.update = timed("update", trainer.update)
    if trainer.tokenizer.eos_ids:
        raise SystemExit(f"r1jax side: the benchmark tokenizer must have no stop ids, got {trainer.tokenizer.eos_ids}")
    _send(chan, {"ready": True, "versions": {
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__},
        "jax_devices": [str(d) for d in jax.devices()],
        "logprob_backend": cfg.kernels.logprob_backend})
    while _wait_command() == "step":
        start, cpu = time.perf_counter(), time.process_time()
        out = trainer.rl_step()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        m, timing = out["metrics"], out["timing"]
        timing = {k: v for k, v in timing.items() if k != "tokens_per_s"}
        timing.update({f"train.{k}": v for k, v in phase_seconds.items()})
        phase_seconds.clear()
        _send(chan, {"seconds": seconds, "cpu_seconds": cpu, "timing": timing,
                     "mean_new_tokens": m["response_length/mean"],
                     "new_tokens": m["response_length/mean"] * PROMPTS_PER_STEP * GROUP_SIZE,
                     "reward": m["reward/total"], "loss": m.get("loss"), "skipped": m.get("skipped")})


def _worker_trl(work: pathlib.Path, total_steps: int, threads: int) -> None:
    chan = _protocol_channel()
    import accelerate
    import datasets
    import torch
    import transformers
    import trl

    torch.set_num_threads(threads)
    this = sys.modules[__name__]  # this file (run as a script): the same bench_reward as the r1jax side

    prompts = json.loads((work / "prompts.json").read_text())
    dataset = datasets.Dataset.from_dict({"prompt": [p["prompt"] for p in prompts],
                                          "reference": [p["reference"] for p in prompts]})

    def reward_fn(prompts, completions, reference, **kwargs):
        return [this.bench_reward(p, c, r) for p, c, r in zip(prompts, completions, reference)]

    reward_fn.__name__ = REWARD_NAME

    class StepClock(transformers.TrainerCallback):
        trainer = None
        start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if _wait_command() != "step":
                raise SystemExit("driver stopped the TRL worker")
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            seconds, cpu = time.perf_counter() - self.start, time.process_time() - self.cpu
            split = dict(phase_seconds)
            phase_seconds.clear()
            prep = split.pop("prepare", 0.0)
            split = {"rollout": split.get("generate", 0.0), "reward": split.get("reward", 0.0),
                     "ref_logp_and_advantages": prep - split.get("generate", 0.0) - split.get("reward", 0.0),
                     "train": seconds - prep}
            metrics = self.trainer._metrics["train"]
            last = {k: (float(v[-1]) if len(v) else None) for k, v in metrics.items()}
            _send(chan, {"seconds": seconds, "cpu_seconds": cpu, "timing": split,
                         "mean_new_tokens": last.get("completions/mean_length"),
                         "new_tokens": (last.get("completions/mean_length") or 0.0) * PROMPTS_PER_STEP * GROUP_SIZE,
                         "clipped_ratio": last.get("completions/clipped_ratio"),
                         "reward": last.get("reward")})

    torch.manual_seed(SEED)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(work / "model"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32)
    config = trl.GRPOConfig(
        output_dir=str(work / "trl_out"), use_cpu=True, seed=SEED, max_steps=total_steps,
        per_device_train_batch_size=PROMPTS_PER_STEP * GROUP_SIZE, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=GROUP_SIZE, num_iterations=1,
        max_completion_length=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"min_new_tokens": MAX_NEW_TOKENS},
        use_vllm=False, bf16=False, fp16=False, gradient_checkpointing=False,
        beta=BETA, epsilon=CLIP_EPS, loss_type="grpo", scale_rewards="group",
        learning_rate=LR, adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, shuffle_dataset=False,
        report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0,
    )
    clock = StepClock()
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward_fn], args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[clock])
    clock.trainer = trainer
    # Timing split only: the trainer's own methods, wrapped to record their wall time per step.
    phase_seconds: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phase_seconds[name] = phase_seconds.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    trainer._generate_single_turn = timed("generate", trainer._generate_single_turn)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("prepare", trainer._generate_and_score_completions)
    _send(chan, {"ready": True, "versions": {
        "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
        "accelerate": accelerate.__version__, "datasets": datasets.__version__},
        "torch_threads": torch.get_num_threads(),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "eos_token_ids": list(trainer.eos_token_ids)})
    trainer.train()
    _wait_command()  # the driver's final "quit"


# ----------------------------------------------------------------------------------- driver


def _build_inputs(work: pathlib.Path, num_prompts: int) -> dict:
    """The model directory (random Qwen2 + char tokenizer with EOS), the no-EOS tokenizer directory
    of the r1jax side, and the prompts (in r1jax's iterator order) for TRL's dataset."""
    import torch
    import transformers

    from r1jax.data import DataConfig, PromptIterator, make_dataset
    from r1jax.data.templates import render_prompt
    from r1jax.data.tokenizer import Tokenizer, build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(SEED)
    hf_cfg = transformers.Qwen2Config(**MODEL, tie_word_embeddings=False, rope_theta=10000.0,
                                      bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    model = transformers.Qwen2ForCausalLM(hf_cfg).to(torch.float32)
    model.save_pretrained(work / "model")
    tok.save(work / "model")
    no_eos = Tokenizer(tok.backend, bos_token=tok.bos_token, eos_token=None, pad_token=tok.pad_token,
                       unk_token=tok.unk_token, chat_template=tok.chat_template)
    no_eos.save(work / "tokenizer_no_eos")

    data_cfg = DataConfig(task="arithmetic", difficulty=2, operations=("+",), template="plain", seed=SEED)
    it = PromptIterator(make_dataset(data_cfg, "train"), PROMPTS_PER_STEP, seed=data_cfg.seed)
    prompts = []
    while len(prompts) < num_prompts:
        for e in next(it):
            prompts.append({"prompt": render_prompt(e, "plain"), "reference": str(e["reference"])})
    (work / "prompts.json").write_text(json.dumps(prompts))
    lengths = [len(tok.encode(p["prompt"])) for p in prompts]
    return {"num_parameters": sum(p.numel() for p in model.parameters()),
            "prompt_tokens_mean": statistics.fmean(lengths), "prompt_tokens_max": max(lengths),
            "example_prompt": prompts[0]["prompt"]}


class _Worker:
    def __init__(self, name, python, work, total_steps, threads, log):
        env = dict(os.environ)
        env.pop("XLA_FLAGS", None)  # one CPU device, XLA's default thread pool ...
        if threads < (os.cpu_count() or 1):  # ... or as many threads as torch gets
            env["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}"
        env["JAX_PLATFORMS"] = "cpu"
        if name == "r1jax":
            env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["TOKENIZERS_PARALLELISM"] = "false"
        self.name = name
        self.proc = subprocess.Popen(
            [python, str(pathlib.Path(__file__).resolve()), "--worker", name, "--work", str(work),
             "--total-steps", str(total_steps), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=str(ROOT))

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker exited (rc={self.proc.wait()}); see its log")
        return json.loads(line)

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _run_once(args, work: pathlib.Path, log, threads: int) -> dict:
    total = args.warmup + args.steps
    load_before = os.getloadavg()
    r1 = _Worker("r1jax", sys.executable, work, total, threads, log)
    tr = _Worker("trl", args.trl_python, work, total, threads, log)
    try:
        ready = {"r1jax": r1.read(), "trl": tr.read()}
        steps = {"r1jax": [], "trl": []}
        loads = []
        for i in range(total):
            order = (r1, tr) if i % 2 == 0 else (tr, r1)
            for w in order:
                rec = w.step()
                rec["step"] = i
                steps[w.name].append(rec)
            loads.append(os.getloadavg()[0])
            print(f"threads {threads} step {i}: r1jax {steps['r1jax'][-1]['seconds']:.2f}s  "
                  f"trl {steps['trl'][-1]['seconds']:.2f}s  load {loads[-1]:.2f}", file=sys.stderr, flush=True)
    finally:
        r1.close()
        tr.close()
    out = {"threads": threads, "load_average_before": load_before, "load_average_1min_per_step": loads,
           "load_average_after": os.getloadavg(), "workers": ready}
    for side in ("r1jax", "trl"):
        measured = steps[side][args.warmup:]
        secs = [r["seconds"] for r in measured]
        toks = [r["new_tokens"] for r in measured]
        out[side] = {
            "warmup_seconds": [r["seconds"] for r in steps[side][:args.warmup]],
            "seconds": secs, "median_s": statistics.median(secs), "min_s": min(secs),
            "cpu_seconds": [r["cpu_seconds"] for r in measured],
            "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in measured),
            "new_tokens_per_step": toks,
            "mean_new_tokens_per_sample": statistics.fmean(r["mean_new_tokens"] for r in measured),
            "new_tokens_per_s_median": statistics.median(t / s for t, s in zip(toks, secs)),
            "reward_mean": statistics.fmean(r["reward"] for r in measured if r["reward"] is not None),
            "timing_split_median_s": {k: statistics.median(r["timing"][k] for r in measured)
                                      for k in measured[-1]["timing"]},
        }
    out["trl"]["clipped_ratio_mean"] = statistics.fmean(
        r["clipped_ratio"] for r in steps["trl"][args.warmup:] if r["clipped_ratio"] is not None)
    out["ratio_trl_over_r1jax_median"] = out["trl"]["median_s"] / out["r1jax"]["median_s"]
    out["ratio_trl_over_r1jax_min"] = out["trl"]["min_s"] / out["r1jax"]["min_s"]
    return out


def _summary(runs: list[dict]) -> dict:
    """Medians and minima over every measured step of the given runs (one thread setting)."""
    pooled = {side: [x for run in runs for x in run[side]["seconds"]] for side in ("r1jax", "trl")}
    cpu = {side: [x for run in runs for x in run[side]["cpu_seconds"]] for side in ("r1jax", "trl")}
    med = {side: statistics.median(v) for side, v in pooled.items()}
    low = {side: min(v) for side, v in pooled.items()}
    return {"threads": runs[0]["threads"], "runs": len(runs), "measured_steps_per_side": len(pooled["r1jax"]),
            "r1jax_median_s": med["r1jax"], "trl_median_s": med["trl"],
            "ratio_trl_over_r1jax": med["trl"] / med["r1jax"],
            "r1jax_min_s": low["r1jax"], "trl_min_s": low["trl"], "ratio_of_minima": low["trl"] / low["r1jax"],
            "r1jax_cpu_seconds_median": statistics.median(cpu["r1jax"]),
            "trl_cpu_seconds_median": statistics.median(cpu["trl"]),
            "ratio_per_run": [run["ratio_trl_over_r1jax_median"] for run in runs],
            "load_average_1min_range": [min(l for run in runs for l in run["load_average_1min_per_step"]),
                                        max(l for run in runs for l in run["load_average_1min_per_step"])]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trl-python", default="/tmp/venv-bench/bin/python", help="python of the TRL venv")
    parser.add_argument("--warmup", type=int, default=2, help="excluded first steps per side")
    parser.add_argument("--steps", type=int, default=7, help="measured steps per side")
    parser.add_argument("--runs", type=int, default=1, help="repeat each comparison with fresh processes")
    parser.add_argument("--threads", default="2",
                        help="comma-separated thread counts, one comparison each; the first is the headline. "
                             "torch.set_num_threads(n); XLA: its default pool when n >= the core count, else "
                             "intra_op_parallelism_threads=n")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grpo_step.json"))
    parser.add_argument("--worker", choices=("r1jax", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--total-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker != "trl" and str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # `python benchmarks/grpo_step.py` puts benchmarks/, not the root, first

    if args.worker == "r1jax":
        return _worker_r1jax(pathlib.Path(args.work), args.total_steps)
    if args.worker == "trl":
        return _worker_trl(pathlib.Path(args.work), args.total_steps, int(args.threads))
    try:
        thread_settings = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads: expected comma-separated integers, got {args.threads!r}")
    if args.steps < 1 or args.warmup < 0 or args.runs < 1 or min(thread_settings) < 1:
        parser.error("--steps, --runs and --threads must be >= 1, --warmup >= 0")
    if not pathlib.Path(args.trl_python).is_file():
        parser.error(f"--trl-python {args.trl_python} not found: create the bench venv (see the top of this file)")

    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.pop("XLA_FLAGS", None)
    runs = []
    with tempfile.TemporaryDirectory(prefix="grpo_step_") as tmp:
        work = pathlib.Path(tmp)
        inputs = _build_inputs(work, (args.warmup + args.steps) * PROMPTS_PER_STEP)
        with open(work / "workers.log", "w") as log:
            try:
                for r in range(args.runs):  # thread settings interleaved run by run
                    for threads in thread_settings:
                        print(f"run {r + 1}/{args.runs}, threads {threads}", file=sys.stderr, flush=True)
                        runs.append(_run_once(args, work, log, threads))
            except RuntimeError:
                log.flush()
                print("--- worker log (tail) ---\n" + (work / "workers.log").read_text()[-6000:], file=sys.stderr)
                raise
        log_tail = (work / "workers.log").read_text()[-4000:]

    from benchmarks._machine import describe_machine

    summaries = [_summary([run for run in runs if run["threads"] == t]) for t in thread_settings]
    head = summaries[0]
    result = {
        "benchmark": "grpo_step",
        "machine": describe_machine(),
        "command": ".venv/bin/python benchmarks/grpo_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": {"r1jax_side": runs[0]["workers"]["r1jax"]["versions"],
                     "trl_side": runs[0]["workers"]["trl"]["versions"]},
        "config": {
            "model": {"architecture": "Qwen2ForCausalLM (random, torch.manual_seed(0))", **MODEL,
                      "tie_word_embeddings": False, "dtype": "float32", **inputs},
            "tokenizer": "r1jax char tokenizer (104 ids; ids >= 104 decode to nothing)",
            "prompts": "arithmetic task, difficulty 2, 'plain' template, r1jax's iterator order on both sides",
            "prompts_per_step": PROMPTS_PER_STEP, "group_size": GROUP_SIZE, "max_new_tokens": MAX_NEW_TOKENS,
            "forced_length": "TRL: generation_kwargs min_new_tokens=64; r1jax: tokenizer without EOS (no stop ids)",
            "temperature": 1.0, "top_p": 1.0, "top_k": 0, "reward": "bench_reward (same function both sides)",
            "optimizer": {"name": "AdamW", "lr": LR, "betas": [0.9, 0.999], "weight_decay": 0.0,
                          "grad_clip": 1.0, "schedule": "constant"},
            "kl_beta": BETA, "kl_estimator": "k3", "clip_eps": CLIP_EPS,
            "loss": "seq-mean-token-mean (TRL loss_type=grpo)", "optimizer_steps_per_rl_step": 1,
            "device": "cpu", "thread_settings": thread_settings, "warmup_steps_excluded": args.warmup,
            "measured_steps_per_run": args.steps, "runs_per_setting": args.runs,
            "interleaving": "lock-step, one RL step per side in turn, first side alternates",
            "r1jax_logprob_backend": runs[0]["workers"]["r1jax"]["logprob_backend"],
            "trl_attn_implementation": runs[0]["workers"]["trl"]["attn_implementation"],
            "trl_eos_token_ids": runs[0]["workers"]["trl"]["eos_token_ids"],
        },
        "threads": head["threads"],
        "r1jax_median_s": head["r1jax_median_s"],
        "trl_median_s": head["trl_median_s"],
        "ratio_trl_over_r1jax": head["ratio_trl_over_r1jax"],
        "ratio_of_minima": head["ratio_of_minima"],
        "ratio_per_run": head["ratio_per_run"],
        "summaries": summaries,
        "runs": [{k: v for k, v in run.items() if k != "workers"} for run in runs],
        "notes": [
            "Step time of r1jax = Trainer.rl_step() (rollout, reward, old/ref log-prob forwards, one optimizer step, "
            "weight push to the embedded engine). Step time of TRL = on_step_begin..on_step_end (generation, reward, "
            "reference forward, forward/backward, optimizer step); the Trainer's logging after on_step_end and the "
            "dataloader fetch before on_step_begin are not counted.",
            "Timing splits: r1jax's are Trainer.rl_step's own (its 'train' phase further split into the two "
            "log-prob forwards and the jitted update); TRL's come from wrapping _generate_single_turn (rollout), "
            "_calculate_rewards (reward) and _generate_and_score_completions (rollout + reward + reference "
            "forward + advantages); 'train' is the rest of the step (forward/backward, optimizer).",
            "r1jax computes the old-policy log-probs with a separate forward pass every step (its loop always does); "
            "TRL skips that forward when num_iterations=1 and generation is on-policy (it uses the detached current "
            "log-probs). r1jax therefore does one more forward over the batch per step.",
            "r1jax pads rows to a multiple of 32 tokens (shape reuse across steps: 6 + 64 = 70 -> 96 here); "
            "TRL pads to the longest row (70).",
            "TRL computes per-token entropies in its loss for logging; r1jax computes its own metrics. Both are "
            "each trainer's normal behaviour and are left in.",
            "Exact 64 tokens: HF masks EOS for the first 64 tokens (min_new_tokens), r1jax has no stop ids, so a "
            "sampled EOS id is an ordinary token there. Neither side stops early; both train on 64 completion tokens.",
            "The machine is shared with other jobs (load averages per step are recorded): minima are the least "
            "disturbed steps, medians the typical ones. cpu_seconds = process CPU time per step (all threads).",
            "Threads: n=1 runs torch with set_num_threads(1) and XLA with intra_op_parallelism_threads=1 and "
            "--xla_cpu_multi_thread_eigen=false; n>=2 (= the core count here) runs torch with n threads and XLA "
            "with its default pool. With the machine oversubscribed (1-min load above the core count), torch's "
            "OpenMP threads wait on each other at the end of each of the thousands of small ops of a step (compare "
            "TRL's cpu_seconds at n=2 and n=1); XLA's step time barely changes with n. The headline is the "
            "first thread setting of the command line.",
        ],
        "worker_log_tail": log_tail.splitlines()[-12:],
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summaries, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
