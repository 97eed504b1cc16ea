"""Tokenizer loading, chat templates and the character-level tokenizer of the synthetic tasks.

One loading path serves every model: :func:`load_tokenizer` reads a Hugging Face ``tokenizer.json``
(the ``tokenizers`` library, no ``transformers`` needed) plus the optional ``tokenizer_config.json``
(special tokens, ``chat_template``), ``chat_template.jinja`` and ``generation_config.json`` (extra stop
ids) from a local directory. :func:`build_char_tokenizer` writes the tiny CPU models' tokenizer in the
same format, so the demo and a real checkpoint go through the same code.

Chat templates are rendered with ``jinja2`` in a sandbox configured as ``transformers`` configures
its own (``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``raise_exception``, ``strftime_now``,
a ``tojson`` that does not HTML-escape, the ``{% generation %}`` block tag); the tests check the two
render identically. It is always jinja2 (never a ``transformers`` import), so the core needs only
``tokenizers`` and ``jinja2``.
"""

from __future__ import annotations

import datetime
import functools
import json
import pathlib
from typing import Any, Mapping, Sequence

__all__ = [
    "Tokenizer",
    "load_tokenizer",
    "build_char_tokenizer",
    "render_chat_template",
    "THINK_TAGS",
    "SPECIAL_TOKENS",
    "DEFAULT_CHARS",
    "CHAR_CHAT_TEMPLATE",
]

# The reasoning / answer tags of the R1-Zero format (DeepSeek-R1 Table 1); single tokens in the char tokenizer.
THINK_TAGS: tuple[str, ...] = ("<think>", "</think>", "<answer>", "</answer>")
# Special tokens of the char tokenizer, in id order (pad = 0).
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")
UNK_TOKEN = "<unk>"
# Printable ASCII (space .. ~) and newline: 96 characters; with the 8 tokens above, 104 ids.
DEFAULT_CHARS: str = "".join(chr(c) for c in range(32, 127)) + "\n"
# A minimal chat template for the char tokenizer (so the "chat" prompt template works on the tiny models).
CHAR_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ImportError("r1jax.data.tokenizer needs the `tokenizers` package (pip install tokenizers)") from e
    return tokenizers


class Tokenizer:
    """A Hugging Face ``tokenizers`` tokenizer with its special tokens and chat template.

    Attributes:
      backend: the ``tokenizers.Tokenizer``.
      bos_token, eos_token, pad_token, unk_token: special token strings (or None).
      chat_template: a Jinja chat template (or None).
      extra_eos_ids: further stop ids (e.g. ``generation_config.json``'s ``eos_token_id`` list).
      source: the directory it was loaded from (or None).
    """

    def __init__(
        self,
        backend: Any,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
        extra_eos_ids: Sequence[int] = (),
        source: str | None = None,
    ):
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.unk_token = unk_token
        self.chat_template = chat_template
        self.source = source
        where = f" (tokenizer {source})" if source else ""
        for name, tok in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
            if tok is not None and backend.token_to_id(tok) is None:
                raise ValueError(f"{name} {tok!r} is not in the vocabulary{where}")
        for i in extra_eos_ids:
            if not 0 <= int(i) < self.vocab_size:
                raise ValueError(f"eos id {i} is outside the vocabulary of size {self.vocab_size}{where}")
        ids = [] if self.eos_id is None else [self.eos_id]
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys(ids + [int(i) for i in extra_eos_ids]))

    # ---------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's vocab_size must be at least this)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    @property
    def bos_id(self) -> int | None:
        return None if self.bos_token is None else self.backend.token_to_id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return None if self.eos_token is None else self.backend.token_to_id(self.eos_token)

    @property
    def pad_id(self) -> int:
        """The pad id; falls back to eos (then 0) for tokenizers without a pad token.

        Padding is always accompanied by a mask, so the value only needs to be a valid id.
        """
        if self.pad_token is not None:
            return self.backend.token_to_id(self.pad_token)
        if self.eos_id is not None:
            return self.eos_id
        return 0

    # ---------------------------------------------------------------- encode / decode
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``.

        Args:
          text: the string.
          add_special_tokens: apply the tokenizer's post-processor (e.g. a Llama-style BOS).
            Use False for text that already contains them (a rendered chat template).

        Returns:
          A list of ints.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = True) -> list[list[int]]:
        """:meth:`encode` over a list (parallel in the Rust backend)."""
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"encode_batch: item {i} is a {type(t).__name__}, not a str")
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens (bos/eos/pad) dropped unless ``skip_special_tokens=False``.

        The reasoning tags (``<think>`` ...) are ordinary added tokens and are always kept.
        """
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], *, skip_special_tokens: bool = True) -> list[str]:
        """:meth:`decode` over a list of id sequences."""
        return self.backend.decode_batch(
            [[int(i) for i in ids] for ids in batch], skip_special_tokens=skip_special_tokens
        )

    # ---------------------------------------------------------------- chat template
    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """Renders ``messages`` with the tokenizer's Jinja chat template.

        Args:
          messages: ``[{"role": "user", "content": "..."}, ...]``.
          add_generation_prompt: end with the assistant header, ready for generation.
          tokenize: return token ids (encoded without adding special tokens again) instead of text.
          chat_template: overrides the tokenizer's template.
          **kwargs: extra template variables (e.g. ``enable_thinking=False`` for Qwen3).

        Returns:
          The rendered text, or its ids when ``tokenize``.
        """
        template = chat_template if chat_template is not None else self.chat_template
        if template is None:
            where = f" in {self.source}" if self.source else ""
            raise ValueError(
                f"this tokenizer has no chat_template{where} (tokenizer_config.json 'chat_template' "
                "or chat_template.jinja); use a text prompt template instead"
            )
        special = {
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
            "pad_token": self.pad_token or "",
            "unk_token": self.unk_token or "",
        }
        text = render_chat_template(
            template, messages, add_generation_prompt=add_generation_prompt, **{**special, **kwargs}
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # ---------------------------------------------------------------- saving
    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Writes ``tokenizer.json`` and ``tokenizer_config.json`` (readable by :func:`load_tokenizer`
        and by ``transformers.AutoTokenizer``); returns the directory."""
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(d / "tokenizer.json"))
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            if getattr(self, name) is not None:
                config[name] = getattr(self, name)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return d

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
            f"pad={self.pad_token!r}, chat_template={'yes' if self.chat_template else 'no'}, source={self.source!r})"
        )


