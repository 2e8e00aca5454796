"""Chat SFT data: messages rendered with a checkpoint's chat template (Llama 3's, on a tokenizer
trained here), the same text and ids as transformers' apply_chat_template, the loss on the
assistant turns only, and a run of it through the harness."""

import json
from pathlib import Path

import numpy as np
import pytest

from adapt.data import DataError
from adapt.data.chat import load_chat
from adapt.data.tokenizers import HuggingFaceTokenizer, load_lm_tokenizer

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO / "third_party" / "stories260K"
SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Meta-Llama-3-8B-Instruct's chat template, as its tokenizer_config.json ships it
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "You tell short stories."},
    {"role": "user", "content": "Who is Lily?"},
    {"role": "assistant", "content": "Lily is a little girl who loves to play."},
    {"role": "user", "content": "What does she find?"},
    {"role": "assistant", "content": "She finds a big red ball in the park."},
]
REPLIES = [m["content"] + "<|eot_id|>" for m in CONVERSATION if m["role"] == "assistant"]


def _folder(path: Path, template: str | None = LLAMA3_TEMPLATE) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train([str(STORIES / "tinystories_sample.txt")], trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[0],
              "eos_token": "<|eot_id|>", "model_max_length": 512}  # fmt: skip
    if template:
        config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def tiny_chat_llama(path: Path, randomized_eval) -> Path:
    """A tiny randomly initialised LLaMA saved by transformers, with :func:`_folder`'s tokenizer
    and chat template beside it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = _folder(path)
    tok = HuggingFaceTokenizer(folder)
    torch.manual_seed(0)
    model = randomized_eval(transformers.LlamaForCausalLM(
        transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=56,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256,
                                 bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    ))  # fmt: skip
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _jsonl(path: Path, conversations) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


def test_rendering_and_ids_equal_apply_chat_template_and_only_replies_are_targets(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = _folder(tmp_path / "tok")
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    text = reference.apply_chat_template(CONVERSATION, tokenize=False)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system") and REPLIES[1] in text
    want = reference.apply_chat_template(CONVERSATION, tokenize=True)
    want = list(want["input_ids"] if hasattr(want, "keys") else want)

    tok = load_lm_tokenizer(folder)
    assert tok.chat_template == LLAMA3_TEMPLATE
    data = load_chat(_jsonl(tmp_path / "chat.jsonl", [CONVERSATION]), tok, seq_len=128)
    ids, labels = data.arrays["input_ids"][0], data.arrays["labels"][0]
    mask = data.arrays["loss_mask"][0].astype(bool)
    n = len(want) - 1  # inputs are the tokens but the last; labels the tokens but the first
    assert list(ids[:n]) == want[:-1] and list(labels[:n]) == want[1:]
    assert not mask[n:].any()  # padding
    # the targets are exactly the two replies with their end-of-turn token, in two runs
    runs = np.split(np.flatnonzero(mask), np.flatnonzero(np.diff(np.flatnonzero(mask)) > 1) + 1)
    decoded = [tok.tokenizer.decode(labels[r].tolist(), skip_special_tokens=False) for r in runs]
    assert decoded == REPLIES


def test_packed_conversations_keep_their_masks(tmp_path):
    tok = HuggingFaceTokenizer(_folder(tmp_path / "tok"))
    path = _jsonl(tmp_path / "chat.jsonl", [CONVERSATION, CONVERSATION[:3]])
    packed = load_chat(path, tok, seq_len=32, pack_examples=True)
    alone = load_chat(path, tok, seq_len=256)
    assert packed.arrays["loss_mask"].sum() == alone.arrays["loss_mask"].sum()
    targets = packed.arrays["labels"][packed.arrays["loss_mask"] > 0]
    text = tok.tokenizer.decode(targets.tolist(), skip_special_tokens=False)
    assert text == "".join(REPLIES + REPLIES[:1])


def test_bad_chat_data_is_named(tmp_path):
    tok = HuggingFaceTokenizer(_folder(tmp_path / "tok"))
    no_reply = _jsonl(tmp_path / "a.jsonl", [CONVERSATION[:2]])
    with pytest.raises(DataError, match="row 0 of .*: no assistant message"):
        load_chat(no_reply, tok, seq_len=64)
    bad = _jsonl(tmp_path / "b.jsonl", [[{"role": "user"}, {"role": "assistant", "content": "x"}]])
    with pytest.raises(DataError, match=r"message 0 \(user\) has no text 'content'"):
        load_chat(bad, tok, seq_len=64)
    plain = HuggingFaceTokenizer(_folder(tmp_path / "plain", template=None))
    with pytest.raises(DataError, match="needs a tokenizer with a chat template"):
        load_chat(_jsonl(tmp_path / "c.jsonl", [CONVERSATION]), plain, seq_len=64)
    strict = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
    tok.chat_template = strict + LLAMA3_TEMPLATE
    with pytest.raises(DataError, match="the chat template refused it: no system"):
        load_chat(_jsonl(tmp_path / "d.jsonl", [CONVERSATION]), tok, seq_len=64)


@pytest.mark.slow
def test_chat_sft_runs_through_the_harness(tmp_path, randomized_eval):
    """configs/llm/tune.py's smoke run: a tiny LLaMA checkpoint whose folder carries the
    tokenizer and chat template, trained with LoRA on chat JSONL (no data.tokenizer)."""
    from adapt.config import load_config_file
    from adapt.harness.loop import run

    folder = tiny_chat_llama(tmp_path / "llama", randomized_eval)
    chats = [CONVERSATION[:3] if i % 2 else CONVERSATION for i in range(16)]
    train = _jsonl(tmp_path / "c.jsonl", chats[:12])
    held_out = _jsonl(tmp_path / "h.jsonl", chats[12:])
    arg = f"model={folder},train={train},eval={held_out},seq_len=64,smoke"
    config = load_config_file(str(REPO / "configs/llm/tune.py"), arg)
    results = run(config, tmp_path / "w")
    assert results["steps"] == 4 and np.isfinite(results["eval"]["loss"])
    assert results["data"]["examples"] == {"train": 12, "eval": 4}
    # rank-16 LoRA on every linear layer of the two blocks (q, k, v, o, gate, up, down)
    shapes = [(32, 32), (32, 16), (32, 16), (32, 32), (32, 56), (32, 56), (56, 32)]
    assert results["trainable_params"] == 2 * sum(16 * (i + o) for i, o in shapes)
