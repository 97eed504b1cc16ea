r"""Language-consistency reward: the share of chain-of-thought words in the target language.

    Reward_language = Num(Words_target) / Num(Words)        (arXiv 2501.12948, eq. 7)

computed over the chain of thought, i.e. the ``<think>`` block of the response.

What counts as a word (Unicode script detection, no dictionary):

- each CJK ideograph (U+3400-4DBF, U+4E00-9FFF, U+F900-FAFF, U+20000-2EBEF) is one word of
  language ``"zh"`` (Chinese is not space-delimited; per-character counting is the usual proxy);
- each Hiragana / Katakana character is one word of ``"ja"``;
- a run of Latin letters (ASCII and Latin-1/Extended-A/B letters) is one word of ``"en"``;
- a run of Hangul is one word of ``"ko"``, a run of Cyrillic one of ``"ru"``, a run of Arabic
  one of ``"ar"``, a run of letters of any other script one of ``"other"``;
- digits, punctuation and symbols are not words, and neither is mathematics: ``$...$``,
  ``$$...$$``, ``\(...\)``, ``\[...\]`` spans and ``\commands`` are removed first, so a Chinese
  derivation full of LaTeX is not penalised for ``\frac`` or ``x``.

The target language is, in order: ``reference["language"]`` when the reference is a mapping with
that key; the fixed language of the registered variant (``language_consistency_en``,
``language_consistency_zh``); otherwise the majority language of the *prompt*'s words
(:func:`detect_language`). Caution: an English template (e.g. R1-Zero's) around a Chinese question
has mostly English words; name the target explicitly in that case.

A response with no ``<think>`` block scores 0.0; a chain of thought without a single word
(pure arithmetic) scores 1.0 (nothing is mixed).

References:
  DeepSeek-AI, "DeepSeek-R1", arXiv 2501.12948, eq. 7 (language consistency reward of the reasoning-oriented RL stage).
"""

from __future__ import annotations

import collections
import re
from typing import Any, Mapping

from r1jax.rewards.parsing import extract_think
from r1jax.rewards.scan import Scanner, charge, single_pass

__all__ = ["count_words_by_language", "detect_language", "language_consistency", "language_consistency_for"]

_ZH = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_JA = "\u3040-\u309f\u30a0-\u30ff"
_KO = "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"
_EN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"  # Latin letters; × (D7) and ÷ (F7) excluded
_RU = "\u0400-\u04ff"
_AR = "\u0600-\u06ff"
_KNOWN = _ZH + _JA + _KO + _EN + _RU + _AR
# Single-pass (r1jax.rewards.scan): each alternative is one character or a possessive run.
_WORD = re.compile(
    rf"(?P<zh>[{_ZH}])|(?P<ja>[{_JA}])|(?P<ko>[{_KO}]++)|(?P<en>[{_EN}]++)|(?P<ru>[{_RU}]++)|(?P<ar>[{_AR}]++)"
    rf"|(?P<other>(?:(?![{_KNOWN}])[^\W\d_])++)"
)
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]++")
_MATH_CLOSE = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}


def _math_spans(text: str) -> list[tuple[int, int]]:
    r"""Spans of mathematics: ``$$..$$``, ``$..$``, ``\(..\)``, ``\[..\]`` and ``\commands``.

    The matches of ``re.finditer(r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+", text,
    re.DOTALL)``, found in linear time: at each ``$`` or backslash, the first alternative that has
    a closing delimiter after it wins (an unclosed ``$$`` is an empty ``$..$``).
    """
    scanner = Scanner(text)
    spans, pos = [], 0
    while True:
        dollar, backslash = scanner.find("$", pos), scanner.find("\\", pos)
        if dollar < 0 and backslash < 0:
            return spans
        at = dollar if backslash < 0 or 0 <= dollar < backslash else backslash
        end = -1
        for opening in ("$$", "$") if at == dollar else ("\\(", "\\["):
            if text.startswith(opening, at):
                close = scanner.find(_MATH_CLOSE[opening], at + len(opening))
                if close >= 0:
                    end = close + len(_MATH_CLOSE[opening])
                    break
        if end < 0 and at == backslash:
            command = _LATEX_COMMAND.match(text, at)
            if command is not None:
                charge(command.end() - at)
                end = command.end()
        if end < 0:
            pos = at + 1
        else:
            spans.append((at, end))
            pos = end


def _strip_math(text: str) -> str:
    """``text`` with each mathematics span (:func:`_math_spans`) replaced by a space."""
    parts, pos = [], 0
    for start, end in _math_spans(text):
        parts += [text[pos:start], " "]
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def count_words_by_language(text: str) -> collections.Counter:
    """Number of words per language code in ``text`` (see the module docstring for the rules)."""
    counts: collections.Counter = collections.Counter()
    for m in _WORD.finditer(single_pass(_strip_math(text))):
        counts[m.lastgroup] += 1
    return counts


def detect_language(text: str) -> str | None:
    """The language with the most words in ``text``; None when it has no words.

    Ties go to the language whose first word comes first.
    """
    counts = count_words_by_language(text)
    if not counts:
        return None
    return counts.most_common(1)[0][0]


def language_consistency_for(target: str, prompt: str, completion: str) -> float:
    """Share of the chain-of-thought's words in language ``target`` (eq. 7); see module doc."""
    think = extract_think(prompt, completion)
    if think is None:
        return 0.0
    counts = count_words_by_language(think)
    total = sum(counts.values())
    if total == 0:
        return 1.0
    return counts[target] / total


def _target(prompt: str, reference: Any, fixed: str | None) -> str | None:
    if isinstance(reference, Mapping) and reference.get("language") is not None:
        lang = reference["language"]
        if not isinstance(lang, str) or not lang:
            raise ValueError(f"reference['language'] must be a language code like 'en' or 'zh', got {lang!r}")
        return lang
    if fixed is not None:
        return fixed
    return detect_language(prompt)


def language_consistency(prompt: str, completion: str, reference: Any = None) -> float:
    """Language-consistency reward with the target from the reference or the prompt.

    Args:
      prompt: the prompt; its majority language is the target unless the reference names one.
      completion: the generated text; its ``<think>`` block is scored.
      reference: optional mapping with a ``"language"`` code (``"en"``, ``"zh"``, ...).

    Returns:
      A float in [0, 1]: Num(target words) / Num(words) of the chain of thought (eq. 7). 0.0 if
      the target cannot be determined (a prompt without words and no reference language).

    References:
      arXiv 2501.12948, eq. 7.
    """
    target = _target(prompt, reference, None)
    if target is None:
        return 0.0
    return language_consistency_for(target, prompt, completion)


def language_consistency_en(prompt: str, completion: str, reference: Any = None) -> float:
    """Language consistency with English as the target (unless the reference names another)."""
    return language_consistency_for(_target(prompt, reference, "en"), prompt, completion)


def language_consistency_zh(prompt: str, completion: str, reference: Any = None) -> float:
    """Language consistency with Chinese as the target (unless the reference names another)."""
    return language_consistency_for(_target(prompt, reference, "zh"), prompt, completion)
