"""Causal-LM prompt/response fine-tuning end to end: the vendored data, the config, the masking.

The data set (``third_party/stories260K/instruct_*.jsonl``) is derived from the vendored
TinyStories sample by :func:`instruct_examples` below; the first test checks the files still
equal that derivation, so the METADATA's description of them cannot drift.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adapt.convert.llama2c import SentencePieceTokenizer, load_llama2c
from adapt.convert.native import load_native
from adapt.harness.command_line import load_config_file
from adapt.harness.loop import build, evaluate, run

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO / "third_party" / "stories260K"
CONFIG = REPO / "configs" / "llm" / "stories_instruct.py"
BASE_PERPLEXITY = 10.4475  # stories260K on the held-out responses (float32 CPU)


# ---------------------------------------------------------------------------- the data set
def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph: a break after ``.``/``!``/``?`` (and a closing quote), outside
    quotes, before a capital letter or an opening quote. ``"Hi!" said the duck.`` stays one
    sentence; ``“Wow! Can I buy it?”`` is not split inside the quote."""
    out, start, quoted, i, n = [], 0, False, 0, len(paragraph)
    while i < n:
        c = paragraph[i]
        if c == "“" or (c == '"' and not quoted):
            quoted = True
        elif c == "”" or (c == '"' and quoted):
            quoted = False
        elif c in ".!?":
            end = i + 1
            if end < n and quoted and paragraph[end] in '”"':
                quoted, end = False, end + 1
            nxt = n - len(paragraph[end:].lstrip(" "))  # the next non-space character
            spaced = not quoted and end < nxt < n
            if spaced and (paragraph[nxt].isupper() or paragraph[nxt] in '“"'):
                out.append(paragraph[start:end].strip())
                start = nxt
            i = end
            continue
        i += 1
    if paragraph[start:].strip():
        out.append(paragraph[start:].strip())
    return out


def instruct_examples(text: str) -> tuple[list[dict], list[dict]]:
    """(train, held-out) prompt/response pairs: per story, prompt = up to two consecutive
    sentences, response = the next sentence. Stories 1-4 train; story 5 is held out."""
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()]
    per_story = []
    for story in stories:
        sents = [s for para in story.splitlines() for s in split_sentences(para)]
        per_story.append(
            [
                {"prompt": " ".join(sents[max(0, j - 2) : j]), "response": sents[j]}
                for j in range(1, len(sents))
            ]
        )
    return [e for ex in per_story[:4] for e in ex], per_story[4]


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def test_vendored_instruct_data_is_the_documented_derivation():
    train, heldout = instruct_examples((STORIES / "tinystories_sample.txt").read_text("utf-8"))
    assert (len(train), len(heldout)) == (50, 18)
    assert (STORIES / "instruct_sample.jsonl").read_text("utf-8") == _jsonl(train)
    assert (STORIES / "instruct_heldout.jsonl").read_text("utf-8") == _jsonl(heldout)
    assert not {e["response"] for e in train} & {e["response"] for e in heldout}
    assert split_sentences('"Hi, Ollie!" said the duck. "Hi, duck!" said Ollie.') == [
        '"Hi, Ollie!" said the duck.',
        '"Hi, duck!" said Ollie.',
    ]
    assert split_sentences("He said, “Wow! Can I buy it?” So he did.") == [
        "He said, “Wow! Can I buy it?”",
        "So he did.",
    ]


# ---------------------------------------------------------------------------- the config
@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # the config names vendored files relative to the repo root


def _config(tmp_path: Path, arg: str = ""):
    config = load_config_file(str(CONFIG), arg)
    config.data.cache_dir = str(tmp_path / "datasets_cache")  # keep datasets' Arrow copy here
    config.train.progress = False
    return config


@pytest.mark.slow
def test_smoke_config_runs(tmp_path):
    results = run(_config(tmp_path, "smoke"), tmp_path / "run")
    assert results["steps"] == 4 and results["method"] == "lora"
    assert 0 < results["trainable_params"] < results["total_params"]
    assert 1.0 < results["eval"]["perplexity"] < 512  # finite, below uniform


def _response_nll(module, params, arrays) -> tuple[float, float]:
    """Mean NLL (nats) of the EOS targets and of the other response targets."""
    logits = module.apply(
        {"params": params}, jnp.asarray(arrays["input_ids"]), jnp.asarray(arrays["attention_mask"])
    )["logits"]
    nll = np.asarray(
        optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(arrays["labels"]))
    )
    target = arrays["loss_mask"] == 1
    eos = target & (arrays["labels"] == 2)
    return float(nll[eos].mean()), float(nll[target & ~eos].mean())


