"""Pre-trains the tiny "base model" that the R1-Zero demo starts from.

R1-Zero starts RL from a base model that already has latent skill but no reliable habits. The
tiny analogue here is a character-level Llama-style model (0.79M parameters) pre-trained on
a *noisy* corpus of the synthetic arithmetic task (``a+b`` with d-digit operands):

* ``p_format`` of the documents are R1-Zero-formatted: ``<think> column-addition trace </think>
  <answer> result </answer>``; in ``p_wrong`` of those the answer is corrupted (one digit changed),
  as web text contains wrong worked examples;
* the rest are unformatted: the bare result, or the trace and the result without tags.

So the base model samples the right format only part of the time and, when it does, writes a wrong
answer part of the time. The rule-based rewards (accuracy + format) of GRPO can raise both, which
is what the demo measures. Held-out problems (``data.heldout_fraction``) never appear here.

Run ``python experiments/pretrain_base.py --out r1jax/assets/tiny_base`` (10-35 minutes on 2 CPU
cores, depending on load) to remake the checkpoint that ships in the repository. It is an ordinary
SFT run over r1jax's train state (:func:`r1jax.train.steps.make_sft_update`, the registered ``nll``
loss) with orbax checkpoints every ``--checkpoint-every`` steps under ``--run-dir``: run the same
command again after an interruption and it resumes (each step's batch depends only on the seed and
the step, so a resumed run trains on the same data).
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

from r1jax.config import from_dict
from r1jax.data import DataConfig, make_dataset
from r1jax.data.batching import pad_sequences
from r1jax.data.templates import encode_prompt, format_r1_zero
from r1jax.data.tokenizer import build_char_tokenizer
from r1jax.models import ModelConfig, init_params, save_pretrained
from r1jax.train.checkpoint import Checkpointer
from r1jax.train.config import AlgoConfig, KernelConfig, OptimConfig
from r1jax.train.state import Hyper, init_state, make_optimizer
from r1jax.train.steps import SFTBatch, make_sft_update

# The demo's data section (the demo config must agree: same task, difficulty and template).
DATA = dict(task="arithmetic", difficulty=2, operations=["+"], template="plain", num_train=200_000, seed=0)
MODEL = dict(architecture="llama", hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
             num_kv_heads=2, max_position_embeddings=256, tie_word_embeddings=True, rope_theta=10000.0)
SIZES = {"base": {}, "small": dict(hidden_size=64, intermediate_size=192, num_layers=2)}
"""``--size small`` is the distillation student's base (r1jax/assets/tiny_student_base)."""
CHARS = "0123456789+-*=(), abcdefghijklmnopqrstuvwxyz."


def corrupt(answer: str, rng: np.random.Generator) -> str:
    """The answer with one digit changed (never equal to the original)."""
    i = int(rng.integers(len(answer)))
    choices = [d for d in "0123456789" if d != answer[i] and not (i == 0 and d == "0" and len(answer) > 1)]
    return answer[:i] + choices[int(rng.integers(len(choices)))] + answer[i + 1:]


def document(example: dict, rng: np.random.Generator, p_format: float, p_wrong: float) -> str:
    """One pre-training completion for ``example`` (see the module docstring)."""
    trace, answer = example["solution"], example["answer"]
    if rng.random() < p_format:
        if rng.random() < p_wrong:
            answer = corrupt(answer, rng)
        return format_r1_zero(trace, answer)
    if rng.random() < 0.5:
        return answer
    return f"{trace}, so {answer}"


