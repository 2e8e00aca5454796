"""The input pipeline on the vendored data: label maps and counts, few-label selection, bucketed
padding, (seed, step)-determinism, per-process slices, eval coverage, image preprocessing and
augmentation, LM packing and loss masks, and every DataError the brief promises."""

from __future__ import annotations

import gzip
import itertools
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from adapt import data as D
from adapt.data.images import resize_bilinear

SST2_NAMES = ["negative", "positive"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """datasets' Arrow cache for this module, so tests write nothing outside tmp."""
    return tmp_path_factory.mktemp("hf_datasets_cache")


@pytest.fixture(scope="module")
def tokenizer_json(minilm_dir) -> Path:
    return minilm_dir / "tokenizer.json"


@pytest.fixture(scope="module")
def sst2_dev(third_party, tokenizer_json, cache_dir) -> D.TextClassificationData:
    return D.load_text_classification(
        third_party / "sst2",
        tokenizer_json,
        split="dev",
        text_column="sentence",
        label_names=SST2_NAMES,
        max_length=64,
        bucket_boundaries=(16, 32),
        cache_dir=cache_dir,
    )


@pytest.fixture(scope="module")
def fmnist_test(third_party) -> D.ImageClassificationData:
    return D.load_image_classification(
        third_party / "fashion_mnist", split="test", label_names=D.FASHION_MNIST_CLASSES
    )


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def concat_processes(make_stream, count: int, steps: int) -> list[dict]:
    """Per step, the per-process batches of ``count`` processes concatenated row-wise."""
    streams = [take(make_stream(p, count), steps) for p in range(count)]
    return [
        {k: np.concatenate([s[i][k] for s in streams]) for k in streams[0][i]} for i in range(steps)
    ]


def tree_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- the vendored text data ------------------------------------------------------------------


def test_sst2_counts_label_map_and_stripping(third_party, cache_dir):
    train = D.read_text_classification(
        third_party / "sst2", text_column="sentence", label_names=SST2_NAMES, cache_dir=cache_dir
    )
    assert train.num_examples == 67_349
    assert train.label_names == SST2_NAMES
    np.testing.assert_array_equal(train.class_counts(), [29_780, 37_569])  # METADATA's counts
    assert (
        train.inputs["text"][0] == "hide new secretions from the parental units"
    )  # no trailing " "
    assert train.labels[:3].tolist() == [0, 0, 1]
    dev = D.read_text_classification(
        third_party / "sst2" / "dev.tsv", text_column="sentence", cache_dir=cache_dir
    )  # inferred names: the sorted unique integer labels
    assert dev.label_names == ["0", "1"]
    np.testing.assert_array_equal(dev.class_counts(), [428, 444])


def test_banking77_counts_and_category_order(third_party, cache_dir):
    names = json.loads((third_party / "banking77" / "categories.json").read_text())
    kwargs = dict(
        label_column="category",
        label_names_file=third_party / "banking77" / "categories.json",
        cache_dir=cache_dir,
    )
    train = D.read_text_classification(third_party / "banking77", split="train", **kwargs)
    test = D.read_text_classification(third_party / "banking77", split="test", **kwargs)
    assert train.num_examples == 10_003 and test.num_examples == 3_080
    assert train.label_names == names and len(names) == 77
    counts = train.class_counts()
    assert counts.min() == 35 and counts.max() == 187 and counts.sum() == 10_003
    np.testing.assert_array_equal(test.class_counts(), np.full(77, 40))
    # a quoted text with a comma, and CRLF stripped from the label
    row = train.inputs["text"].index("How do I know if I will get my card, or if it is lost?")
    assert train.label_names[train.labels[row]] == "card_arrival" == names[0]


def test_examples_per_class_is_stratified_nested_and_seeded(third_party, cache_dir):
    def read(k, seed):
        return D.read_text_classification(
            third_party / "banking77",
            label_column="category",
            label_names_file=third_party / "banking77" / "categories.json",
            examples_per_class=k,
            seed=seed,
            cache_dir=cache_dir,
        )

    ten, fifty, ten_again, other = read(10, 0), read(30, 0), read(10, 0), read(10, 1)
    np.testing.assert_array_equal(ten.class_counts(), np.full(77, 10))
    np.testing.assert_array_equal(fifty.class_counts(), np.full(77, 30))
    assert ten.inputs["text"] == ten_again.inputs["text"]
    assert set(ten.inputs["text"]) <= set(fifty.inputs["text"])  # budgets nest for one seed
    assert ten.inputs["text"] != other.inputs["text"]
    capped = D.select(ten, max_examples=100, seed=0)
    assert capped.num_examples == 100 and set(capped.inputs["text"]) <= set(ten.inputs["text"])


# --- tokenisation and bucketed padding -------------------------------------------------------


def test_tokenised_batches_pad_to_the_smallest_fitting_bucket(sst2_dev, tokenizer_json):
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(tokenizer_json))
    padded = reference.padding
    few = D.select(sst2_dev, max_examples=5)
    again = D.tokenize(few, reference, max_length=64)  # a Tokenizer object, padding enabled
    assert reference.padding == padded  # the caller's tokenizer is copied, not reconfigured
    for ids, expected in zip(again.inputs["input_ids"], few.inputs["input_ids"], strict=True):
        np.testing.assert_array_equal(ids, expected)  # unpadded, same as from tokenizer.json
    reference.no_padding()
    lengths = sst2_dev.lengths()
    assert lengths.max() <= 64 and lengths.min() >= 3
    seen = set()
    for batch in take(D.train_batches(sst2_dev, 16, seed=3, length_grouping=20), 54):
        width = batch["input_ids"].shape[1]
        longest = int(batch["attention_mask"].sum(1).max())
        expected = 16 if longest <= 16 else 32 if longest <= 32 else 64
        assert width == expected, (width, longest)
        seen.add(width)
        assert batch["labels"].dtype == np.int32 and batch["input_ids"].dtype == np.int32
        for row in range(16):
            n = int(batch["attention_mask"][row].sum())
            np.testing.assert_array_equal(batch["attention_mask"][row, :n], 1)
            np.testing.assert_array_equal(batch["input_ids"][row, n:], 0)  # [PAD]
            ids = batch["input_ids"][row, :n]
            assert ids[0] == reference.token_to_id("[CLS]") and ids[-1] == reference.token_to_id(
                "[SEP]"
            )
        np.testing.assert_array_equal(batch["token_type_ids"], 0)
    assert seen == {16, 32, 64}
    first = sst2_dev.inputs["text"][0]
    np.testing.assert_array_equal(sst2_dev.inputs["input_ids"][0], reference.encode(first).ids)


