"""Makes the bilingual tiny base of the language-consistency experiment (``r1jax/assets/tiny_bilingual_base``).

The paper's R1-Zero "struggles with ... language mixing" (arXiv 2501.12948 v2, §2.3.2): its chain of thought
switches languages mid-thought, which eq. 7's language-consistency reward is there to fix. The demo's tiny base
(``r1jax/assets/tiny_base``, made by ``experiments/pretrain_base.py``) only ever saw English, so it has nothing to
fix. This script gives it a second language, cheaply:

1. the char tokenizer is extended with three CJK ideographs (:data:`NEW_CHARS`), appended after the 45 old
   characters, so every old id keeps its number (:func:`extend_tokenizer`);
2. the embedding (tied with the LM head) grows by one row per new id; the old rows are copied unchanged, the new
   ones are N(0, ``init_scale``²) (:func:`grow_vocab`);
3. pre-training continues (SFT, :func:`r1jax.train.steps.make_sft_update`, the same loss as pretrain_base.py)
   on the same noisy arithmetic corpus (:func:`pretrain_base.document`: 40% unformatted documents, 35% of the
   formatted ones with a wrong answer) whose column-addition trace now names its words
   (``add 6+7=13 carry 1, add 8+6+1=15 carry 1``) and swaps each word, independently, for its Chinese
   counterpart (:data:`LEXICON`: add → 加, carry → 进位) with a per-document rate drawn uniformly from
   [0, ``--max-mix``]: the documents mix languages mid-thought, some more than others (:func:`bilingual_trace`).

Why a shipped asset and not a step of the experiment: the continued pre-training costs ~4-10 minutes on 2 CPU
cores, more than one RL arm; shipping it (3.2 MB, like ``tiny_base``) keeps the experiment's default run short
and lets its test and every seed start from the same bits. Remake it with::

    python experiments/pretrain_bilingual_base.py --out r1jax/assets/tiny_bilingual_base

(checkpoints under ``--run-dir``: an interrupted run resumes; each step's batch depends only on seed and step).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]

from pretrain_base import CHARS, DATA, document, pretrain  # noqa: E402
from r1jax.config import from_dict  # noqa: E402
from r1jax.data import DataConfig, make_dataset  # noqa: E402
from r1jax.data.tokenizer import Tokenizer, build_char_tokenizer  # noqa: E402
from r1jax.models import ModelConfig, load_pretrained, save_pretrained  # noqa: E402
from r1jax.train.config import OptimConfig  # noqa: E402
from r1jax.train.state import init_state, make_optimizer  # noqa: E402

BASE = REPO / "r1jax" / "assets" / "tiny_base"
LEXICON = {"add": "加", "carry": "进位"}
"""The trace's English words and their Chinese counterparts (eq. 7 counts each ideograph as one word)."""
NEW_CHARS = "".join(dict.fromkeys("".join(LEXICON.values())))


def bilingual_trace(solution: str, rate: float, rng: np.random.Generator) -> str:
    """The column-addition trace of ``solution`` with named words, each Chinese with probability ``rate``.

    ``"6+7=13 carry 1, 8+6+1=15 carry 1"`` becomes ``"add 6+7=13 carry 1, add 8+6+1=15 carry 1"`` at rate 0
    and, e.g., ``"加 6+7=13 carry 1, add 8+6+1=15 进位 1"`` at rate 0.5 (each word drawn independently).
    """
    def word(en: str) -> str:
        return LEXICON[en] if rng.random() < rate else en

    parts = []
    for step in solution.split(", "):
        if "=" not in step:  # a lone final carry digit (longer operands)
            parts.append(step)
            continue
        expr, _, carry = step.partition(" carry ")
        parts.append(f"{word('add')} {expr}" + (f" {word('carry')} {carry}" if carry else ""))
    return ", ".join(parts)


