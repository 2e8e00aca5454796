"""Karpathy's stories260K (llama2.c) through our LLaMA, checked against a numpy transcription of
llama2.c's ``run.c`` that reads the raw ``.bin`` itself (adjacent-pair RoPE from the stored
tables, no weight permutation), so neither the importer nor our model is trusted by the check."""

import hashlib
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.convert.llama2c import (
    Llama2cFormatError,
    SentencePieceTokenizer,
    load_llama2c,
    read_llama2c,
)
from adapt.generate import greedy_generate

SEQ_LEN = 512


@pytest.fixture(scope="module")
def files(third_party):
    return third_party / "stories260K"


@pytest.fixture(scope="module")
def tokenizer(files):
    pytest.importorskip("sentencepiece")
    return SentencePieceTokenizer(files / "tok512.model")


@pytest.fixture(scope="module")
def loaded(files):
    return load_llama2c(files / "stories260K.bin")


# ------------------------------------------------------------- run.c, transcribed into numpy
class RunC:
    """llama2.c ``run.c`` (legacy v0 checkpoint) in float64: one token at a time, KV cache."""

    def __init__(self, path):
        raw = path.read_bytes()
        dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", raw[:28])
        self.shared = vocab > 0
        vocab = abs(vocab)
        hs = dim // heads
        self.dim, self.layers, self.heads, self.kv_heads, self.hs = dim, layers, heads, kv_heads, hs
        self.seq_len = seq_len
        data = np.frombuffer(raw, "<f4", offset=28).astype(np.float64)
        sizes = [
            ("tok", (vocab, dim)),
            ("rms_att", (layers, dim)),
            ("wq", (layers, dim, dim)),
            ("wk", (layers, kv_heads * hs, dim)),
            ("wv", (layers, kv_heads * hs, dim)),
            ("wo", (layers, dim, dim)),
            ("rms_ffn", (layers, dim)),
            ("w1", (layers, hidden, dim)),
            ("w2", (layers, dim, hidden)),
            ("w3", (layers, hidden, dim)),
            ("rms_final", (dim,)),
            ("fcr", (seq_len, hs // 2)),
            ("fci", (seq_len, hs // 2)),
        ]
        if not self.shared:
            sizes.append(("wcls", (vocab, dim)))
        off = 0
        for name, shape in sizes:
            n = int(np.prod(shape))
            setattr(self, name, data[off : off + n].reshape(shape))
            off += n
        assert off == data.size
        if self.shared:
            self.wcls = self.tok

    @staticmethod
    def rmsnorm(x, w):
        return w * (x / np.sqrt(np.mean(x * x) + 1e-5))

    def rope(self, v, pos):  # adjacent pairs (2j, 2j+1) within each head
        pairs = v.reshape(-1, self.hs // 2, 2)
        c, s = self.fcr[pos], self.fci[pos]
        a, b = pairs[..., 0], pairs[..., 1]
        return np.stack([a * c - b * s, a * s + b * c], -1).reshape(-1)

    def reset(self):
        kv_dim = self.kv_heads * self.hs
        self.kcache = np.zeros((self.layers, self.seq_len, kv_dim))
        self.vcache = np.zeros((self.layers, self.seq_len, kv_dim))

    def forward(self, token, pos):
        """run.c's ``forward``: logits for ``token`` at ``pos``, filling the KV cache."""
        group = self.heads // self.kv_heads
        x = self.tok[token].copy()
        for layer in range(self.layers):
            xb = self.rmsnorm(x, self.rms_att[layer])
            q = self.rope(self.wq[layer] @ xb, pos)
            self.kcache[layer, pos] = self.rope(self.wk[layer] @ xb, pos)
            self.vcache[layer, pos] = self.wv[layer] @ xb
            att_out = np.zeros(self.dim)
            for h in range(self.heads):
                kvh = (h // group) * self.hs
                qh = q[h * self.hs : (h + 1) * self.hs]
                keys = self.kcache[layer, : pos + 1, kvh : kvh + self.hs]
                scores = keys @ qh / np.sqrt(self.hs)
                att = np.exp(scores - scores.max())
                att /= att.sum()
                values = self.vcache[layer, : pos + 1, kvh : kvh + self.hs]
                att_out[h * self.hs : (h + 1) * self.hs] = att @ values
            x = x + self.wo[layer] @ att_out
            xb = self.rmsnorm(x, self.rms_ffn[layer])
            h1 = self.w1[layer] @ xb
            x = x + self.w2[layer] @ (h1 / (1 + np.exp(-h1)) * (self.w3[layer] @ xb))
        return self.wcls @ self.rmsnorm(x, self.rms_final)

    def logits(self, tokens):
        """Logits after each token of ``tokens`` (positions 0, 1, ...)."""
        self.reset()
        return np.stack([self.forward(t, pos) for pos, t in enumerate(tokens)])

    def greedy(self, prompt, steps):
        logits, tokens = self.logits(prompt)[-1], list(prompt)
        for _ in range(steps):
            tokens.append(int(np.argmax(logits)))
            logits = self.forward(tokens[-1], len(tokens) - 1)
        return tokens


def _nll(logits, targets):
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], -1)[..., 0]


def _story_windows(files, tokenizer):
    """TinyStories as llama2.c trains on it: each story BOS-prefixed, concatenated, then cut into
    windows of seq_len inputs (+1 target), the last one shorter."""
    text = (files / "tinystories_sample.txt").read_text()
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()]
    stream = np.array([t for s in stories for t in tokenizer.encode(s, bos=True)], np.int32)
    return [stream[i : i + SEQ_LEN + 1] for i in range(0, len(stream) - 1, SEQ_LEN)]


# ---------------------------------------------------------------------------------------- tests
def test_vendored_files_match_metadata(files):
    meta = (files / "METADATA").read_text()
    listed = dict((name, digest) for digest, name in re.findall(r"([0-9a-f]{64})\s+(\S+)", meta))
    assert set(listed) == {
        "stories260K.bin",
        "tok512.model",
        "tok512.bin",
        "tinystories_sample.txt",
    }
    for name, digest in listed.items():
        assert hashlib.sha256((files / name).read_bytes()).hexdigest() == digest, name


def test_config_and_shapes(loaded):
    module, params, config = loaded
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (64, 172, 5)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (8, 4, 8)
    assert config.vocab_size == 512 and config.tie_word_embeddings and "lm_head" not in params
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n == 260_032  # the model card's count of real weights


def test_teacher_forced_nll_matches_run_c(files, tokenizer, loaded):
    module, params, _ = loaded
    windows = _story_windows(files, tokenizer)
    assert len(windows) >= 3 and all(len(w) == SEQ_LEN + 1 for w in windows[:-1])
    batch = np.zeros((len(windows), SEQ_LEN), np.int32)
    mask = np.zeros_like(batch)
    for i, w in enumerate(windows):
        batch[i, : len(w) - 1], mask[i, : len(w) - 1] = w[:-1], 1
    logits = np.asarray(jax.jit(module.apply)({"params": params}, batch, mask)["logits"])

    ref = RunC(files / "stories260K.bin")
    ours_nll, ref_nll = [], []
    for i, w in enumerate(windows):
        n = len(w) - 1
        ours_nll.append(_nll(logits[i, :n].astype(np.float64), w[1:]))
        ref_nll.append(_nll(ref.logits(w[:-1]), w[1:]))
    ours_nll, ref_nll = np.concatenate(ours_nll), np.concatenate(ref_nll)
    np.testing.assert_allclose(ours_nll, ref_nll, atol=1e-4, rtol=0)
    mean = float(ours_nll.mean())
    print(
        f"stories260K mean NLL on the TinyStories sample: {mean:.4f} nats/token "
        f"over {ours_nll.size} tokens (uniform would be {np.log(512):.2f})"
    )
    assert 0.5 < mean < 2.5


def test_greedy_decoding_cached_uncached_and_run_c_agree(files, tokenizer, loaded):
    module, params, _ = loaded
    prompt = tokenizer.encode("Once upon a time", bos=True)
    assert prompt[0] == tokenizer.bos_id == 1
    cached = np.asarray(greedy_generate(module, params, jnp.array([prompt]), max_new_tokens=40))
    full = np.asarray(
        greedy_generate(module, params, jnp.array([prompt]), max_new_tokens=40, use_cache=False)
    )
    np.testing.assert_array_equal(cached, full)

    np.testing.assert_array_equal(cached[0], RunC(files / "stories260K.bin").greedy(prompt, 40))

    text = tokenizer.decode(cached[0])
    print("stories260K greedy:", text)
    assert text.startswith("Once upon a time")
    words = [re.sub(r"[^\w]", "", w) for w in text.split()]
    words = [w for w in words if w]
    assert len(words) >= 15
    assert sum(w.isalpha() for w in words) >= 0.9 * len(words)
    assert {"the", "a", "was"} & {w.lower() for w in words}


def test_exported_to_transformers_gives_the_same_logits(files, tokenizer, loaded, tmp_path):
    """llama2.c -> ours -> HF directory -> transformers: the permuted q/k rows are what HF's
    rotate_half RoPE expects, and the tied classifier survives the export."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from adapt.convert.hf import save_pretrained

    module, params, config = loaded
    out = save_pretrained(params, config, tmp_path / "hf", architecture="LlamaForCausalLM")
    hf = transformers.LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    window = _story_windows(files, tokenizer)[1][:-1]
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(window[None], dtype=torch.long)).logits.numpy()[0]
    got = np.asarray(module.apply({"params": params}, window[None])["logits"])[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_tokenizer_round_trip_and_agrees_with_tok512_bin(files, tokenizer):
    text = "Once upon a time, Lily saw a big red ball. “Wow!” she said."
    ids = tokenizer.encode(text, bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and tokenizer.vocab_size == 512
    assert tokenizer.decode(ids) == text
    raw = (files / "tok512.bin").read_bytes()
    off, pieces = 4, []
    for _ in range(512):
        score, n = struct.unpack_from("<fi", raw, off)
        pieces.append((raw[off + 8 : off + 8 + n].decode("utf-8"), score))
        off += 8 + n
    assert off == len(raw)
    for i, (piece, score) in enumerate(pieces):
        if i > 2:  # llama2.c stores <s>/</s> as "\n<s>\n"/"\n</s>\n"
            assert piece == tokenizer.sp.id_to_piece(i).replace("▁", " "), i
        assert score == pytest.approx(tokenizer.sp.get_score(i)), i


def test_bad_files_are_refused(files, tmp_path):
    raw = (files / "stories260K.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(raw[:-4])
    with pytest.raises(Llama2cFormatError, match="truncated"):
        read_llama2c(tmp_path / "short.bin")
    (tmp_path / "v1.bin").write_bytes(struct.pack("<Ii", 0x616B3432, 1) + raw[8:])
    with pytest.raises(Llama2cFormatError, match="ak42"):
        read_llama2c(tmp_path / "v1.bin")
    with pytest.raises(Llama2cFormatError, match="rope_theta"):
        load_llama2c(files / "stories260K.bin", rope_theta=500000.0)