def test_text_pairs_and_truncation(tmp_path, tokenizer_json, cache_dir):
    (tmp_path / "pairs.csv").write_text(
        f'premise,hypothesis,label\n"A man, a plan",  a canal  ,yes\n{"word " * 50},short,no\n'
    )
    data = D.load_text_classification(
        tmp_path / "pairs.csv",
        tokenizer_json,
        text_column="premise",
        text_pair_column="hypothesis",
        label_names=["no", "yes"],
        max_length=20,
        bucket_boundaries=None,
        cache_dir=cache_dir,
    )
    assert data.labels.tolist() == [1, 0] and data.inputs["text_pair"][0] == "a canal"
    batch = next(D.eval_batches(data, 2))
    assert batch["input_ids"].shape == (2, 20)  # bucket_boundaries=None: always max_length
    assert len(data.inputs["input_ids"][1]) == 20  # truncated, special tokens included
    types = batch["token_type_ids"][0][batch["attention_mask"][0] == 1]
    assert types[0] == 0 and types[-1] == 1 and set(types.tolist()) == {0, 1}


def test_length_grouping_cuts_padding_and_keeps_every_example(sst2_dev):
    steps = D.steps_per_epoch(sst2_dev.num_examples, 16)

    def padding(grouping):
        batches = take(D.train_batches(sst2_dev, 16, seed=0, length_grouping=grouping), steps)
        return sum(b["attention_mask"].size - b["attention_mask"].sum() for b in batches)

    assert padding(20) < 0.7 * padding(0)
    order = D.epoch_order(sst2_dev.num_examples, 16, 0, 0, sst2_dev.lengths(), 20)
    assert len(np.unique(order)) == order.size == steps * 16


# --- determinism, processes, evaluation --------------------------------------------------------


