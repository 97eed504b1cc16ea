"""Seconds per GRPO step (rollout + reward + update): r1jax's ``Trainer`` vs TRL's ``GRPOTrainer``,
both pinned to the same cores, with each side's achieved GFLOP/s next to the measured matmul peak.

Both sides train the SAME tiny random Qwen2 (hidden 256, 4 layers, 4 query / 2 KV heads,
intermediate 512, vocab 512, float32 parameters; built once with ``transformers`` from a fixed seed
and saved with ``save_pretrained``) on the SAME arithmetic prompts with group size G, exactly T new
tokens per sample at temperature 1.0, the SAME rule reward (:func:`bench_reward`, one Python
function called by both), AdamW lr 1e-6 (β=(0.9, 0.999), no weight decay, global-norm clip 1.0,
constant schedule), one optimizer step per RL step, KL to the reference with β=0.04 (so both do a
reference-model forward), clip ε=0.2, seq-mean-token-mean loss, on CPU. TRL generates with Hugging
Face ``generate`` (``use_vllm=False``); r1jax with its embedded JAX sampler.

Shapes (``--shapes``): ``base`` = 8 prompts × G 8 × T 64 (the Speed issue's profile), ``x4`` =
16 prompts × 8 × 128 (4× the tokens per step). ``--scaling`` instead runs r1jax alone over
(G, T) = (8, 64), (16, 64), (16, 128), (32, 128): G·T doubling each time, every side at every
shape in one lock-step, and reports each doubling's step-time ratio as the median over rounds
of the paired ratio (the two shapes' steps of the same round) with a 95% bootstrap interval.

Set-up, once (TRL lives in its own virtual environment, never in r1jax's dependencies)::

    python3 -m venv /tmp/venv-bench
    /tmp/venv-bench/bin/pip install torch==2.13.0            # first: the local CPU wheel
    /tmp/venv-bench/bin/pip install "trl==1.16.*" accelerate "transformers==5.23.0"
    /tmp/venv-bench/bin/pip list | grep -i nvidia              # must print nothing

Run (from the repository root; one command, every side measured in this one invocation)::

    .venv/bin/python benchmarks/grpo_step.py --cores 1,2 --shapes base,x4 \
        --r1jax-variant bf16:model.compute_dtype=bfloat16,algo.num_microbatches=4
    .venv/bin/python benchmarks/grpo_step.py --scaling --cores 1 --out benchmarks/results/grpo_step_scaling.json

Cores: each worker process is pinned with ``os.sched_setaffinity`` to the first n cores of the
driver's affinity before it starts (XLA sizes its thread pool from the affinity; an XLA thread
flag does not stop its matmul library from using every core, pinning does), and torch gets
``set_num_threads(n)``. r1jax variants (``--r1jax-variant NAME:key=value,...``, repeatable) are
extra r1jax workers with config overrides, measured in the same lock-step as the others; the
plain r1jax worker (``f32``: float32 compute, one micro-batch) is always run. Workers step one RL
step at a time in turn, the first side alternating, so load changes hit every side alike (a
waiting side blocks on a pipe and uses no CPU).

What is timed: r1jax's step is ``Trainer.rl_step()`` (its result is on the host when it
returns); TRL's is ``on_step_begin`` to ``on_step_end`` of a ``TrainerCallback`` (generation,
reward, reference forward, forward/backward and the optimizer step). The first ``--warmup`` steps
(compilation, first calls) are excluded; medians of the rest are compared.

FLOPs (:func:`step_flops`): the useful work of a step, counted the same for every side: the
generation (each prompt token and each new token once through the model, attention over the
causal prefix), the reference forward and the policy forward + backward (3 forwards) over the
real tokens (prompt + completion). Padding, recomputation and per-sample prefills are not
counted. GFLOP/s = that ÷ the median step time; the floor = that ÷ the worker's measured matmul
peak (a [4608, 256] × [256, 512] matmul, this model's MLP shape at the base shape, and a 1024³
one; the larger of the two), float32 (and bfloat16 for XLA).

Exactly T tokens on both sides: TRL is given ``generation_kwargs={"min_new_tokens": T}`` (Hugging
Face masks EOS for the first T tokens); r1jax's Trainer stops on its tokenizer's EOS ids, so it
is given the same character tokenizer saved without an EOS token (``model.tokenizer`` pointing at
a second directory): no stop ids, every sample runs to ``max_new_tokens``.
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
# The repository root goes on sys.path in main() (the TRL worker imports only benchmarks._flops from it).

REWARD_NAME = "bench_digit_share"
MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=512, vocab_size=512, max_position_embeddings=512)
SHAPES = {"base": dict(prompts=8, group=8, new_tokens=64), "x4": dict(prompts=16, group=8, new_tokens=128)}
SCALING = [(8, 64), (16, 64), (16, 128), (32, 128)]  # (G, T): G·T doubles each time; 8 prompts
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


def step_flops(prompts: int, group: int, prompt_tokens: float, new_tokens: int) -> dict:
    """The useful FLOPs of one GRPO step with a reference model (see the module docstring and
    ``benchmarks/_flops.py``): generation (one prefill per prompt, each new token once), the
    reference forward and the policy forward + backward (3×) over every sample's prompt + completion."""
    from benchmarks._flops import forward_flops, generation_flops

    dims = dict(hidden=MODEL["hidden_size"], layers=MODEL["num_hidden_layers"], heads=MODEL["num_attention_heads"],
                kv_heads=MODEL["num_key_value_heads"], intermediate=MODEL["intermediate_size"],
                vocab=MODEL["vocab_size"])
    generation = generation_flops(dims, prompts=prompts, samples=group, prompt_tokens=prompt_tokens,
                                  new_tokens=new_tokens)
    one_pass = forward_flops(**dims, tokens=prompt_tokens + new_tokens, sequences=prompts * group)
    return {"generation": generation, "reference_forward": one_pass, "policy_forward_backward": 3 * one_pass,
            "total": generation + 4 * one_pass}


