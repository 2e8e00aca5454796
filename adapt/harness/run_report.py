"""What a run tells the researcher about its data and its predictions.

At the start (process 0, on stderr) a summary of the data: examples per split, classes and
their counts, the label mapping and, for text, the share of examples cut at ``max_length``, with
a warning above :data:`TRUNCATION_WARNING` (accuracy on truncated examples measures the model on
less than the text). The summary goes into ``results.json`` (``"data"``), the label mapping into
``<workdir>/labels.json`` and, at the end, every eval example's prediction into
``<workdir>/predictions.jsonl`` (one line per example in eval-set order: its index, label,
prediction, the prediction's probability and the text where there is one), so errors can be read
and the reported accuracy recomputed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from adapt.data import ClassificationData
from adapt.data.streaming import TRUNCATION_SAMPLE

TRUNCATION_WARNING = 0.02  # share of truncated examples in a split above which the run warns
LABELS_FILE = "labels.json"
PREDICTIONS_FILE = "predictions.jsonl"
_SHOWN_LABELS = 10  # label names printed in the summary line (labels.json has them all)


def _splits(data: Any) -> dict[str, Any]:
    return {name: getattr(data, name) for name in ("train", "val", "eval")
            if getattr(data, name, None) is not None}  # fmt: skip


def summarize(data: Any) -> dict:
    """``{"examples": {split: n}, "classes", "label_names", "class_counts", "truncated"}``
    (the last three for classification; ``truncated``: share per split, for text)."""
    splits = _splits(data)
    summary: dict[str, Any] = {"examples": {k: int(v.num_examples) for k, v in splits.items()}}
    streamed = [k for k, v in splits.items() if getattr(v, "streamed", False)]
    if streamed:
        summary["streamed"] = streamed
    if data.label_names is None:
        return summary
    summary["classes"] = len(data.label_names)
    summary["label_names"] = list(data.label_names)
    summary["class_counts"] = {
        k: v.class_counts().tolist() for k, v in splits.items() if isinstance(v, ClassificationData)
    }
    truncated = {
        k: float(np.mean(v.inputs["truncated"]))
        for k, v in splits.items()
        if isinstance(v, ClassificationData) and "truncated" in v.inputs and v.num_examples
    }
    for k in streamed:  # read batch by batch: the share is estimated on a sample
        if hasattr(splits[k], "truncated_share"):
            truncated[k] = splits[k].truncated_share()
    if truncated:
        summary["truncated"] = truncated
        summary["max_length"] = int(next(iter(splits.values())).max_length)
    return summary


def announce(summary: dict) -> None:
    """Print the summary as a few lines on stderr; warn about heavy truncation."""
    streamed = summary.get("streamed", [])
    examples = ", ".join(
        f"{k} {n:,}" + (" (streamed from disk)" if k in streamed else "")
        for k, n in summary["examples"].items()
    )
    lines = [f"data: {examples} examples"]
    if "classes" in summary:
        names = summary["label_names"]
        shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:_SHOWN_LABELS]))
        more = f", ... ({len(names) - _SHOWN_LABELS} more in {LABELS_FILE})" if len(
            names) > _SHOWN_LABELS else ""  # fmt: skip
        lines.append(f"data: {summary['classes']} classes: {shown}{more}")
        train = summary["class_counts"].get("train")
        if train:
            lines.append(f"data: training examples per class {min(train)}-{max(train)}")
    for split, share in summary.get("truncated", {}).items():
        lines.append(
            f"data: {100 * share:.1f}% of the {split} examples are cut at max_length="
            f"{summary['max_length']} tokens"
            + (f" (estimated on up to {TRUNCATION_SAMPLE:,} of them)" if split in streamed else "")
        )
    print("\n".join(lines), file=sys.stderr, flush=True)
    for split, share in summary.get("truncated", {}).items():
        if share > TRUNCATION_WARNING:
            logging.warning(
                "%.1f%% of the %s examples are longer than data.max_length=%d and are cut; "
                "raise data.max_length (the model allows up to its position embeddings) if the "
                "end of a text matters", 100 * share, split, summary["max_length"],
            )  # fmt: skip


def write_labels(workdir: Path, label_names: list[str] | None) -> None:
    """``labels.json``: ``{"0": name, ...}``, the ids the model's outputs and predictions use."""
    if label_names is not None:
        mapping = {str(i): name for i, name in enumerate(label_names)}
        (workdir / LABELS_FILE).write_text(json.dumps(mapping, indent=1) + "\n")


def write_predictions(
    workdir: Path, data: ClassificationData, predicted: np.ndarray, probability: np.ndarray
) -> Path:
    """``predictions.jsonl``: one line per eval example, in eval-set order (regression targets:
    the value predicted and its error)."""
    names = data.label_names
    texts = data.inputs.get("text")
    pairs = data.inputs.get("text_pair")
    path = workdir / PREDICTIONS_FILE
    with open(path, "w") as f:
        for i, (label, pred, p) in enumerate(zip(data.labels, predicted, probability, strict=True)):
            if data.regression:
                row = {"index": i, "target": round(float(label), 6), "prediction": round(float(pred), 6),
                       "error": round(float(pred) - float(label), 6)}  # fmt: skip
            else:
                row = {"index": i, "label": names[int(label)], "prediction": names[int(pred)],
                       "correct": bool(label == pred), "probability": round(float(p), 6)}  # fmt: skip
            if texts is not None:
                row["text"] = texts[i]
            if pairs is not None:
                row["text_pair"] = pairs[i]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


__all__ = [
    "LABELS_FILE",
    "PREDICTIONS_FILE",
    "TRUNCATION_WARNING",
    "announce",
    "summarize",
    "write_labels",
    "write_predictions",
]