# -------------------------------------------------------------------------------------------- loading


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None


def _token_string(value: Any, key: str, path: pathlib.Path) -> str | None:
    """tokenizer_config stores a special token as a string or as an AddedToken dict."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{path}: '{key}' must be a string or an object with 'content', got {value!r}")


def _chat_template_from(value: Any, path: pathlib.Path) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):  # older format: [{"name": "default", "template": "..."}, ...]
        named = {}
        for item in value:
            if not (isinstance(item, Mapping) and isinstance(item.get("template"), str)):
                raise ValueError(f"{path}: 'chat_template' list items need 'name' and 'template'")
            named[item.get("name")] = item["template"]
        if "default" in named:
            return named["default"]
        if len(named) == 1:
            return next(iter(named.values()))
        raise ValueError(f"{path}: several chat templates {sorted(map(str, named))} and none named 'default'")
    raise ValueError(f"{path}: 'chat_template' must be a string or a list, got {type(value).__name__}")


def load_tokenizer(path: str | pathlib.Path) -> Tokenizer:
    """Loads a tokenizer from a local Hugging Face-format directory.

    Reads ``tokenizer.json`` (required), ``tokenizer_config.json`` (bos/eos/pad/unk tokens,
    ``chat_template``), ``chat_template.jinja`` (preferred over the config's template when present)
    and ``generation_config.json`` (``eos_token_id``, an int or a list: extra stop ids).

    Args:
      path: the directory, or the ``tokenizer.json`` file itself.

    Returns:
      A :class:`Tokenizer`.

    Raises:
      FileNotFoundError: the directory or its ``tokenizer.json`` is missing (named).
      ValueError: a malformed file (named, with the line for JSON errors) or a special token that is
        not in the vocabulary.
    """
    p = pathlib.Path(path)
    if p.is_file() and p.name.endswith(".json"):
        directory, tok_file = p.parent, p
    else:
        directory, tok_file = p, p / "tokenizer.json"
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {directory}")
    if not tok_file.is_file():
        hint = ""
        if (directory / "tokenizer.model").is_file():
            hint = " (only a sentencepiece tokenizer.model is there: convert it once with transformers' AutoTokenizer and save_pretrained)"
        raise FileNotFoundError(f"tokenizer file not found: {tok_file}{hint}")
    tk = _tokenizers()
    try:
        backend = tk.Tokenizer.from_file(str(tok_file))
    except Exception as e:  # the Rust error says what is wrong, not where
        raise ValueError(f"{tok_file}: cannot be read as a tokenizers file: {e}") from None

    config: Mapping[str, Any] = {}
    cfg_file = directory / "tokenizer_config.json"
    if cfg_file.is_file():
        config = _read_json(cfg_file)
        if not isinstance(config, Mapping):
            raise ValueError(f"{cfg_file}: expected a JSON object at the top")
    special = {k: _token_string(config.get(k), k, cfg_file) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    chat_template = _chat_template_from(config.get("chat_template"), cfg_file)
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        chat_template = jinja_file.read_text(encoding="utf-8")

    extra_eos: list[int] = []
    gen_file = directory / "generation_config.json"
    if gen_file.is_file():
        gen = _read_json(gen_file)
        eos = gen.get("eos_token_id") if isinstance(gen, Mapping) else None
        if isinstance(eos, int):
            extra_eos = [eos]
        elif isinstance(eos, list) and all(isinstance(i, int) for i in eos):
            extra_eos = list(eos)
        elif eos is not None:
            raise ValueError(f"{gen_file}: 'eos_token_id' must be an int or a list of ints, got {eos!r}")
    try:
        tok = Tokenizer(backend, **special, chat_template=chat_template, source=str(directory))
    except ValueError as e:
        raise ValueError(f"{cfg_file}: {e}") from None
    if extra_eos:
        try:
            tok = Tokenizer(backend, **special, chat_template=chat_template, extra_eos_ids=extra_eos, source=str(directory))
        except ValueError as e:
            raise ValueError(f"{gen_file}: {e}") from None
    return tok


# -------------------------------------------------------------------------------------------- chat templates


@functools.lru_cache(maxsize=32)
def _compile_template(template: str):
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError as e:
        raise ImportError("chat templates need jinja2 (pip install jinja2)") from e

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (assistant-mask markers of some templates): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, GenerationTag]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"chat_template line {e.lineno}: Jinja syntax error: {e.message}") from None


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    **variables: Any,
) -> str:
    """Renders a Hugging Face-style Jinja chat template.

    Args:
      template: the Jinja source (``tokenizer_config.json``'s ``chat_template``).
      messages: ``[{"role": ..., "content": ...}, ...]``.
      add_generation_prompt: passed to the template.
      **variables: further template variables (``bos_token``, ``eos_token``, ``tools`` ...).

    Returns:
      The rendered string.
    """
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise ValueError(f"messages[{i}] must be a mapping with a 'role', got {m!r}")
    compiled = _compile_template(template)
    plain_messages = [dict(m) for m in messages]
    return compiled.render(messages=plain_messages, add_generation_prompt=add_generation_prompt, **variables)


# -------------------------------------------------------------------------------------------- char tokenizer


def build_char_tokenizer(
    chars: str = DEFAULT_CHARS,
    *,
    tags: Sequence[str] = THINK_TAGS,
    chat_template: str | None = CHAR_CHAT_TEMPLATE,
    add_bos: bool = True,
) -> Tokenizer:
    """A character-level tokenizer for the synthetic tasks, in the ordinary ``tokenizers`` format.

    Ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then ``tags`` (each one token:
    ``<think>``, ``</think>``, ``<answer>``, ``</answer>``), then one id per character of ``chars``.
    The model is a BPE without merges (every character is its own token; characters outside
    ``chars`` become ``<unk>``), the decoder concatenates. bos/eos/pad are special (dropped by
    ``decode``); the tags are ordinary added tokens (kept, so rewards see them).

    Args:
      chars: the character set (default: printable ASCII and newline, 104 ids in all).
      tags: multi-character strings that are single tokens.
      chat_template: a Jinja chat template stored with it (None for none).
      add_bos: ``encode(text)`` prepends ``<bos>`` (the post-processor), like Llama tokenizers.

    Returns:
      A :class:`Tokenizer`; ``.save(dir)`` writes it, :func:`load_tokenizer` reads it back.
    """
    tk = _tokenizers()
    if len(set(chars)) != len(chars):
        dup = sorted({c for c in chars if chars.count(c) > 1})
        raise ValueError(f"build_char_tokenizer: duplicate characters {dup!r}")
    fixed = list(SPECIAL_TOKENS) + [UNK_TOKEN] + list(tags)
    if len(set(fixed)) != len(fixed):
        raise ValueError(f"build_char_tokenizer: tags {list(tags)!r} collide with the special tokens")
    for t in tags:
        if len(t) < 2:
            raise ValueError(f"build_char_tokenizer: tag {t!r} must be at least two characters")
    vocab = {tok: i for i, tok in enumerate(fixed)}
    for c in chars:
        vocab[c] = len(vocab)
    backend = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    backend.add_special_tokens([tk.AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([tk.AddedToken(t, special=False, normalized=False) for t in tags])
    backend.decoder = tk.decoders.Fuse()
    if add_bos:
        bos = SPECIAL_TOKENS[1]
        backend.post_processor = tk.processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    return Tokenizer(
        backend,
        pad_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        unk_token=UNK_TOKEN,
        chat_template=chat_template,
    )