@pytest.mark.parametrize("grouping", [0, 5])
def test_text_batch_k_is_the_same_from_any_start(sst2_dev, grouping):
    steps = D.steps_per_epoch(sst2_dev.num_examples, 32)  # 27: the window crosses an epoch
    full = take(D.train_batches(sst2_dev, 32, seed=7, length_grouping=grouping), steps + 5)
    for k in (1, steps - 1, steps, steps + 3):
        resumed = next(
            D.train_batches(sst2_dev, 32, seed=7, start_step=k, length_grouping=grouping)
        )
        assert_batches_equal(resumed, full[k])
    assert not np.array_equal(full[0]["labels"], full[steps]["labels"])  # epochs reshuffle


def test_process_slices_concatenate_to_the_global_batch(sst2_dev, fmnist_test):
    aug = D.Augmentation(crop_padding=4, horizontal_flip=True)
    images = replace(D.select(fmnist_test, max_examples=512), augmentation=aug)
    for data, grouping in ((sst2_dev, 5), (images, 0)):
        single = take(D.train_batches(data, 32, seed=1, start_step=3, length_grouping=grouping), 4)
        for count in (2, 4):

            def stream(p, c, data=data, grouping=grouping):
                return D.train_batches(data, 32, 1, 3, p, c, length_grouping=grouping)

            for joined, whole in zip(concat_processes(stream, count, 4), single, strict=True):
                assert_batches_equal(joined, whole)
        per_process = next(D.train_batches(data, 32, 1, 0, 1, 4, length_grouping=grouping))
        assert per_process["labels"].shape == (8,)


def test_eval_counts_every_example_exactly_once():
    n = 21
    data = D.ClassificationData(
        inputs={"x": np.arange(n, dtype=np.float32)[:, None]},
        labels=np.arange(n),
        label_names=[f"c{i}" for i in range(n)],
    )
    for count in (1, 2, 4):

        def stream(p, c):
            return D.eval_batches(data, 8, p, c)

        batches = concat_processes(stream, count, D.num_eval_batches(n, 8))
        assert len(batches) == 3 and all(b["labels"].shape == (8,) for b in batches)
        labels = np.concatenate([b["labels"] for b in batches])
        weights = np.concatenate([b["weights"] for b in batches])
        assert weights.sum() == n and weights.dtype == np.float32
        np.testing.assert_array_equal(np.sort(labels[weights == 1]), np.arange(n))
        np.testing.assert_array_equal(labels[:n], np.arange(n))  # in order
        np.testing.assert_array_equal(batches[-1]["x"][:, 0], labels[16:])


def test_text_eval_goes_shortest_first_and_pads_last_batch_with_weight_zero(sst2_dev):
    batches = list(D.eval_batches(sst2_dev, 100))
    assert len(batches) == 9 and batches[-1]["input_ids"].shape[0] == 100
    weights = np.concatenate([b["weights"] for b in batches])
    assert weights.sum() == 872 and weights[872:].sum() == 0
    shortest_first = np.argsort(sst2_dev.lengths(), kind="stable")
    np.testing.assert_array_equal(
        np.concatenate([b["labels"] for b in batches])[:872], sst2_dev.labels[shortest_first]
    )
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths) and widths[0] < widths[-1]
    in_file_order = sum(
        sst2_dev.collate(np.arange(i, min(i + 100, 872)), slice(None), seed=0, step=0, train=False)[
            "input_ids"
        ].size
        for i in range(0, 872, 100)
    )
    assert sum(b["input_ids"].size for b in batches[:-1]) < 0.8 * in_file_order


# --- images ----------------------------------------------------------------------------------


def test_idx_reading_and_class_subsets(third_party, fmnist_test, tmp_path):
    assert fmnist_test.inputs["images"].shape == (10_000, 28, 28, 1)
    np.testing.assert_array_equal(fmnist_test.class_counts(), np.full(10, 1000))
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(
        gzip.decompress((third_party / "fashion_mnist" / raw.name).with_suffix(".gz").read_bytes())
    )
    np.testing.assert_array_equal(D.read_idx(raw), fmnist_test.labels)
    train = D.load_image_classification(
        third_party / "fashion_mnist", classes=[5, 6, 7, 8, 9], examples_per_class=20, seed=0
    )
    assert train.label_names == ["5", "6", "7", "8", "9"]
    np.testing.assert_array_equal(train.class_counts(), np.full(5, 20))
    by_name = D.select(fmnist_test, classes=["Bag", "Trouser"])
    assert by_name.label_names == ["Bag", "Trouser"] and by_name.num_examples == 2000
    originals = fmnist_test.labels[np.isin(fmnist_test.labels, [8, 1])]
    np.testing.assert_array_equal(by_name.labels, np.where(originals == 8, 0, 1))
    np.savez(
        tmp_path / "few.npz",
        images=fmnist_test.inputs["images"][:5, ..., 0],
        labels=fmnist_test.labels[:5],
    )
    few = D.load_image_classification(tmp_path / "few.npz", image_shape=(28, 28))
    np.testing.assert_array_equal(few.inputs["images"], fmnist_test.inputs["images"][:5])


