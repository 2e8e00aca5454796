"""The input pipeline: in-memory data sets and batches that are a pure function of (seed, step).

- :mod:`.dataset`: ``ClassificationData``, ``DataError``, label maps, few-label selection;
- :mod:`.tables`: reading csv/tsv/json/parquet through HF ``datasets``;
- :mod:`.text`: text classification, tokenisation, bucketed dynamic padding;
- :mod:`.images`: IDX/npz/TFDS images, preprocessing and augmentation per batch;
- :mod:`.lm`: causal-LM packing and prompt/response loss masks; :mod:`.tokenizers`: SentencePiece;
- :mod:`.streaming`: training sets read per batch from ArrayRecord files (Grain) or prepared
  TFDS data, for data larger than memory (not imported here: it is optional);
- :mod:`.batching`: ``train_batches`` (forever, resumable at any step, per-process rows of the
  global batch) and ``eval_batches`` (every example once, ``weights`` on the filler).

    data = load_text_classification("third_party/sst2", tokenizer_json, split="train",
                                     text_column="sentence", label_names=["negative", "positive"])
    for batch in train_batches(data, batch_size=32, seed=0, start_step=restored_step): ...
"""

from adapt.data.batching import (
    Batchable,
    batch_indices,
    epoch_order,
    eval_batches,
    eval_order,
    local_rows,
    num_eval_batches,
    steps_per_epoch,
    train_batches,
)
from adapt.data.dataset import ClassificationData, DataError, map_labels, select, select_per_class
from adapt.data.images import (
    FASHION_MNIST_CLASSES,
    Augmentation,
    ImageClassificationData,
    ImagePreprocessing,
    load_image_classification,
    read_idx,
)
from adapt.data.lm import LMData, load_lm_text, load_prompt_response, pack, split_documents
from adapt.data.text import (
    TextClassificationData,
    load_text_classification,
    read_label_names,
    read_text_classification,
    tokenize,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "Augmentation",
    "Batchable",
    "ClassificationData",
    "DataError",
    "ImageClassificationData",
    "ImagePreprocessing",
    "LMData",
    "TextClassificationData",
    "batch_indices",
    "epoch_order",
    "eval_batches",
    "eval_order",
    "load_image_classification",
    "load_lm_text",
    "load_prompt_response",
    "load_text_classification",
    "local_rows",
    "map_labels",
    "num_eval_batches",
    "pack",
    "read_idx",
    "read_label_names",
    "read_text_classification",
    "select",
    "select_per_class",
    "split_documents",
    "steps_per_epoch",
    "tokenize",
    "train_batches",
]
