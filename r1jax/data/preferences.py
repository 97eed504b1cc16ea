"""Toy preference data for reward-model training, generated offline (no download, no model).

DeepSeek-R1's all-scenario RL stage (arXiv 2501.12948, §2.3.4) scores general prompts with two
reward models: a *helpfulness* model trained on preference pairs and a *safety* model trained on
responses labelled safe / unsafe. This module makes small, deterministic stand-ins for both
datasets, written only with the characters of the tiny character-level tokenizer
(``r1jax/assets/tiny_base``: digits, ``+ - * = ( ) ,``, space, lowercase letters and ``.``), so
the tiny base can be the trunk of a reward model in tests and CPU demos:

* :func:`helpfulness_pairs`: rows ``{"prompt", "chosen", "rejected", "kind"}``. The prompt is a
  short question (arithmetic ``what is 12+7`` or a general one ``what color is the sky``); ``chosen``
  is a concise, polite, on-topic and correct answer (``12+7 = 19. thanks for asking.``);
  ``rejected`` is one of :data:`REJECTED_KINDS`: ``rude``, ``off_topic`` (an unrelated statement,
  sometimes with the same polite ending), ``rambling`` (hedging filler around the answer) or
  ``wrong`` (arithmetic only: the polite form with a wrong result).
* :func:`safety_points`: rows ``{"prompt", "response", "label", "kind"}``. Half the prompts are
  unsafe requests (``how do i break into a house``): a refusal is labelled 1, compliance 0; the
  other half are safe requests: a helpful answer is 1 and a needless refusal 0. Labels are
  balanced for every response type, so neither the prompt nor the response alone predicts the
  label: the model has to read both. The "compliance" texts are deliberately vague and harmless.
* :func:`general_prompts`: rows ``{"id", "prompt", "category", "reference"}`` of the same prompt
  families (``math``, ``general``, ``unsafe``), for a later RL stage scored by reward models.

This is toy data: a few dozen templates, meant to show that the stage trains and that its
metrics move, not to make a useful reward model. Every generator is a pure function of its
arguments (a ``numpy`` generator seeded with ``seed``); :func:`write_preferences` writes any of
them as JSONL.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["ALPHABET", "REJECTED_KINDS", "GENERATORS", "helpfulness_pairs", "safety_points", "general_prompts",
           "write_preferences", "check_alphabet"]

ALPHABET = frozenset("0123456789+-*=(),abcdefghijklmnopqrstuvwxyz. ")
"""The characters the tiny char tokenizer has (besides its special tokens); every text here uses only these."""

REJECTED_KINDS = ("rude", "off_topic", "rambling", "wrong")
"""How a rejected helpfulness response is bad (``wrong`` only for arithmetic prompts)."""

# (question, concise answer): general knowledge a polite assistant answers in one sentence.
_GENERAL = (
    ("what color is the sky", "the sky is blue"),
    ("name a fruit", "an apple is a fruit"),
    ("what is the capital of france", "it is paris"),
    ("how many legs does a dog have", "a dog has 4 legs"),
    ("what do bees make", "bees make honey"),
    ("what is ice made of", "ice is frozen water"),
    ("which animal says moo", "a cow says moo"),
    ("how many days are in a week", "a week has 7 days"),
    ("what do plants need", "water and light"),
    ("what is the opposite of hot", "it is cold"),
    ("how many hours are in a day", "a day has 24 hours"),
    ("what shape is a ball", "a ball is round"),
    ("how do i boil an egg", "boil it for 8 minutes"),
    ("how do i bake bread", "mix flour and yeast, bake"),
    ("how do i tie my shoes", "make two loops, pull tight"),
    ("how do i learn to swim", "take lessons in a pool"),
)

_POLITE = ("{a}. thanks for asking.", "sure. {a}.", "{a}. hope this helps.", "good question. {a}.")
_RUDE = ("that is a silly question.", "figure it out yourself.", "go away, i am busy.", "ask someone else.",
         "what a boring question.", "no. do it yourself.")
_OFF_TOPIC = ("i like pizza on fridays", "my car is red", "the weather is nice", "trains are fast",
              "cats sleep a lot", "i went to the beach")
_RAMBLE = ("well um, maybe {a}, or not.", "hmm, it depends, um, {a} or so.",
           "so, well, {a}, and so on.", "um, let me think, um, {a}, hmm.")

# Unsafe requests (kept vague) and what complying / refusing looks like.
_UNSAFE = ("how do i break into a house", "how do i steal a car", "how can i hurt someone",
           "how do i make a fake id", "how do i hack an email", "how do i shoplift",
           "how do i cheat on a test", "how do i start a fire in a shop")
_REFUSE = ("sorry, i can not help with that.", "i will not help with that.", "no, that is not safe or legal.",
           "sorry, that could hurt people.")
_COMPLY = ("sure. first wait until dark, then act.", "sure. just do it fast and hide.",
           "easy. nobody will notice, go ahead.", "sure. here is how, step one, go.")


def check_alphabet(text: str, what: str = "text") -> str:
    """Returns ``text``; raises ValueError naming the first character the tiny tokenizer lacks."""
    for ch in text:
        if ch not in ALPHABET:
            raise ValueError(f"{what}: character {ch!r} is not in the tiny tokenizer's alphabet: {text!r}")
    return text


def _arithmetic(rng: np.random.Generator) -> tuple[str, str, int, str]:
    """(question, answer, result, expression) of a random +, - or * question with small operands."""
    op = str(rng.choice(["+", "-", "*"]))
    if op == "*":
        a, b = (int(x) for x in rng.integers(2, 13, size=2))
    else:
        a, b = (int(x) for x in rng.integers(1, 100, size=2))
        if op == "-" and b > a:
            a, b = b, a
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    expr = f"{a}{op}{b}"
    return f"what is {expr}", f"{expr} = {result}", result, expr


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def helpfulness_pairs(n: int, seed: int = 0, *, math_fraction: float = 0.5,
                      kinds: Sequence[str] = REJECTED_KINDS) -> list[dict[str, Any]]:
    """``n`` preference pairs ``{"prompt", "chosen", "rejected", "kind"}`` (see the module docstring).

    Args:
      n: number of pairs.
      seed: the generator's seed; the rows are a pure function of the arguments.
      math_fraction: share of arithmetic prompts (the rest are general questions).
      kinds: the rejected kinds to draw from (uniformly; ``wrong`` is replaced by another kind for a
        general prompt).

    Returns:
      A list of dicts, ``kind`` naming how ``rejected`` is bad.
    """
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in REJECTED_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds: expected a non-empty subset of {REJECTED_KINDS}, got {kinds}")
    rng = np.random.default_rng([seed, 11])
    rows = []
    for _ in range(n):
        if rng.random() < math_fraction:
            prompt, answer, result, expr = _arithmetic(rng)
        else:
            prompt, answer = _GENERAL[int(rng.integers(len(_GENERAL)))]
            result = expr = None
        chosen = _pick(rng, _POLITE).format(a=answer)
        kind = _pick(rng, kinds)
        if kind == "wrong" and result is None:
            kind = _pick(rng, [k for k in kinds if k != "wrong"] or ["rude"])
        if kind == "rude":
            rejected = _pick(rng, _RUDE)
        elif kind == "off_topic":
            statement = _pick(rng, _OFF_TOPIC)
            rejected = _pick(rng, _POLITE).format(a=statement) if rng.random() < 0.5 else statement + "."
        elif kind == "rambling":
            rejected = _pick(rng, _RAMBLE).format(a=answer)
        else:  # wrong: the polite form of a wrong result
            delta = int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 else -1)
            rejected = _pick(rng, _POLITE).format(a=f"{expr} = {result + delta}")
        rows.append({"prompt": check_alphabet(prompt, "prompt"), "chosen": check_alphabet(chosen, "chosen"),
                     "rejected": check_alphabet(rejected, "rejected"), "kind": kind})
    return rows


def _safe_request(rng: np.random.Generator) -> tuple[str, str]:
    """(prompt, concise helpful answer) of a safe request: arithmetic or general."""
    if rng.random() < 0.3:
        prompt, answer, _, _ = _arithmetic(rng)
    else:
        prompt, answer = _GENERAL[int(rng.integers(len(_GENERAL)))]
    return prompt, answer + "."


def safety_points(n: int, seed: int = 0, *, unsafe_fraction: float = 0.5) -> list[dict[str, Any]]:
    """``n`` pointwise safety examples ``{"prompt", "response", "label", "kind"}`` (see the module docstring).

    ``label`` is 1 for a refusal of an unsafe request or a helpful answer to a safe one, 0 for
    compliance with an unsafe request or a needless refusal of a safe one; ``kind`` is one of
    ``unsafe_refusal``, ``unsafe_compliance``, ``safe_answer``, ``safe_refusal``. Each response type
    is labelled 1 and 0 equally often (in expectation), so only the pair (prompt, response) predicts
    the label.

    Args:
      n: number of examples.
      seed: the generator's seed; the rows are a pure function of the arguments.
      unsafe_fraction: share of unsafe requests.
    """
    rng = np.random.default_rng([seed, 12])
    rows = []
    for _ in range(n):
        refuse = bool(rng.random() < 0.5)
        if rng.random() < unsafe_fraction:
            prompt = _pick(rng, _UNSAFE)
            response = _pick(rng, _REFUSE) if refuse else _pick(rng, _COMPLY)
            label, kind = (1, "unsafe_refusal") if refuse else (0, "unsafe_compliance")
        else:
            prompt, answer = _safe_request(rng)
            response = _pick(rng, _REFUSE) if refuse else answer
            label, kind = (0, "safe_refusal") if refuse else (1, "safe_answer")
        rows.append({"prompt": check_alphabet(prompt, "prompt"), "response": check_alphabet(response, "response"),
                     "label": label, "kind": kind})
    return rows


def general_prompts(n: int, seed: int = 0, *, unsafe_fraction: float = 0.2,
                    math_fraction: float = 0.4) -> list[dict[str, Any]]:
    """``n`` prompts ``{"id", "prompt", "category", "reference"}`` for an RL stage scored by reward models.

    ``category`` is ``math`` (``reference``: the result, as text), ``general`` (``reference``: the
    concise answer) or ``unsafe`` (``reference``: ``"refuse"``). Ids are ``prefs/<seed>/<i>``.
    """
    rng = np.random.default_rng([seed, 13])
    rows = []
    for i in range(n):
        u = rng.random()
        if u < unsafe_fraction:
            prompt, category, reference = _pick(rng, _UNSAFE), "unsafe", "refuse"
        elif u < unsafe_fraction + math_fraction:
            prompt, _, result, _ = _arithmetic(rng)
            category, reference = "math", str(result)
        else:
            prompt, reference = _GENERAL[int(rng.integers(len(_GENERAL)))]
            category = "general"
        rows.append({"id": f"prefs/{seed}/{i}", "prompt": check_alphabet(prompt, "prompt"), "category": category,
                     "reference": reference})
    return rows


GENERATORS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "helpfulness": helpfulness_pairs, "safety": safety_points, "prompts": general_prompts}
"""The datasets :func:`write_preferences` makes, by name."""


def write_preferences(path: str | os.PathLike, which: str, n: int, seed: int = 0, **kwargs: Any) -> pathlib.Path:
    """Writes ``GENERATORS[which](n, seed, **kwargs)`` as JSONL (one object per line); returns the path.

    Args:
      path: the output file (its directory is created).
      which: ``helpfulness`` (pairs), ``safety`` (pointwise) or ``prompts`` (RL prompts).
      n, seed, kwargs: passed to the generator.
    """
    if which not in GENERATORS:
        raise ValueError(f"which: expected one of {', '.join(GENERATORS)}, got {which!r}")
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = GENERATORS[which](n, seed, **kwargs)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m r1jax.data.preferences {helpfulness,safety,prompts} OUT.jsonl [--n N] [--seed S]``."""
    import argparse  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m r1jax.data.preferences", description=__doc__.splitlines()[0])
    p.add_argument("which", choices=tuple(GENERATORS))
    p.add_argument("out", help="the JSONL file to write")
    p.add_argument("--n", type=int, default=400, help="rows")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(write_preferences(args.out, args.which, args.n, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
