"""Causal-LM data with a Hugging Face tokenizer.json (LLaMA-style with a BOS, Qwen-style without):
the same ids as transformers' fast tokenizer, packing and masks, errors, and a run whose
checkpoint folder brings its own tokenizer."""

import json
from pathlib import Path

import numpy as np
import pytest

from adapt.data import DataError
from adapt.data.lm import load_lm_text
from adapt.data.tokenizers import HuggingFaceTokenizer, SentencePieceTokenizer, load_lm_tokenizer

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO / "third_party" / "stories260K"
TEXT = "Once upon a time, there was a little girl named Lily."


def _tokenizer_folder(folder: Path, bos: str | None, eos: str, vocab: int = 300) -> Path:
    """A byte-level BPE tokenizer trained here on the vendored TinyStories sample, saved as a
    checkpoint folder saves it (tokenizer.json + tokenizer_config.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [t for t in (bos, eos) if t]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train([str(STORIES / "tinystories_sample.txt")], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    added = {
        "__type": "AddedToken",
        "content": eos,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }  # the older files' form of a special token
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": added if bos else eos,
              "bos_token": bos, "model_max_length": 256}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("bos", ["<s>", None], ids=["llama_style", "qwen_style"])
def test_ids_equal_transformers_fast_tokenizer(tmp_path, bos):
    transformers = pytest.importorskip("transformers")
    eos = "</s>" if bos else "<|endoftext|>"
    folder = _tokenizer_folder(tmp_path / "tok", bos, eos)
    ours = load_lm_tokenizer(folder)
    assert isinstance(ours, HuggingFaceTokenizer)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert theirs.encode(TEXT, add_special_tokens=False) == ours.encode(TEXT, bos=False)
    assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
    assert ours.vocab_size == len(theirs)
    ids = ours.encode(TEXT, bos=True, eos=True)
    assert ids[-1] == ours.eos_id and (ids[0] == ours.bos_id) == (bos is not None)
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == TEXT


def test_packed_documents_without_a_bos_start_with_their_first_token(tmp_path):
    folder = _tokenizer_folder(tmp_path / "tok", None, "<|endoftext|>")
    text = tmp_path / "docs.txt"
    text.write_text("One day a cat sat.\n\nThe dog ran home.\n")
    data = load_lm_text(text, folder, seq_len=32, document_separator="blank_line")
    tok = HuggingFaceTokenizer(folder)
    first = tok.encode("One day a cat sat.", bos=False, eos=True)
    second = tok.encode("The dog ran home.", bos=False, eos=True)
    row = data.arrays["input_ids"][0]
    labels, mask = data.arrays["labels"][0], data.arrays["loss_mask"][0]
    stream = first + second
    assert list(row[: len(stream) - 1]) == stream[:-1]
    assert list(labels[: len(stream) - 1]) == stream[1:]
    # the first token of each document is never a target; everything after it is
    n1 = len(first)
    assert mask[n1 - 1] == 0 and np.all(mask[: n1 - 1] == 1)
    assert np.all(mask[n1 : len(stream) - 1] == 1)


def test_a_sentencepiece_model_is_still_read(tmp_path):
    assert isinstance(load_lm_tokenizer(STORIES / "tok512.model"), SentencePieceTokenizer)


def test_bad_tokenizers_are_named(tmp_path):
    folder = _tokenizer_folder(tmp_path / "tok", "<s>", "</s>")
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    with pytest.raises(DataError, match="no eos_token"):
        load_lm_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    with pytest.raises(DataError, match="'<eos>' is not in its vocabulary"):
        load_lm_tokenizer(folder)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="is not a Hugging Face tokenizer.json"):
        load_lm_tokenizer(tmp_path / "broken.json")
    (tmp_path / "x.model").write_bytes(b"junk")
    with pytest.raises(DataError, match="is not a SentencePiece model"):
        load_lm_tokenizer(tmp_path / "x.model")


@pytest.mark.slow
def test_a_checkpoint_folder_brings_its_tokenizer_to_an_lm_run(tmp_path, randomized_eval):
    """stories_lora.py's smoke run on a tiny Qwen2 whose folder holds a Qwen-style
    tokenizer.json and no data.tokenizer: the run reads the folder's tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from adapt.config import load_config_file
    from adapt.harness.loop import run

    folder = _tokenizer_folder(tmp_path / "qwen2", None, "<|endoftext|>")
    tok = HuggingFaceTokenizer(folder)
    torch.manual_seed(0)
    model = randomized_eval(transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=56,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256,
                                 eos_token_id=tok.eos_id, tie_word_embeddings=True)
    ))  # fmt: skip
    model.save_pretrained(folder, safe_serialization=True)
    config = load_config_file(str(REPO / "configs/llm/stories_lora.py"), "smoke")
    config.model = {"kind": "hf", "path": str(folder)}
    config.data.source = str(REPO / config.data.source)
    del config.data["tokenizer"]
    results = run(config, tmp_path / "w")
    assert results["steps"] == 4 and np.isfinite(results["eval"]["loss"])
    # the rows are the folder tokenizer's packing of the text, not the SentencePiece model's
    options = {"document_separator": config.data.document_separator}
    ours = load_lm_text(config.data.source, folder, 128, **options).num_examples
    theirs = load_lm_text(config.data.source, STORIES / "tok512.model", 128, **options)
    assert sum(results["data"]["examples"].values()) == ours != theirs.num_examples