def test_image_preprocessing_shapes_and_normalisation(fmnist_test):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    prep = D.ImagePreprocessing(image_size=32, channels=3, mean=mean, std=std)
    data = replace(fmnist_test, preprocessing=prep)
    batch = next(D.eval_batches(data, 4))
    x = batch["pixel_values"]
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
    raw = fmnist_test.inputs["images"][:4, :, :, 0].astype(np.float32) / 255
    for c in range(3):
        np.testing.assert_allclose(x[:, 2:30, 2:30, c], (raw - mean[c]) / std[c], rtol=1e-6)
        np.testing.assert_allclose(x[:, :2, :, c], -mean[c] / std[c], rtol=1e-6)  # zero padding
    vit = D.ImagePreprocessing(image_size=56, resize="resize", mean=(0.5,), std=(0.5,))
    y = next(D.eval_batches(replace(data, preprocessing=vit), 4))["pixel_values"]
    assert y.shape == (4, 56, 56, 1) and y.min() >= -1 and y.max() <= 1


def test_bilinear_resize_matches_jax():
    import jax

    x = np.random.default_rng(0).random((2, 28, 28, 3)).astype(np.float32)
    for size in (32, 56):
        expected = jax.image.resize(x, (2, size, size, 3), "bilinear")
        np.testing.assert_allclose(resize_bilinear(x, size, size), expected, atol=1e-5)


def test_augmentation_is_deterministic_and_really_flips_and_crops(fmnist_test):
    small = D.select(fmnist_test, max_examples=64)

    def with_aug(aug):
        return replace(small, augmentation=aug)

    plain = next(D.eval_batches(small, 64))["pixel_values"]
    flipped = next(D.train_batches(with_aug(D.Augmentation(0, True)), 64, seed=0))
    assert_batches_equal(
        flipped, next(D.train_batches(with_aug(D.Augmentation(0, True)), 64, seed=0))
    )
    order = D.batch_indices(64, 64, 0, 0)
    original = plain[order]
    mirrored = original[:, :, ::-1]
    is_flip = np.all(flipped["pixel_values"] == mirrored, axis=(1, 2, 3))
    is_same = np.all(flipped["pixel_values"] == original, axis=(1, 2, 3))
    assert np.all(is_flip | is_same) and 10 < is_flip.sum() < 54

    data = with_aug(D.Augmentation(crop_padding=4))
    a, b = take(D.train_batches(data, 64, seed=0), 2)
    assert_batches_equal(a, next(D.train_batches(data, 64, seed=0)))
    shifts = []
    for img, src in zip(a["pixel_values"][..., 0], original[..., 0], strict=True):
        padded = np.pad(src, 4)  # the crop is a window of the zero-padded original
        found = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(padded[dy : dy + 28, dx : dx + 28], img)
        ]
        assert found
        shifts.append(found)
    assert sum((4, 4) not in s for s in shifts) > 32  # most images really moved
    assert not np.array_equal(
        a["pixel_values"], next(D.train_batches(data, 64, seed=1))["pixel_values"]
    )
    assert not np.array_equal(a["labels"], b["labels"])


# --- causal LM -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stories_tokenizer(third_party):
    from adapt.convert.llama2c import SentencePieceTokenizer

    return SentencePieceTokenizer(third_party / "stories260K" / "tok512.model")