@pytest.mark.slow  # 100 real steps, two evaluations and an export: ~35 s of CPU
def test_lora_lowers_heldout_perplexity_below_the_base_model(tmp_path):
    """The config's claim: held-out perplexity 10.45 -> ~6.1, all of it from learning to end
    the response with EOS (the base model was pretrained without EOS)."""
    config = _config(tmp_path)
    config.export = dict(native=True)  # the merged model, to look inside the perplexity
    exp = build(config)  # LoRA's B starts at zero: these params compute the base model
    eval_data = exp.data.eval
    assert eval_data.num_examples == 18
    base = evaluate(exp.task, exp.forward, exp.model.params, {}, eval_data, 32, exp.mesh, None)[
        "perplexity"
    ]
    results = run(config, tmp_path / "run")
    tuned = results["eval"]["perplexity"]
    print(f"held-out response perplexity: base {base:.4f} -> LoRA {tuned:.4f} after 100 steps")
    assert base == pytest.approx(BASE_PERPLEXITY, rel=1e-3)
    assert results["steps"] == 100
    assert tuned < 0.8 * base

    module, base_params, _ = load_llama2c(STORIES / "stories260K.bin")
    merged_module, merged, _ = load_native(tmp_path / "run" / "export_native")
    eos0, rest0 = _response_nll(module, base_params, eval_data.arrays)
    eos1, rest1 = _response_nll(merged_module, merged, eval_data.arrays)
    print(f"EOS targets {eos0:.2f} -> {eos1:.2f} nats; other targets {rest0:.3f} -> {rest1:.3f}")
    assert eos0 > 20 and eos1 < eos0 - 10
    assert abs(rest1 - rest0) < 0.3


def test_packed_prompt_tokens_carry_no_loss_or_gradient(tmp_path):
    """Packed rows through the harness's own loss: the loss-masked targets are exactly the
    responses and EOS, in order, and rewriting every other target (prompt tokens, BOS, padding)
    changes neither the loss nor any gradient, while rewriting one response target does."""
    config = _config(tmp_path, "smoke")
    config.data.update(pack_examples=True, seq_len=64)
    exp = build(config)
    arrays = exp.data.train.arrays
    tok = SentencePieceTokenizer(STORIES / "tok512.model")
    train, _ = instruct_examples((STORIES / "tinystories_sample.txt").read_text("utf-8"))
    responses = [t for e in train for t in [*tok.encode(e["response"], bos=False), tok.eos_id]]
    np.testing.assert_array_equal(arrays["labels"][arrays["loss_mask"] == 1], responses)
    prompt_targets = (arrays["loss_mask"] == 0) & (arrays["attention_mask"] == 1)
    assert prompt_targets.sum() > 500  # plenty of prompt tokens are there to be ignored

    batch = {k: jnp.asarray(v[:8]) for k, v in arrays.items()}
    # Non-zero LoRA B (at init it is zero, which would make some gradients trivially equal).
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.05 if "lora_b" in jax.tree_util.keystr(p) else v, exp.model.params
    )

    @jax.jit
    def loss_and_grads(batch):
        def f(params):
            return exp.loss_fn(params, {}, batch, jax.random.key(0))[0]

        return jax.value_and_grad(f)(params)

    loss, grads = loss_and_grads(batch)
    masked = np.asarray(batch["loss_mask"]) == 0
    noise = np.random.default_rng(0).integers(3, tok.vocab_size, masked.shape)
    relabelled = dict(batch, labels=jnp.where(masked, noise, batch["labels"]))
    assert (np.asarray(relabelled["labels"]) != np.asarray(batch["labels"]))[masked].mean() > 0.9
    loss2, grads2 = loss_and_grads(relabelled)
    assert float(loss2) == float(loss)
    jax.tree.map(np.testing.assert_array_equal, grads2, grads)

    r, c = np.argwhere(~masked)[0]
    one = np.asarray(batch["labels"]).copy()
    one[r, c] = (one[r, c] + 7) % tok.vocab_size
    loss3, grads3 = loss_and_grads(dict(batch, labels=jnp.asarray(one)))
    assert abs(float(loss3) - float(loss)) > 1e-4
    diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads3, grads)
    assert max(jax.tree.leaves(diff)) > 1e-6