def _matmul_peak(framework: str) -> dict:
    from benchmarks._flops import matmul_peak

    return matmul_peak(framework)


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


def _answer_peak(chan, framework: str) -> None:
    """Measures the matmul peak when the driver asks (one worker at a time, the others idle)."""
    if _wait_command() != "peak":
        raise SystemExit("driver did not ask for the matmul peak")
    _send(chan, {"matmul_peak_gflops": _matmul_peak(framework)})


def _overrides(text: str) -> dict:
    """``key=value,key=value`` (values parsed as YAML scalars) -> {"section.key": value}."""
    import yaml

    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--r1jax-variant: expected section.key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _worker_r1jax(work: pathlib.Path, spec: dict) -> None:
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
    config = {
        "run": {"name": "bench", "out_dir": str(work / "r1jax_runs"), "seed": SEED, "steps": spec["total_steps"],
                "tensorboard": False, "progress": False},
        "model": {"path": str(work / "model"), "tokenizer": str(work / "tokenizer_no_eos")},
        "data": {"task": "arithmetic", "difficulty": 2, "operations": ["+"], "template": "plain", "seed": SEED},
        "reward": {"num_workers": 0, "components": [{"name": REWARD_NAME, "weight": 1.0}]},
        "algo": {"name": "grpo", "kl_coef": BETA, "kl_estimator": "k3", "eps_low": CLIP_EPS,
                 "eps_high": CLIP_EPS, "loss_agg": "seq_mean_token_mean", "ref_update_every": 0,
                 "num_epochs": 1, "num_minibatches": 1, "num_microbatches": 1},
        "optim": {"lr": LR, "b1": 0.9, "b2": 0.999, "weight_decay": 0.0, "grad_clip": 1.0, "warmup_steps": 0},
        "rollout": {"mode": "embedded", "prompts_per_step": spec["prompts"], "group_size": spec["group"],
                    "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": spec["new_tokens"]},
        "checkpoint": {"resume": False},
    }
    for key, value in spec["overrides"].items():
        section, name = key.split(".", 1)
        config[section][name] = value
    cfg = from_dict(ExperimentConfig, config)
    trainer = Trainer(cfg, run_dir=work / "r1jax_runs" / spec["name"], overwrite=True)
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
        "jax_devices": [str(d) for d in jax.devices()], "cores": sorted(os.sched_getaffinity(0)),
        "overrides": spec["overrides"], "logprob_backend": cfg.kernels.logprob_backend})
    _answer_peak(chan, "xla")
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
                     "reward": m["reward/total"], "loss": m.get("loss"), "skipped": m.get("skipped")})