def test_lm_packing_and_loss_mask_on_stories(third_party, stories_tokenizer):
    tok = stories_tokenizer
    path = third_party / "stories260K" / "tinystories_sample.txt"
    docs = D.split_documents(path.read_text(), "<|endoftext|>")
    assert len(docs) == 5 and docs[0].startswith(
        "Once upon a time there was a little boy named Ben"
    )
    stream = np.concatenate([[tok.bos_id, *tok.encode(d, bos=False), tok.eos_id] for d in docs])
    data = D.load_lm_text(path, tok, 64, document_separator="<|endoftext|>")
    a = data.arrays
    assert data.num_examples == -(-(len(stream) - 1) // 64) and data.seq_len == 64
    real = a["attention_mask"].astype(bool)
    np.testing.assert_array_equal(a["input_ids"][real], stream[:-1])
    np.testing.assert_array_equal(a["labels"][real], stream[1:])  # shifted targets
    np.testing.assert_array_equal(
        a["labels"][:, :-1][real[:, 1:]], a["input_ids"][:, 1:][real[:, 1:]]
    )
    assert not real[-1, -1] and np.all(a["input_ids"][~real] == 0)  # the last row is padded
    np.testing.assert_array_equal(a["labels"][:-1, -1], a["input_ids"][1:, 0])  # rows continue
    targets = a["labels"][a["loss_mask"] == 1]
    assert a["loss_mask"].sum() == len(stream) - 1 - 4  # BOS of documents 2..5 is never a target
    assert np.count_nonzero(targets == tok.bos_id) == 0
    assert np.count_nonzero(targets == tok.eos_id) == 5
    assert np.all(a["loss_mask"][~real] == 0) and a["loss_mask"].dtype == np.float32
    assert tok.decode(a["input_ids"][0]).startswith(docs[0][:40])
    lines = D.load_lm_text(path, tok, 64, document_separator="line")
    assert lines.num_target_tokens > data.num_target_tokens - 25  # more, shorter documents
    batch = next(D.train_batches(data, 4, seed=0))
    assert set(batch) == {"input_ids", "labels", "loss_mask", "attention_mask"}
    assert batch["input_ids"].shape == (4, 64)


def test_lm_text_from_a_table_column(third_party, stories_tokenizer, cache_dir):
    """A labelled table's text column as LM documents: one per row, labels ignored."""
    tok = stories_tokenizer
    path = third_party / "sst2" / "dev.tsv"
    data = D.load_lm_text(path, tok, 32, text_column="sentence", cache_dir=cache_dir)
    sentences = [line.split("\t")[0].strip() for line in path.read_text().splitlines()[1:]]
    stream = np.concatenate(
        [[tok.bos_id, *tok.encode(d, bos=False), tok.eos_id] for d in sentences]
    )
    real = data.arrays["attention_mask"].astype(bool)
    np.testing.assert_array_equal(data.arrays["input_ids"][real], stream[:-1])
    assert data.arrays["loss_mask"].sum() == len(stream) - 1 - (len(sentences) - 1)
    with pytest.raises(D.DataError, match="missing"):
        D.load_lm_text(path, tok, 32, text_column="missing", cache_dir=cache_dir)


def test_prompt_response_masks_only_the_response(tmp_path, stories_tokenizer, cache_dir):
    tok = stories_tokenizer
    rows = [
        {"prompt": "Tell me about Ben.", "response": "Ben loved to explore."},
        {"prompt": "Who is Ollie?", "response": "An otter."},
        {"prompt": "word " * 40, "response": "Too late."},  # the prompt fills the row
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = D.load_prompt_response(tmp_path / "chat.jsonl", tok, 24, cache_dir=cache_dir)
    assert data.num_examples == 2  # the third lost its whole response to truncation
    for row, example in enumerate(rows[:2]):
        prompt = [tok.bos_id, *tok.encode(example["prompt"], bos=False)]
        response = [*tok.encode(example["response"], bos=False), tok.eos_id]
        mask = data.arrays["loss_mask"][row]
        targets = data.arrays["labels"][row][mask == 1]
        np.testing.assert_array_equal(targets, response)
        assert mask[: len(prompt) - 1].sum() == 0 and mask.sum() == len(response)
    packed = D.load_prompt_response(
        tmp_path / "chat.jsonl",
        tok,
        16,
        pack_examples=True,
        template="Q: {prompt} A:",
        cache_dir=cache_dir,
    )
    assert packed.num_target_tokens == sum(
        len(tok.encode(r["response"], bos=False)) + 1 for r in rows
    )


# --- errors ----------------------------------------------------------------------------------


def test_errors_say_what_is_wrong_and_change_nothing(tmp_path, third_party, cache_dir, fmnist_test):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\nhello,pos\nbye,neg\nmeh,meh\n")
    (folder / "empty.csv").write_text("text,label\n")
    np.savez(
        folder / "colour.npz", images=np.zeros((3, 32, 32, 3), np.uint8), labels=np.zeros(3, int)
    )
    before = tree_snapshot(folder)

    with pytest.raises(D.DataError, match=r"(?s)not found: .*trian\.csv.*contains: .*train\.csv"):
        D.read_text_classification(folder / "trian.csv", cache_dir=cache_dir)
    with pytest.raises(D.DataError, match=r"(?s)split 'dev'.*contains: .*train\.csv"):
        D.read_text_classification(folder, split="dev", cache_dir=cache_dir)
    with pytest.raises(D.DataError, match=r"text column 'sentence' not found.*\['text', 'label'\]"):
        D.read_text_classification(folder, text_column="sentence", cache_dir=cache_dir)
    with pytest.raises(D.DataError, match=r"label column 'category'.*\['text', 'label'\]"):
        D.read_text_classification(folder, label_column="category", cache_dir=cache_dir)
    with pytest.raises(
        D.DataError, match=r"label 'meh' in row 2 of .*known labels: \['neg', 'pos'\]"
    ):
        D.read_text_classification(folder, label_names=["neg", "pos"], cache_dir=cache_dir)
    with pytest.raises(D.DataError, match=r"integer label 2 in row .*2 known labels"):
        D.map_labels([0, 1, 2], ["a", "b"])
    with pytest.raises(D.DataError, match="has no examples"):
        D.read_text_classification(folder / "empty.csv", cache_dir=cache_dir)
    with pytest.raises(D.DataError, match=r"no examples after filtering with \{'classes'"):
        D.select(D.ClassificationData({}, np.zeros(3, int), ["a", "b"]), classes=["b"])
    with pytest.raises(
        D.DataError, match=r"shape \(32, 32, 3\) \(H, W, C\), expected \(28, 28, 1\)"
    ):
        D.load_image_classification(folder / "colour.npz", image_shape=(28, 28, 1))
    with pytest.raises(D.DataError, match=r"class 'Sandal' \(id 0\) has only 1000 examples"):
        D.select(fmnist_test, classes=["Sandal"], examples_per_class=1001)
    with pytest.raises(
        D.DataError, match=r"class '0' \(id 0\) has only 3 examples; class '1' has no"
    ):
        D.load_image_classification(
            folder / "colour.npz", label_names=["0", "1"], examples_per_class=4
        )
    with pytest.raises(
        D.DataError,
        match=r"batch_size \(30\) must be a positive multiple of the process count \(4\)",
    ):
        next(D.train_batches(fmnist_test, 30, seed=0, process_index=0, process_count=4))
    with pytest.raises(D.DataError, match=r"batch_size \(30\).*process count \(4\)"):
        next(D.eval_batches(fmnist_test, 30, 0, 4))
    with pytest.raises(D.DataError, match="fewer than one batch"):
        next(D.train_batches(D.select(fmnist_test, max_examples=10), 16, seed=0))
    raw = D.read_text_classification(folder, label_names=["neg", "pos", "meh"], cache_dir=cache_dir)
    with pytest.raises(D.DataError, match="ragged"):
        next(D.eval_batches(raw, 2))  # text must be tokenised before batching
    with pytest.raises(D.DataError, match="not found: .*missing"):
        D.load_image_classification(folder / "missing")
    with pytest.raises(D.DataError, match="holds no documents"):
        (tmp_path / "blank.txt").write_text("\n\n  \n")
        D.load_lm_text(tmp_path / "blank.txt", third_party / "stories260K" / "tok512.model", 8)
    assert tree_snapshot(folder) == before


@pytest.mark.skipif(os.environ.get("HF_DATASETS_OFFLINE") != "1", reason="needs offline mode")
def test_hub_sources_fail_clearly_offline(cache_dir):
    with pytest.raises(D.DataError, match=r"(?s)could not load hub data set 'nyu-mll/glue'.*local"):
        D.read_text_classification("hub:nyu-mll/glue", dataset_config="sst2", cache_dir=cache_dir)