def pretrain(state, model_cfg: ModelConfig, tx, tokenizer, data_cfg: DataConfig, dataset, args, make_document, *,
             length: int, rng_salt: tuple[int, ...] = (), log_every: int = 100, script: str = "experiments/pretrain_base.py"):
    """The SFT loop of a pre-training script: resumes from the orbax checkpoints in ``args.run_dir``, trains
    to ``args.steps`` on batches of ``args.batch`` documents ``make_document(example, rng)`` that depend only
    on ``(args.seed, step, *rng_salt)``, checkpoints every ``args.checkpoint_every`` steps and at the end.

    Returns:
      (final state, the last step's metrics or None when nothing was left to train, seconds).
    """
    update = make_sft_update(model_cfg, from_dict(KernelConfig, {"logprob_backend": "reference"}), tx)
    hp = Hyper.from_config(AlgoConfig())
    checkpointer = Checkpointer(pathlib.Path(args.run_dir) / "checkpoints", keep=2)
    restored = checkpointer.restore_latest(state)
    if restored is not None:
        state = restored[1]
        print(f"resuming from step {int(state.step)} of {checkpointer.directory}")
    t0, metrics = time.time(), None
    for step in range(int(state.step), args.steps):
        rng = np.random.default_rng([args.seed, step, *rng_salt])
        idx = rng.integers(len(dataset), size=args.batch)
        examples = [dataset[int(i)] for i in idx]
        prompts = [encode_prompt(e, tokenizer, data_cfg.template) for e in examples]
        completions = [tokenizer.encode(make_document(e, rng), add_special_tokens=False) + [tokenizer.eos_id]
                       for e in examples]
        tb = pad_sequences(prompts, completions, tokenizer.pad_id, length=length)
        batch = SFTBatch(tokens=jnp.asarray(tb.tokens), attention_mask=jnp.asarray(tb.attention_mask),
                         loss_mask=jnp.asarray(tb.loss_mask[:, 1:]))
        state, metrics = update(state, batch, hp)
        done = step + 1
        if step % log_every == 0 or done == args.steps:
            print(f"step {step:5d}  loss {float(metrics['loss']):.4f}  {time.time() - t0:6.1f}s", flush=True)
        if done % args.checkpoint_every == 0 or done == args.steps:
            checkpointer.save(done, state, {"script": script})
    checkpointer.close()
    return state, metrics, time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="r1jax/assets/tiny_base", help="output Hugging Face directory")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--p-format", type=float, default=0.6)
    ap.add_argument("--p-wrong", type=float, default=0.35)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", default="runs/pretrain_base", help="checkpoints (resumed when present)")
    ap.add_argument("--checkpoint-every", type=int, default=200)
    ap.add_argument("--size", choices=tuple(SIZES), default="base", help="base: the demo's model; small: a student")
    args = ap.parse_args(argv)
    model = {**MODEL, **SIZES[args.size]}

    tokenizer = build_char_tokenizer(CHARS)
    data_cfg = from_dict(DataConfig, DATA)
    dataset = make_dataset(data_cfg, "train")
    model_cfg = from_dict(ModelConfig, {**model, "vocab_size": tokenizer.vocab_size,
                                        "bos_token_id": tokenizer.bos_id, "eos_token_ids": [tokenizer.eos_id]})
    print(f"model: {model_cfg.num_params() / 1e6:.2f}M parameters, vocab {tokenizer.vocab_size}")

    # Constant after warm-up: the shipped checkpoint was trained so (an earlier cosine schedule with a
    # 10^6-step horizon never decayed within 1200 steps).
    optim = from_dict(OptimConfig, dict(lr=args.lr, warmup_steps=100, schedule="constant", b2=0.99,
                                        weight_decay=0.01, grad_clip=1.0))
    tx = make_optimizer(optim)
    state = init_state(init_params(model_cfg, jax.random.PRNGKey(args.seed)), tx, jax.random.PRNGKey(args.seed))
    state, metrics, seconds = pretrain(state, model_cfg, tx, tokenizer, data_cfg, dataset, args,
                                       lambda e, rng: document(e, rng, args.p_format, args.p_wrong), length=64)
    params = state.params

    out = pathlib.Path(args.out)
    save_pretrained(params, model_cfg, out)
    tokenizer.save(out)
    (out / "pretrain.json").write_text(json.dumps(
        {"script": "experiments/pretrain_base.py", "args": vars(args), "data": DATA, "model": model,
         "final_loss": None if metrics is None else float(metrics["loss"]), "seconds": round(seconds, 1)}, indent=2))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