def bilingual_document(example: dict, rng: np.random.Generator, p_format: float, p_wrong: float,
                       max_mix: float) -> str:
    """One pre-training completion: :func:`pretrain_base.document` over a :func:`bilingual_trace` whose mixing
    rate is uniform in [0, ``max_mix``] for this document."""
    rate = float(rng.uniform(0.0, max_mix))
    return document({**example, "solution": bilingual_trace(example["solution"], rate, rng)}, rng, p_format, p_wrong)


def extend_tokenizer(new_chars: str = NEW_CHARS) -> Tokenizer:
    """The base's char tokenizer (:data:`pretrain_base.CHARS`) with ``new_chars`` appended: old ids unchanged."""
    return build_char_tokenizer(CHARS + new_chars)


def grow_vocab(params: dict, config: ModelConfig, vocab_size: int, key: jax.Array,
               init_scale: float = 0.02) -> tuple[dict, ModelConfig]:
    """``params`` with ``vocab_size - config.vocab_size`` new vocabulary rows (embedding and, untied, LM head).

    Old rows are copied bit for bit; new ones are N(0, ``init_scale``²). Returns the params and the config
    with the new ``vocab_size``.
    """
    extra = vocab_size - config.vocab_size
    if extra < 0:
        raise ValueError(f"grow_vocab: vocab_size {vocab_size} < the model's {config.vocab_size}")
    k_embed, k_head = jax.random.split(key)
    out = dict(params)
    embed = params["embed"]
    out["embed"] = jnp.concatenate(
        [embed, init_scale * jax.random.normal(k_embed, (extra, embed.shape[1]), embed.dtype)], axis=0)
    if "lm_head" in params:  # untied: [D, V]
        head = params["lm_head"]
        out["lm_head"] = jnp.concatenate(
            [head, init_scale * jax.random.normal(k_head, (head.shape[0], extra), head.dtype)], axis=1)
    return out, dataclasses.replace(config, vocab_size=vocab_size)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=str(BASE), help="the English base to extend")
    ap.add_argument("--out", default="r1jax/assets/tiny_bilingual_base", help="output Hugging Face directory")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-mix", type=float, default=0.6, help="per-document mixing rate ~ U[0, max-mix]")
    ap.add_argument("--p-format", type=float, default=0.6)
    ap.add_argument("--p-wrong", type=float, default=0.35)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", default="runs/pretrain_bilingual_base", help="checkpoints (resumed when present)")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    args = ap.parse_args(argv)

    tokenizer = extend_tokenizer()
    params, base_cfg = load_pretrained(args.base, param_dtype="float32")
    params, model_cfg = grow_vocab(params, base_cfg, tokenizer.vocab_size, jax.random.PRNGKey(1000 + args.seed))
    print(f"vocab {base_cfg.vocab_size} -> {model_cfg.vocab_size} (+{NEW_CHARS})")
    data_cfg = from_dict(DataConfig, DATA)
    dataset = make_dataset(data_cfg, "train")

    optim = from_dict(OptimConfig, dict(lr=args.lr, warmup_steps=20, schedule="constant", b2=0.99,
                                        weight_decay=0.01, grad_clip=1.0))
    tx = make_optimizer(optim)
    state = init_state(params, tx, jax.random.PRNGKey(args.seed))
    state, metrics, seconds = pretrain(
        state, model_cfg, tx, tokenizer, data_cfg, dataset, args,
        lambda e, rng: bilingual_document(e, rng, args.p_format, args.p_wrong, args.max_mix),
        length=72, rng_salt=(13,), log_every=50, script="experiments/pretrain_bilingual_base.py")

    out = pathlib.Path(args.out)
    save_pretrained(state.params, model_cfg, out)
    tokenizer.save(out)
    (out / "pretrain.json").write_text(json.dumps(
        {"script": "experiments/pretrain_bilingual_base.py", "args": vars(args), "data": DATA,
         "lexicon": LEXICON, "from": "r1jax/assets/tiny_base",
         "final_loss": None if metrics is None else float(metrics["loss"]),
         "seconds": round(seconds, 1)}, indent=2, ensure_ascii=False))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
