"""Tokenizer builder and loader: round trips, single-token tags, errors naming the file, chat templates."""

import json

import pytest

from r1jax.data.tokenizer import (
    DEFAULT_CHARS,
    build_char_tokenizer,
    load_tokenizer,
    render_chat_template,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("chartok")
    build_char_tokenizer().save(d)
    return d


def test_build_save_load_round_trip(saved):
    tok = load_tokenizer(saved)
    assert tok.vocab_size <= 128
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.eos_ids == (2,)
    text = "User: 47+85. Assistant: <think> 7+5=12 carry 1\n4+8+1=13 </think> <answer> 132 </answer>"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id
    assert tok.encode(text, add_special_tokens=False) == ids[1:]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=False) == "<bos>" + text
    # Every printable ASCII character survives.
    assert tok.decode(tok.encode(DEFAULT_CHARS)) == DEFAULT_CHARS
    # The same ids as the builder's in-memory tokenizer.
    assert build_char_tokenizer().encode(text) == ids


def test_tags_are_single_tokens(saved):
    tok = load_tokenizer(saved)
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        ids = tok.encode(tag, add_special_tokens=False)
        assert len(ids) == 1, tag
        assert tok.id_to_token(ids[0]) == tag
    # Adjacent tags and a near miss.
    assert len(tok.encode("<think></think>", add_special_tokens=False)) == 2
    assert len(tok.encode("<thinkx", add_special_tokens=False)) == len("<thinkx")
    # One id per ordinary character.
    assert len(tok.encode("12+34=46", add_special_tokens=False)) == 8


def test_special_tokens_dropped_on_decode_tags_kept(saved):
    tok = load_tokenizer(saved)
    ids = tok.encode("<answer> 7 </answer>") + [tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == "<answer> 7 </answer>"
    assert tok.decode_batch([ids, tok.encode("ab")]) == ["<answer> 7 </answer>", "ab"]
    assert tok.encode_batch(["ab", "<think>"], add_special_tokens=False) == [
        tok.encode("ab", add_special_tokens=False),
        [tok.token_to_id("<think>")],
    ]


def test_unknown_character_becomes_unk(saved):
    tok = load_tokenizer(saved)
    ids = tok.encode("a\u00e9b", add_special_tokens=False)
    assert ids[1] == tok.token_to_id("<unk>")
    assert len(ids) == 3


def test_small_charset():
    tok = build_char_tokenizer("0123456789+-*= ")
    assert tok.vocab_size == 8 + 15
    with pytest.raises(ValueError, match="duplicate characters"):
        build_char_tokenizer("aab")


def test_readable_by_transformers(saved):
    import transformers
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(saved))
    ours = load_tokenizer(saved)
    text = "12+34 <think> x </think>"
    assert hf.encode(text) == ours.encode(text)
    assert hf.eos_token == "<eos>" and hf.pad_token == "<pad>"


# ---------------------------------------------------------------------------------------- errors


def test_missing_directory_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found: .*nope"):
        load_tokenizer(missing)


def test_missing_tokenizer_json_named(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\0")
    with pytest.raises(FileNotFoundError, match=r"tokenizer file not found: .*tokenizer\.json.*sentencepiece"):
        load_tokenizer(tmp_path)


def test_malformed_config_names_file_and_line(tmp_path, saved):
    (tmp_path / "tokenizer.json").write_text((saved / "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text('{\n  "eos_token": "<eos>",\n  oops\n}')
    with pytest.raises(ValueError, match=r"tokenizer_config\.json:3: not valid JSON"):
        load_tokenizer(tmp_path)


def test_special_token_not_in_vocab_named(tmp_path, saved):
    (tmp_path / "tokenizer.json").write_text((saved / "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config\.json.*eos_token '<\|im_end\|>' is not in the vocabulary"):
        load_tokenizer(tmp_path)


def test_corrupt_tokenizer_json_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(ValueError, match=r"tokenizer\.json: cannot be read"):
        load_tokenizer(tmp_path)


# ---------------------------------------------------------------------------------------- config files


def test_config_formats_and_generation_config(tmp_path, saved):
    (tmp_path / "tokenizer.json").write_text((saved / "tokenizer.json").read_text())
    cfg = {
        "bos_token": {"content": "<bos>", "lstrip": False},
        "eos_token": "<eos>",
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    tok = load_tokenizer(tmp_path)
    assert tok.bos_token == "<bos>" and tok.pad_token is None
    assert tok.pad_id == tok.eos_id == 2  # no pad token: eos stands in
    assert tok.chat_template == "D"
    assert tok.eos_ids == (2, 5)
    # chat_template.jinja wins over the config's template.
    (tmp_path / "chat_template.jinja").write_text("J{{ messages[0]['content'] }}")
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "Jx"


def test_no_chat_template_error(tmp_path, saved):
    (tmp_path / "tokenizer.json").write_text((saved / "tokenizer.json").read_text())
    tok = load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="no chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


# ---------------------------------------------------------------------------------------- chat templates

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Exercises trim_blocks / lstrip_blocks, namespace, loop controls, tojson, raise_exception and bos_token.
FANCY = """{{ bos_token }}
{%- set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}
    {% if m['role'] == 'system' %}
        {% continue %}
    {% endif %}
    {% set ns.n = ns.n + 1 %}
    [{{ ns.n }}] {{ m['role'] }}: {{ m['content'] }} {{ m | tojson }}
{% endfor %}
{% if add_generation_prompt %}assistant:{% endif %}
{% generation %}gen {{ messages | length }}{% endgeneration %}"""


@pytest.mark.parametrize("template", [CHATML, FANCY], ids=["chatml", "fancy"])
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_matches_transformers(template, gen):
    import transformers
    ours = build_char_tokenizer(chat_template=template)
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=ours.backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2? <\"é\">"},
        {"role": "assistant", "content": "<think> 2+2=4 </think> <answer> 4 </answer>"},
        {"role": "user", "content": "And 3+3?"},
    ]
    expected = hf.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=gen)
    assert ours.apply_chat_template(messages, add_generation_prompt=gen) == expected
    if "raise_exception" in template:
        with pytest.raises(Exception, match="no tools"):
            ours.apply_chat_template(messages + [{"role": "tool", "content": "x"}])


def test_chat_template_tokenize_has_no_double_bos():
    tok = build_char_tokenizer()
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)
    assert ids[0] == tok.bos_id and ids[1] != tok.bos_id
    assert tok.decode(ids) == "user: hi\nassistant: "


def test_chat_template_errors():
    with pytest.raises(ValueError, match="line 1: Jinja syntax error"):
        render_chat_template("{% for m in messages %}", [{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match=r"messages\[0\] must be a mapping with a 'role'"):
        render_chat_template("x", [{"content": "x"}])


def test_bad_generation_config_named(tmp_path, saved):
    (tmp_path / "tokenizer.json").write_text((saved / "tokenizer.json").read_text())
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 999]}))
    with pytest.raises(ValueError, match=r"generation_config\.json: eos id 999 is outside the vocabulary of size 104"):
        load_tokenizer(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ValueError, match=r"generation_config\.json: 'eos_token_id' must be an int or a list"):
        load_tokenizer(tmp_path)
