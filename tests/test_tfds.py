"""TensorFlow Datasets sources (``tfds:<name>``): data sets prepared here by local builders (TFDS's
registered builders would try the network), read back without TensorFlow for image and text
classification and causal-LM tuning, by the loaders and by whole runs of the generic configs from
the command line in a fresh process (which has never imported the builders: the prepared files
alone must suffice); the image and LM configs also on files made here (the text config's CSV,
JSONL and parquet runs are tests/test_own_data.py's)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt import data as D

tfds = pytest.importorskip("tensorflow_datasets")
REPO = Path(__file__).resolve().parents[1]
WORDS = {0: "dreadful", 1: "lovely"}


class AdaptTestImages(tfds.core.GeneratorBasedBuilder):
    """8x8 grey PNG images (as ``tfds build`` stores images; PIL encodes them without
    TensorFlow); image i is filled with the value 7 * i, its label is i % 3."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(names=["cat", "dog", "bird"]),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(24)), "test": self._generate_examples(
            range(24, 33))}  # fmt: skip

    def _generate_examples(self, indices):
        for i in indices:
            image = Image.fromarray(np.full((8, 8), 7 * i, np.uint8), mode="L")
            yield i, {"image": image, "label": i % 3}


class AdaptTestTexts(tfds.core.GeneratorBasedBuilder):
    """Sentences whose first word gives the class: 'lovely ...' (pos) or 'dreadful ...' (neg)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["neg", "pos"])}
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(40)), "test": self._generate_examples(
            range(40, 52))}  # fmt: skip

    def _generate_examples(self, indices):
        for i in indices:
            yield i, {"text": f"{WORDS[i % 2]} film number {i} ü", "label": i % 2}


class AdaptTestInstructions(tfds.core.GeneratorBasedBuilder):
    """Prompt/response pairs for causal-LM tuning."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"prompt": tfds.features.Text(), "response": tfds.features.Text()}
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(24))}

    def _generate_examples(self, indices):
        for i in indices:
            yield i, INSTRUCTIONS[i % len(INSTRUCTIONS)]


