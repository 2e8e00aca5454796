"""Generation: cached vs uncached decoding, sampling filters, EOS stopping, left padding, methods,
and greedy parity with transformers' ``generate``."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt import partition, paths
from adapt.convert.hf import load_pretrained
from adapt.convert.llama2c import SentencePieceTokenizer, load_llama2c
from adapt.generate import (
    generate,
    greedy_generate,
    process_logits,
    sample_logits,
    top_k_filter,
    top_p_filter,
)
from adapt.methods import LoRA, PromptTuning
from adapt.methods.base import Method, apply, init

STORIES = Path(__file__).resolve().parents[1] / "third_party" / "stories260K"
PROMPTS = ["Once upon a time", "Tom had a red ball. He", "The cat"]
N = 24  # new tokens: one length everywhere, so tests share compiled loops


@pytest.fixture(scope="module")
def stories():
    module, params, _ = load_llama2c(STORIES / "stories260K.bin")
    return module, params


@pytest.fixture(scope="module")
def tokenizer():
    return SentencePieceTokenizer(STORIES / "tok512.model")


@pytest.fixture(scope="module")
def batch(tokenizer):
    """The prompts BOS-prefixed and left-padded to one (3, T) batch."""
    tok = tokenizer
    rows = [tok.encode(p, bos=True) for p in PROMPTS]
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    assert len({len(r) for r in rows}) == 3  # three different amounts of padding
    return ids, mask


class CountCalls(Method):
    """Counts, at run time, how often the whole model runs (to see the loop stop early)."""

    requires_match = False

    def __init__(self):
        super().__init__()
        self.calls = 0

    def intercept(self, next_fun, args, kwargs, context):
        if context.method_name == "__call__" and not context.module.path:
            jax.debug.callback(self._bump)
        return next_fun(*args, **kwargs)

    def _bump(self):
        self.calls += 1


def _np(x):
    return np.asarray(x)


# ---------------------------------------------------------------------------- decode loop
def test_cached_equals_uncached_greedy_and_sampled(stories, batch):
    module, params = stories
    ids, mask = batch
    for kw in (dict(greedy=True), dict(temperature=0.8, top_k=40, top_p=0.9)):
        kw = dict(kw, max_new_tokens=N, rng=jax.random.key(3), eos_id=2)
        cached = generate(module, params, ids, mask, **kw)
        full = generate(module, params, ids, mask, use_cache=False, **kw)
        np.testing.assert_array_equal(_np(cached.tokens), _np(full.tokens))
        np.testing.assert_array_equal(_np(cached.lengths), _np(full.lengths))
        assert cached.tokens.shape == (3, N) and cached.tokens.dtype == jnp.int32
    # greedy_generate is the thin wrapper: prompt + the same argmax tokens.
    greedy = generate(module, params, ids, mask, max_new_tokens=N, greedy=True)
    wrapped = greedy_generate(module, params, ids, mask, max_new_tokens=N)
    np.testing.assert_array_equal(_np(wrapped), np.concatenate([ids, _np(greedy.tokens)], 1))
    np.testing.assert_array_equal(_np(greedy.lengths), [N, N, N])


def test_sampling_is_reproducible_by_key_and_limits_equal_greedy(stories, batch):
    module, params = stories
    ids, mask = batch
    greedy = _np(generate(module, params, ids, mask, max_new_tokens=N, greedy=True).tokens)

    def sample(seed, **kw):
        out = generate(module, params, ids, mask, max_new_tokens=N, rng=jax.random.key(seed), **kw)
        return _np(out.tokens)

    a, b, c = sample(0), sample(0), sample(1)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != greedy).any()
    # top-k = 1 keeps only the argmax; a vanishing temperature sharpens onto it.
    np.testing.assert_array_equal(sample(5, top_k=1), greedy)
    np.testing.assert_array_equal(sample(5, temperature=1e-4), greedy)
    np.testing.assert_array_equal(sample(5, temperature=0.0), greedy)  # 0 means greedy
    # A tiny nucleus holds only the most probable token, whatever the key.
    np.testing.assert_array_equal(sample(6, top_p=1e-6), greedy)


def test_eos_stops_rows_and_the_loop(stories, batch, tokenizer):
    """Each row stops at its first EOS (kept) and pads after it; lengths count the EOS; a row
    of a left-padded batch continues exactly as the same prompt alone; the loop itself ends
    once every row has stopped (model calls counted at run time)."""
    module, params = stories
    ids, mask = batch
    free = _np(generate(module, params, ids, mask, max_new_tokens=N, greedy=True).tokens)
    period = tokenizer.sp.piece_to_id(".")  # plays EOS: each row ends a sentence, at its own step
    first = [int(np.argmax(r == period)) if (r == period).any() else None for r in free]
    assert None not in first and len(set(first)) == 3 and max(first) < N - 2
    kw = dict(max_new_tokens=N, greedy=True, eos_id=period, pad_id=-1)
    out = generate(module, params, ids, mask, **kw)
    tokens, lengths = _np(out.tokens), _np(out.lengths)
    np.testing.assert_array_equal(lengths, np.array(first) + 1)
    for row, n in enumerate(lengths):
        np.testing.assert_array_equal(tokens[row, :n], free[row, :n])
        assert (tokens[row, n:] == -1).all()

    for row in (0, 2):  # the padded rows (each new prompt length compiles a new loop)
        counter = CountCalls()
        alone = generate(
            module, params, ids[row : row + 1, mask[row] == 1], methods=[counter], **kw
        )
        np.testing.assert_array_equal(_np(alone.tokens)[0], tokens[row])
        assert int(alone.lengths[0]) == lengths[row] < N
        assert counter.calls == lengths[row]  # the prefill + one call per further step, no more


@pytest.mark.slow
def test_methods_attach_during_generation(stories, batch):
    """LoRA through ``methods=`` generates what its merged weights generate (and not what the
    base model does); prompt tuning is refused by the cache and runs uncached."""
    module, params = stories
    ids, mask = batch
    lora, prompt = LoRA(r".*self_attn/(q_proj|v_proj)", rank=4), PromptTuning(num_tokens=3)
    extra = init(module, params, [lora, prompt], jax.random.key(0), jnp.asarray(ids))
    noise = np.random.default_rng(1)
    extra = jax.tree_util.tree_map_with_path(  # B starts at zero: make the adapter matter
        lambda p, v: (
            jnp.asarray(0.1 * noise.standard_normal(v.shape), v.dtype)
            if "lora_b" in jax.tree_util.keystr(p)
            else v
        ),
        extra,
    )
    flat = paths.flatten(extra)
    adapted, soft = (
        partition.merge(params, paths.unflatten({k: v for k, v in flat.items() if keep(k)}))
        for keep in (lambda k: "lora" in k, lambda k: "prompt" in k)
    )
    kw = dict(max_new_tokens=N, greedy=True)
    with_lora = _np(generate(module, adapted, ids, mask, methods=[lora], **kw).tokens)
    merged = _np(generate(module, lora.merge(adapted), ids, mask, **kw).tokens)
    plain = _np(generate(module, params, ids, mask, **kw).tokens)
    np.testing.assert_array_equal(with_lora, merged)
    assert (with_lora != plain).any()

    # Prompt tuning prepends on every call, which a cache cannot hold: refused at trace time.
    # Uncached, the next-token logits are read past the 3 prepended positions.
    with pytest.raises(ValueError, match="use_cache=False"):
        generate(module, soft, ids, mask, methods=[prompt], **kw)
    out = generate(module, soft, ids, mask, methods=[prompt], use_cache=False, **kw)
    logits = jax.jit(lambda p: apply(module, p, [prompt], ids, mask)["logits"])(soft)
    assert logits.shape[1] == ids.shape[1] + 3
    first = _np(jnp.argmax(logits[:, -1], -1))
    np.testing.assert_array_equal(_np(out.tokens)[:, 0], first)
    assert (_np(out.tokens) != plain).any()


def test_bad_arguments_are_refused(stories, batch):
    module, params = stories
    ids, mask = batch
    with pytest.raises(ValueError, match="left-padded"):
        generate(module, params, ids[:, ::-1], mask[:, ::-1], max_new_tokens=4, greedy=True)
    with pytest.raises(ValueError, match="rng="):
        generate(module, params, ids, mask, max_new_tokens=4)
    for bad in (dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0), dict(temperature=-1.0)):
        with pytest.raises(ValueError):
            generate(module, params, ids, mask, max_new_tokens=4, rng=jax.random.key(0), **bad)
    empty = generate(module, params, ids, mask, max_new_tokens=0, greedy=True)
    assert empty.tokens.shape == (3, 0)


# ---------------------------------------------------------------------------- filters
def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.05, 0.5, 0.1, 0.2, 0.15])  # sorted: 0.5, 0.2, 0.15, 0.1, 0.05
    logits = jnp.asarray(np.log(probs)[None], jnp.float32)
    for p, kept in [
        (0.3, {1}),
        (0.6, {1, 3}),
        (0.8, {1, 3, 4}),
        (0.9, {1, 3, 4, 2}),
        (0.99, {0, 1, 2, 3, 4}),
        (1.0, {0, 1, 2, 3, 4}),
    ]:
        out = _np(top_p_filter(logits, p))[0]
        assert set(np.flatnonzero(np.isfinite(out))) == kept, p
        np.testing.assert_array_equal(out[list(kept)], _np(logits)[0, list(kept)])
    out = _np(top_k_filter(logits, 2))[0]
    assert set(np.flatnonzero(np.isfinite(out))) == {1, 3}
    assert np.isfinite(_np(top_k_filter(logits, 50))).all()  # k > vocabulary keeps all


def test_filters_match_transformers_warpers():
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = np.random.default_rng(0).normal(0, 3, (16, 200)).astype(np.float32)
    t = torch.tensor(logits)
    for temperature, k, p in [(1.0, None, 0.9), (0.7, 20, 0.5), (1.3, 5, None), (0.5, None, 0.2)]:
        want = TemperatureLogitsWarper(temperature)(None, t.clone())
        if k is not None:
            want = TopKLogitsWarper(k)(None, want)
        if p is not None:
            want = TopPLogitsWarper(p)(None, want)
        got = _np(process_logits(jnp.asarray(logits), temperature, k, p))
        want = want.numpy()
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-6)


def test_samples_follow_the_filtered_distribution():
    logits = jnp.log(jnp.asarray([[0.4, 0.3, 0.2, 0.1]]))
    rows = jnp.broadcast_to(logits, (20000, 4))
    draws = _np(sample_logits(rows, jax.random.key(0), top_k=3, temperature=0.5))
    freq = np.bincount(draws, minlength=4) / len(draws)
    kept = np.array([0.4, 0.3, 0.2, 0.0]) ** 2  # temperature 0.5 squares probabilities
    np.testing.assert_allclose(freq, kept / kept.sum(), atol=0.015)


# ---------------------------------------------------------------------------- transformers
def test_greedy_with_eos_matches_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    hf = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    hf.config._attn_implementation = "eager"
    hf.eval().save_pretrained(tmp_path, safe_serialization=True)
    module, params, _ = load_pretrained(tmp_path)

    rng = np.random.default_rng(0)
    ids = rng.integers(3, 64, size=(3, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :2] = mask[2, :5] = 0
    ids[mask == 0] = 0
    free = _np(generate(module, params, ids, mask, max_new_tokens=12, greedy=True).tokens)
    eos = int(free[0, 4])
    ours = generate(module, params, ids, mask, max_new_tokens=12, greedy=True, eos_id=eos)
    assert int(ours.lengths[0]) == int(np.argmax(free[0] == eos)) + 1 <= 5
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
        ).numpy()[:, ids.shape[1] :]
    n = ref.shape[1]
    np.testing.assert_array_equal(_np(ours.tokens)[:, :n], ref)
    assert (_np(ours.tokens)[:, n:] == 0).all()
    assert n == int(ours.lengths.max())  # both stop once every row has produced EOS