def _worker_trl(work: pathlib.Path, spec: dict) -> None:
    chan = _protocol_channel()
    import accelerate
    import datasets
    import torch
    import transformers
    import trl

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    this = sys.modules[__name__]  # this file (run as a script): the same bench_reward as the r1jax side
    prompts_per_step, group, new_tokens = spec["prompts"], spec["group"], spec["new_tokens"]

    prompts = json.loads((work / "prompts.json").read_text())
    dataset = datasets.Dataset.from_dict({"prompt": [p["prompt"] for p in prompts],
                                          "reference": [p["reference"] for p in prompts]})

    def reward_fn(prompts, completions, reference, **kwargs):
        return [this.bench_reward(p, c, r) for p, c, r in zip(prompts, completions, reference)]

    reward_fn.__name__ = REWARD_NAME
    phase_seconds: dict[str, float] = {}

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
                         "clipped_ratio": last.get("completions/clipped_ratio"),
                         "reward": last.get("reward")})

    torch.manual_seed(SEED)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(work / "model"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32)
    config = trl.GRPOConfig(
        output_dir=str(work / "trl_out"), use_cpu=True, seed=SEED, max_steps=spec["total_steps"],
        per_device_train_batch_size=prompts_per_step * group, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=group, num_iterations=1,
        max_completion_length=new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"min_new_tokens": new_tokens},
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

    def timed(name, fn):  # timing split only: the trainer's own methods, wrapped
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
        "torch_threads": torch.get_num_threads(), "cores": sorted(os.sched_getaffinity(0)),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "eos_token_ids": list(trainer.eos_token_ids)})
    _answer_peak(chan, "torch")
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
    it = PromptIterator(make_dataset(data_cfg, "train"), 8, seed=data_cfg.seed)
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
    """One side as a child process pinned to ``cores``, stepped over a pipe."""

    def __init__(self, name: str, side: str, python: str, work: pathlib.Path, spec: dict, cores: list[int], log):
        env = dict(os.environ)
        env.pop("XLA_FLAGS", None)  # one CPU device; XLA sizes its pool from the affinity
        env["JAX_PLATFORMS"] = "cpu"
        if side == "r1jax":
            env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["TOKENIZERS_PARALLELISM"] = "false"
        self.name = name
        spec_file = work / f"spec_{name}.json"
        spec_file.write_text(json.dumps({**spec, "name": name}))
        self.proc = subprocess.Popen(
            [python, str(pathlib.Path(__file__).resolve()), "--worker", side, "--work", str(work),
             "--spec", str(spec_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=str(ROOT),
            preexec_fn=lambda: os.sched_setaffinity(0, cores))

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


def _lock_step(args, work: pathlib.Path, log, pinned: list[int], entries: list[tuple[str, str, dict, dict]]):
    """Starts one worker per entry (name, kind, r1jax overrides, shape) and steps them in turn.

    Returns (each worker's start-up record, each worker's step records, the 1-minute load after
    each round).
    """
    total = args.warmup + args.steps
    workers = []
    try:
        for name, kind, overrides, shape in entries:
            python = sys.executable if kind == "r1jax" else args.trl_python
            spec = {**shape, "total_steps": total, "overrides": overrides}
            workers.append(_Worker(name, kind, python, work, spec, pinned, log))
        ready = {w.name: w.read() for w in workers}
        for w in workers:  # after every start-up (compilation) is over, one at a time
            w.proc.stdin.write("peak\n")
            w.proc.stdin.flush()
            ready[w.name].update(w.read())
        steps = {w.name: [] for w in workers}
        loads = []
        for i in range(total):
            k = i % len(workers)  # the first side rotates
            for w in workers[k:] + workers[:k]:
                rec = w.step()
                rec["step"] = i
                steps[w.name].append(rec)
            loads.append(os.getloadavg()[0])
            print(f"cores {len(pinned)} step {i}: " + "  ".join(f"{n} {steps[n][-1]['seconds']:.2f}s" for n in steps)
                  + f"  load {loads[-1]:.2f}", file=sys.stderr, flush=True)
    finally:
        for w in workers:
            w.close()
    return ready, steps, loads


def _summary(args, recs: list[dict], peak: dict, flops: dict) -> dict:
    """One side's measured steps: median, timing split, GFLOP/s and the float32 floor."""
    measured = recs[args.warmup:]
    secs = [r["seconds"] for r in measured]
    med = statistics.median(secs)
    return {
        "warmup_seconds": [r["seconds"] for r in recs[:args.warmup]],
        "seconds": secs, "median_s": med, "min_s": min(secs),
        "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in measured),
        "mean_new_tokens_per_sample": statistics.fmean(r["mean_new_tokens"] for r in measured),
        "reward_mean": statistics.fmean(r["reward"] for r in measured if r["reward"] is not None),
        "timing_split_median_s": {k: statistics.median(r["timing"][k] for r in measured)
                                  for k in measured[-1]["timing"]},
        "matmul_peak_gflops": peak,
        "achieved_gflops": flops["total"] / med / 1e9,
        "fraction_of_float32_peak": flops["total"] / med / 1e9 / peak["float32"],
        "float32_floor_s": flops["total"] / 1e9 / peak["float32"],
        "times_float32_floor": med / (flops["total"] / 1e9 / peak["float32"]),
    }


def _shape_key(shape: dict) -> str:
    return f"{shape['prompts']}x{shape['group']}x{shape['new_tokens']}"


def _run(args, work: pathlib.Path, log, cores: int, shapes: list[dict], sides: list[tuple[str, str, dict]],
         prompt_tokens: float) -> list[dict]:
    """One lock-step over every side at every shape in ``shapes`` (one core count): one result per shape.

    With one shape this is one side-by-side comparison; ``--scaling`` passes all its shapes, so
    that the ratios between shapes come from steps taken in the same minutes too.
    """
    pinned = sorted(os.sched_getaffinity(0))[:cores]
    load_before = os.getloadavg()
    def key(name: str, shape: dict) -> str:  # a worker's name: the side's, with its shape when several
        return f"{name}@{_shape_key(shape)}" if len(shapes) > 1 else name

    entries = [(key(name, shape), kind, overrides, shape) for shape in shapes for name, kind, overrides in sides]
    ready, steps, loads = _lock_step(args, work, log, pinned, entries)
    load_after = os.getloadavg()
    out = []
    for shape in shapes:
        flops = step_flops(shape["prompts"], shape["group"], prompt_tokens, shape["new_tokens"])
        run = {"cores": cores, "pinned_to": pinned, "shape": shape, "load_average_before": load_before,
               "load_average_1min_per_step": loads, "load_average_after": load_after,
               "workers": {name: ready[key(name, shape)] for name, _, _ in sides}, "useful_flops_per_step": flops}
        for name, _, _ in sides:
            recs = steps[key(name, shape)]
            run[name] = _summary(args, recs, ready[key(name, shape)]["matmul_peak_gflops"], flops)
            run[name]["step_seconds_by_round"] = [r["seconds"] for r in recs]
        if "trl" in run:
            speedups_over_trl(run, [name for name, _, _ in sides], args.warmup)
        out.append(run)
    return out


def speedups_over_trl(run: dict, names: list[str], warmup: int) -> None:
    """Adds each r1jax side's speed-up over TRL to ``run``: the ratio of the two medians, and the
    median of the per-round ratios (steps of the same lock-step round) with a 95% interval."""
    trl = run["trl"]
    for name in names:
        if name != "trl":
            run[name]["speedup_over_trl"] = trl["median_s"] / run[name]["median_s"]
            run[name]["speedup_over_trl_paired"] = paired_ratio(run[name]["step_seconds_by_round"][warmup:],
                                                                trl["step_seconds_by_round"][warmup:])


def paired_ratio(before: list[float], after: list[float], *, resamples: int = 10_000, seed: int = 0) -> dict:
    """The median of ``after[r] / before[r]`` over lock-step rounds r, with a 95% bootstrap interval.

    Both lists hold one step time per round of the same lock-step, so a slow minute slows both
    and cancels in the ratio. The interval resamples rounds with replacement (percentile method).
    """
    import numpy as np

    if len(before) != len(after) or not before:
        raise ValueError(f"paired_ratio: needs equal, non-empty lists, got {len(before)} and {len(after)}")
    ratios = np.asarray(after, float) / np.asarray(before, float)
    rng = np.random.default_rng(seed)
    meds = np.median(ratios[rng.integers(0, len(ratios), (resamples, len(ratios)))], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return {"median": float(np.median(ratios)), "ci95": [float(lo), float(hi)], "rounds": len(ratios)}


def doublings(args, runs: list[dict], names: list[str]) -> list[dict]:
    """Per-side step-time ratios between consecutive shapes of one lock-step (``--scaling``)."""
    out = []
    for prev, nxt in zip(runs, runs[1:]):
        row = {"from": _shape_key(prev["shape"]), "to": _shape_key(nxt["shape"])}
        for name in names:
            row[name] = paired_ratio(prev[name]["step_seconds_by_round"][args.warmup:],
                                     nxt[name]["step_seconds_by_round"][args.warmup:])
        out.append(row)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trl-python", default="/tmp/venv-bench/bin/python", help="python of the TRL venv")
    parser.add_argument("--warmup", type=int, default=2, help="excluded first steps per side")
    parser.add_argument("--steps", type=int, default=7, help="measured steps per side")
    parser.add_argument("--cores", default="1,2", help="comma-separated core counts, one comparison each")
    parser.add_argument("--shapes", default="base,x4", help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--r1jax-variant", action="append", default=[], metavar="NAME:key=value,...",
                        help="an extra r1jax worker with config overrides (repeatable)")
    parser.add_argument("--scaling", action="store_true",
                        help=f"r1jax alone over (G, T) in {SCALING} (8 prompts), plus its variants")
    parser.add_argument("--out", default=None, help="default benchmarks/results/grpo_step.json "
                                                    "(grpo_step_scaling.json with --scaling)")
    parser.add_argument("--worker", choices=("r1jax", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # `python benchmarks/grpo_step.py` puts benchmarks/, not the root, first
    if args.worker:
        spec = json.loads(pathlib.Path(args.spec).read_text())
        return (_worker_r1jax if args.worker == "r1jax" else _worker_trl)(pathlib.Path(args.work), spec)

    try:
        core_counts = [int(c) for c in args.cores.split(",")]
    except ValueError:
        parser.error(f"--cores: expected comma-separated integers, got {args.cores!r}")
    if max(core_counts) > len(os.sched_getaffinity(0)) or min(core_counts) < 1:
        parser.error(f"--cores: between 1 and the {len(os.sched_getaffinity(0))} cores this process may use")
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown and not args.scaling:
        parser.error(f"--shapes: unknown {sorted(unknown)}; known {sorted(SHAPES)}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1, --warmup >= 0")
    variants = [("r1jax_f32", "r1jax", {})]
    for text in args.r1jax_variant:
        name, sep, over = text.partition(":")
        if not sep or not name:
            parser.error(f"--r1jax-variant: expected NAME:key=value,..., got {text!r}")
        variants.append((f"r1jax_{name}", "r1jax", _overrides(over)))
    if args.scaling:
        shapes = [dict(prompts=8, group=g, new_tokens=t) for g, t in SCALING]
        sides = variants
    else:
        shapes = [SHAPES[s] for s in args.shapes.split(",")]
        sides = variants + [("trl", "trl", {})]
        if not pathlib.Path(args.trl_python).is_file():
            parser.error(f"--trl-python {args.trl_python} not found: create the bench venv (see the top of this file)")
    out_path = pathlib.Path(args.out or ROOT / "benchmarks" / "results" /
                            ("grpo_step_scaling.json" if args.scaling else "grpo_step.json"))

    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.pop("XLA_FLAGS", None)
    runs = []
    with tempfile.TemporaryDirectory(prefix="grpo_step_") as tmp:
        work = pathlib.Path(tmp)
        most = max(s["prompts"] for s in shapes)
        inputs = _build_inputs(work, (args.warmup + args.steps) * most)
        with open(work / "workers.log", "w") as log:
            try:
                for cores in core_counts:
                    for group in ([shapes] if args.scaling else [[shape] for shape in shapes]):
                        print(f"cores {cores}, shapes {group}", file=sys.stderr, flush=True)
                        runs.extend(_run(args, work, log, cores, group, sides, inputs["prompt_tokens_mean"]))
            except RuntimeError:
                log.flush()
                print("--- worker log (tail) ---\n" + (work / "workers.log").read_text()[-6000:], file=sys.stderr)
                raise
        log_tail = (work / "workers.log").read_text()[-4000:]

    from benchmarks._machine import describe_machine

    names = [name for name, _, _ in sides]
    table = [{"cores": r["cores"], **r["shape"],
              **{f"{n}_median_s": r[n]["median_s"] for n in names},
              **{f"{n}_speedup_over_trl": r[n].get("speedup_over_trl") for n in names if n != "trl"},
              **{f"{n}_speedup_over_trl_paired": r[n].get("speedup_over_trl_paired") for n in names if n != "trl"},
              **{f"{n}_achieved_gflops": r[n]["achieved_gflops"] for n in names},
              **{f"{n}_times_float32_floor": r[n]["times_float32_floor"] for n in names},
              **{f"{n}_matmul_peak_float32_gflops": r[n]["matmul_peak_gflops"]["float32"] for n in names}}
             for r in runs]
    result = {
        "benchmark": "grpo_step_scaling" if args.scaling else "grpo_step",
        "machine": describe_machine(),
        "command": ".venv/bin/python benchmarks/grpo_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": {n: runs[0]["workers"][n]["versions"] for n in names},
        "sides": {n: {"kind": kind, "overrides": over} for n, kind, over in sides},
        "config": {
            "model": {"architecture": "Qwen2ForCausalLM (random, torch.manual_seed(0))", **MODEL,
                      "tie_word_embeddings": False, "param_dtype": "float32", **inputs},
            "tokenizer": "r1jax char tokenizer (104 ids; ids >= 104 decode to nothing)",
            "prompts": "arithmetic task, difficulty 2, 'plain' template, r1jax's iterator order on every side",
            "shapes": shapes, "forced_length": "TRL: min_new_tokens=T; r1jax: tokenizer without EOS (no stop ids)",
            "temperature": 1.0, "top_p": 1.0, "top_k": 0, "reward": "bench_reward (same function every side)",
            "optimizer": {"name": "AdamW", "lr": LR, "betas": [0.9, 0.999], "weight_decay": 0.0,
                          "grad_clip": 1.0, "schedule": "constant"},
            "kl_beta": BETA, "kl_estimator": "k3", "clip_eps": CLIP_EPS,
            "loss": "seq-mean-token-mean (TRL loss_type=grpo)", "optimizer_steps_per_rl_step": 1,
            "device": "cpu", "core_counts": core_counts, "warmup_steps_excluded": args.warmup,
            "measured_steps_per_run": args.steps,
            "interleaving": "lock-step, one RL step per side in turn, first side rotating"
                            + ("; every side at every shape in the one lock-step" if args.scaling else ""),
        },
        "table": table,
        **({"doublings": doublings(args, runs, names)} if args.scaling else {}),
        "runs": [{k: v for k, v in run.items() if k != "workers"} | {"matmul_peaks": {
            n: run["workers"][n]["matmul_peak_gflops"] for n in names}} for run in runs],
        "notes": [
            "Step time of r1jax = Trainer.rl_step() (rollout, reward, the jitted update with its reference forward, "
            "weight push to the embedded engine). Step time of TRL = on_step_begin..on_step_end (generation, reward, "
            "reference forward, forward/backward, optimizer step); the Trainer's logging after on_step_end and the "
            "dataloader fetch before on_step_begin are not counted.",
            "Useful FLOPs (step_flops) are counted the same for every side; achieved GFLOP/s = useful FLOPs / median "
            "step time; times_float32_floor = median step time / (useful FLOPs / the worker's measured float32 "
            "matmul peak). A bfloat16 variant can go below its float32 floor.",
            "Every worker is pinned to the same first n cores (os.sched_setaffinity before exec); torch gets n "
            "intra-op threads, XLA its default pool (sized from the affinity).",
            "r1jax pads rows to a multiple of 8 tokens; TRL to the longest row.",
        ],
        "worker_log_tail": log_tail.splitlines()[-12:],
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(table, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