INSTRUCTIONS = [
    {"prompt": "Once upon a time there was a", "response": " little girl named Lily."},
    {"prompt": "The dog ran to the", "response": " park and played with a ball."},
    {"prompt": "Tom was happy because", "response": " he found a big red apple."},
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tfds")
    for builder in (AdaptTestImages, AdaptTestTexts, AdaptTestInstructions):
        builder(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


def test_a_prepared_image_set_reads_with_its_class_names(data_dir):
    data = D.load_image_classification("tfds:adapt_test_images", split="train", data_dir=data_dir)
    images = data.inputs["images"]
    assert images.shape == (24, 8, 8, 1) and images.dtype == np.uint8
    assert data.label_names == ["cat", "dog", "bird"]
    index = images[:, 0, 0, 0] // 7  # which generated example each row is
    assert sorted(index.tolist()) == list(range(24))  # every example once
    np.testing.assert_array_equal(data.labels, index % 3)
    test = D.load_image_classification("tfds:adapt_test_images", split="test", data_dir=data_dir)
    assert sorted((test.inputs["images"][:, 0, 0, 0] // 7).tolist()) == list(range(24, 33))


def test_a_prepared_text_set_reads_decoded_with_its_class_names(data_dir):
    data = D.read_text_classification("tfds:adapt_test_texts", split="test", data_dir=data_dir)
    assert data.label_names == ["neg", "pos"]
    texts = data.inputs["text"]
    assert len(texts) == 12 and all(isinstance(t, str) and t.endswith("ü") for t in texts)
    for text, label in zip(texts, data.labels, strict=True):
        assert text.startswith(WORDS[int(label)])
    picked = D.read_text_classification(
        "tfds:adapt_test_texts", split="train", data_dir=data_dir, examples_per_class=3, seed=1
    )
    assert np.bincount(picked.labels).tolist() == [3, 3]


def test_tfds_errors_name_the_feature_or_the_preparation(data_dir, tmp_path):
    with pytest.raises(D.DataError, match=r"no \['image'\] feature; its features are"):
        D.load_image_classification("tfds:adapt_test_texts", split="train", data_dir=data_dir)
    with pytest.raises(D.DataError, match="'adapt_test_texts' split 'validation' is not prepared"):
        D.read_text_classification("tfds:adapt_test_texts", split="validation", data_dir=data_dir)
    # a prepared split whose slice holds nothing is not "not prepared": say what the splits hold
    with pytest.raises(D.DataError, match=r"'train\[40:\]' selects no records .*train \(40 rec"):
        D.read_text_classification("tfds:adapt_test_texts", split="train[40:]", data_dir=data_dir)
    with pytest.raises(D.DataError, match=r"'train\[1000:\]': .*incompatible with 40 .*test \(12"):
        D.read_text_classification("tfds:adapt_test_texts", split="train[1000:]", data_dir=data_dir)
    with pytest.raises(D.DataError, match=r"not prepared .*tfds build mnist"):
        D.load_image_classification("tfds:mnist", split="test", data_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was downloaded or generated


def test_streamed_tfds_batches_equal_the_in_memory_batches(data_dir):
    """Images (augmented: the draws are the global batch's) and texts read per batch from the
    prepared sets give the in-memory batches, on one process and as two halves."""
    pytest.importorskip("grain")
    from adapt import weights
    from adapt.data.streaming import open_image_classification, open_text_classification

    aug = D.Augmentation(crop_padding=2, horizontal_flip=True)
    prep = D.ImagePreprocessing(image_size=12, channels=3)
    streamed = open_image_classification("tfds:adapt_test_images", preprocessing=prep,
                                         augmentation=aug, data_dir=str(data_dir))  # fmt: skip
    in_memory = D.load_image_classification("tfds:adapt_test_images", preprocessing=prep,
                                            augmentation=aug, data_dir=data_dir)  # fmt: skip
    assert streamed.label_names == ["cat", "dog", "bird"]
    whole = D.train_batches(streamed, 8, seed=2)
    ref = D.train_batches(in_memory, 8, seed=2)
    halves = [D.train_batches(streamed, 8, seed=2, process_index=p, process_count=2)
              for p in (0, 1)]  # fmt: skip
    for _ in range(5):
        x, y, parts = next(whole), next(ref), [next(h) for h in halves]
        for key in y:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), y[key])
    tok = weights.resolve("all-MiniLM-L6-v2") / "tokenizer.json"
    texts = open_text_classification("tfds:adapt_test_texts", tok, data_dir=str(data_dir),
                                     max_length=16)  # fmt: skip
    memory = D.load_text_classification("tfds:adapt_test_texts", tok, split="train",
                                        data_dir=data_dir, max_length=16,
                                        bucket_boundaries=None)  # fmt: skip
    assert texts.label_names == ["neg", "pos"]
    x, y = next(D.train_batches(texts, 4, seed=0)), next(D.train_batches(memory, 4, seed=0))
    for key in y:
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _finetune(workdir: Path, config: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run(
        [sys.executable, "-m", "experiments.finetune", f"--workdir={workdir}", f"--config={config}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.mark.slow
def test_a_tfds_text_set_trains_through_the_generic_config(data_dir, tmp_path):
    out = _finetune(
        tmp_path / "w",
        f"configs/text/classify.py:train=tfds:adapt_test_texts,data_dir={data_dir},smoke",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 classes: 0=neg, 1=pos" in out.stderr
    assert json.loads((tmp_path / "w" / "labels.json").read_text()) == {"0": "neg", "1": "pos"}
    rows = [json.loads(line) for line in (tmp_path / "w" / "predictions.jsonl").open()]
    first_word = {"neg": WORDS[0], "pos": WORDS[1]}  # predictions name the labels
    assert len(rows) == 12 and all(r["text"].startswith(first_word[r["label"]]) for r in rows)


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    """A tiny Hugging Face ViT image classifier for 8x8 grey images, saved by transformers."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16,
                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       num_labels=5)  # fmt: skip
    folder = tmp_path_factory.mktemp("vit")
    ViTForImageClassification(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True], ids=["in_memory", "streaming"])
def test_a_tfds_image_set_trains_a_vit_with_lora_through_the_generic_config(
    data_dir, tiny_vit, tmp_path, streaming
):
    if streaming:
        pytest.importorskip("grain")
    out = _finetune(
        tmp_path / "w",
        f"configs/vision/classify.py:model={tiny_vit},train=tfds:adapt_test_images,"
        f"data_dir={data_dir},method=lora,streaming={streaming},smoke",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3 classes: 0=cat, 1=dog, 2=bird" in out.stderr
    assert ("(streamed from disk)" in out.stderr) == streaming
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["method"] == "lora" and 0 < results["trainable_pct"] < 100
    assert results["data"]["examples"]["eval"] == 9


@pytest.mark.slow
def test_the_image_config_trains_on_an_npz_file(tiny_vit, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    images = (rng.integers(0, 40, (40, 8, 8)) + 50 * labels[:, None, None]).astype(np.uint8)
    np.savez(tmp_path / "mine.npz", images=images, labels=labels)
    out = _finetune(
        tmp_path / "w",
        f"configs/vision/classify.py:model={tiny_vit},train={tmp_path / 'mine.npz'},"
        "labels=a|b|c|d,method=full,smoke",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 classes: 0=a, 1=b, 2=c, 3=d" in out.stderr
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["data"]["examples"]["eval"] == 8  # a fifth of the file, held out


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny LLaMA checkpoint folder with its tokenizer.json (tests/test_chat.py's)."""
    import torch
    import transformers
    from test_chat import _folder

    from adapt.data.tokenizers import HuggingFaceTokenizer

    folder = _folder(tmp_path_factory.mktemp("llama") / "model")
    tok = HuggingFaceTokenizer(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("source", ["csv", "jsonl", "parquet", "tfds"])
def test_the_llm_config_tunes_on_prompt_response_rows(source, tiny_llama, data_dir, tmp_path):
    if source != "tfds":
        import pandas as pd

        frame = pd.DataFrame([INSTRUCTIONS[i % 3] for i in range(24)])
        train = tmp_path / f"rows.{source}"
        if source == "csv":
            frame.to_csv(train, index=False)
        elif source == "jsonl":
            frame.to_json(train, orient="records", lines=True)
        else:
            frame.to_parquet(train, index=False)
        where = str(train)
    else:
        where = f"tfds:adapt_test_instructions,data_dir={data_dir}"
    out = _finetune(
        tmp_path / "w",
        f"configs/llm/tune.py:model={tiny_llama},train={where},format=prompt_response,"
        "seq_len=32,smoke",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["steps"] == 4 and np.isfinite(results["eval"]["loss"])
    assert sum(results["data"]["examples"].values()) == 24  # every row, a tenth held out
