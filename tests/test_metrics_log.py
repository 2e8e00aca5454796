"""Run logging (metrics.jsonl, TensorBoard, progress bar, results.json, plots) and the regression
and language-model metrics, against hand-computed numbers."""

import json
import math
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt import metrics as metrics_lib
from adapt.metrics import (
    MetricsWriter,
    ProgressBar,
    plot_learning_curves,
    read_metrics,
    write_results,
)
from adapt.tasks.causal_lm import causal_lm_loss, lm_metrics
from adapt.tasks.regression import mean_squared_error, regression_metrics


def _tb_events(logdir: Path) -> list:
    """Every Event in the TFRecord files of a TensorBoard log dir (no TensorFlow needed)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            pos += 12  # length + its crc
            event = event_pb2.Event()
            event.ParseFromString(data[pos : pos + length])
            events.append(event)
            pos += length + 4  # payload + its crc
    return events


def _scalars(logdir: Path) -> list[tuple[int, str, float]]:
    return [(e.step, v.tag, v.simple_value) for e in _tb_events(logdir) for v in e.summary.value]


# ------------------------------------------------------------------------------ metrics.jsonl
def test_jsonl_tensorboard_and_resume_truncation(tmp_path):
    with MetricsWriter(tmp_path) as w:
        for step in range(1, 7):
            w.write(step, "train", {"loss": jnp.float32(1.0 / step), "lr": np.float64(0.1)})
        w.write(3, "eval", {"accuracy": 0.5, "macro_f1": 0.25})
        w.write(6, "eval", {"accuracy": 0.75, "macro_f1": 0.5})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 8
    assert records[0] == {"step": 1, "split": "train", "loss": 1.0, "lr": 0.1}
    assert records[-1] == {"step": 6, "split": "eval", "accuracy": 0.75, "macro_f1": 0.5}
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["eval", "train"]
    train = _scalars(tmp_path / "tb" / "train")
    assert (4, "loss", pytest.approx(0.25)) in train and len(train) == 12
    assert _scalars(tmp_path / "tb" / "eval") == [
        (3, "accuracy", 0.5),
        (3, "macro_f1", 0.25),
        (6, "accuracy", 0.75),
        (6, "macro_f1", 0.5),
    ]

    # killed mid-write after step 6, restored from the checkpoint at step 4
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "split": "tra')
    with MetricsWriter(tmp_path, resume_step=4) as w:
        assert [r["step"] for r in read_metrics(w.path)] == [1, 2, 3, 4, 3]
        w.write(5, "train", {"loss": 9.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[-1]) == {"step": 5, "split": "train", "loss": 9.0}
    # TensorBoard is told to hide the stale events at steps >= 5 of the first run
    starts = [e.step for e in _tb_events(tmp_path / "tb" / "train") if e.HasField("session_log")]
    assert starts == [0, 5]  # (the fresh run at 0, the resumed one at 5), one event file each
    assert len(list((tmp_path / "tb" / "train").iterdir())) == 2
    scalars = _scalars(tmp_path / "tb" / "train")
    assert (4, "loss", 0.25) in scalars and (5, "loss", 9.0) in scalars

    # a fresh run (no checkpoint to resume) starts the log over
    MetricsWriter(tmp_path, tensorboard=False).close()
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_writers_are_silent_off_process_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with MetricsWriter(tmp_path / "run") as w:
        w.write(1, "train", {"loss": 1.0})
    write_results(tmp_path / "run", {"accuracy": 1.0})
    assert not (tmp_path / "run").exists()
    assert not ProgressBar(10, enabled=None).enabled


def test_reserved_names_are_rejected(tmp_path):
    with (
        MetricsWriter(tmp_path, tensorboard=False) as w,
        pytest.raises(ValueError, match="reserved"),
    ):
        w.write(1, "train", {"step": 3})


# ------------------------------------------------------------------------------ progress bar
class _CountingLoss:
    """A stand-in for a device scalar that counts host fetches."""

    def __init__(self):
        self.fetches = 0

    def __array__(self, dtype=None, copy=None):
        self.fetches += 1
        return np.asarray(0.5, dtype)


def test_progress_bar_is_cheap_and_shows_loss_and_throughput(capsys):
    assert not ProgressBar(100).enabled  # pytest's stderr is not a TTY
    loss = _CountingLoss()
    bar = ProgressBar(1000, initial=10, enabled=True, mininterval=3600)
    for step in range(11, 500):
        bar.update(step, loss=loss, examples=32)
    assert loss.fetches == 0  # never synced with the device between refreshes
    bar.mininterval = 0.0
    bar.update(500, loss=loss, examples=32)
    assert loss.fetches == 1
    bar.close()
    err = capsys.readouterr().err
    assert "500/1000" in err and "loss=0.5000" in err and "ex/s=" in err


def test_without_a_terminal_progress_is_a_plain_line_every_twentieth_of_the_run(capsys):
    bar = ProgressBar(200, initial=0)  # pytest's stderr is not a TTY: plain lines
    assert not bar.enabled
    for step in range(1, 201):
        bar.update(step, loss=np.float32(0.25), examples=8)
    bar.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train")]
    steps = [int(line.split()[2].split("/")[0]) for line in lines]
    assert steps == list(range(10, 201, 10))  # at least every 5% of the steps, the last included
    assert "200/200 (100%) loss 0.2500" in lines[-1] and "examples/s" in lines[-1]
    assert "left 0m00s" in lines[-1]
    ProgressBar(200, enabled=False).update(10, loss=0.1)
    assert capsys.readouterr().err == ""  # progress=False: silent


def test_smoothing_ends_on_the_logged_values():
    rising = np.linspace(0.0, 1.0, 200) ** 0.5  # a curve that is still climbing at the end
    smoothed = metrics_lib.smooth(rising, 9)
    assert smoothed[0] == rising[0] and smoothed[-1] == rising[-1]
    assert np.allclose(smoothed[50:150], np.convolve(rising, np.ones(9) / 9, "same")[50:150])
    noisy = np.random.default_rng(0).normal(size=500)
    assert metrics_lib.smooth(noisy, 25)[100:400].std() < 0.35 * noisy.std()


def test_every_panel_spans_the_whole_run(tmp_path, monkeypatch):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in range(10, 1001, 10):
            w.write(step, "train", {"loss": 1.0 / step})
        w.write(1000, "eval", {"accuracy": 0.9})  # evaluated once, at the end
    limits = {}
    from matplotlib.axes import Axes

    original = Axes.set_title

    def record(ax, title, *a, **k):
        limits[title] = ax.get_xlim()
        return original(ax, title, *a, **k)

    monkeypatch.setattr(Axes, "set_title", record)
    plot_learning_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    for title in ("loss", "accuracy"):
        low, high = limits[title]
        assert low <= 0 and 1000 <= high < 1050, (title, limits[title])


# ------------------------------------------------------------------------------ results / plot
def test_write_results_atomic(tmp_path):
    path = write_results(tmp_path, {"eval": {"accuracy": np.float32(0.875)}, "steps": np.int64(10)})
    assert json.loads(path.read_text()) == {"eval": {"accuracy": 0.875}, "steps": 10}
    write_results(tmp_path, {"eval": {"accuracy": 0.9}})
    assert json.loads(path.read_text()) == {"eval": {"accuracy": 0.9}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no tmp files left


def test_plot_learning_curves(tmp_path):
    rng = np.random.default_rng(0)
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in range(1, 101):
            w.write(step, "train", {"loss": 2.0 * math.exp(-step / 30) + 0.1 * rng.random()})
            if step % 20 == 0:
                w.write(
                    step,
                    "eval",
                    {
                        "loss": 1.5 * math.exp(-step / 40),
                        "accuracy": step / 120,
                        "macro_f1": step / 150,
                        "perplexity": math.exp(3 - step / 25),
                    },
                )
    out = plot_learning_curves(tmp_path / "metrics.jsonl", tmp_path / "plots" / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000
    import matplotlib.image

    pixels = matplotlib.image.imread(out)
    assert pixels.shape[1] > 1000 and pixels[..., :3].std() > 0.05  # four panels, not blank
    series = metrics_lib._series(read_metrics(tmp_path / "metrics.jsonl"))
    assert sorted(series) == ["accuracy", "loss", "macro_f1", "perplexity"]
    assert sorted(series["loss"]) == ["eval", "train"] and len(series["loss"]["train"][0]) == 100
    with pytest.raises(ValueError, match="no numeric metrics"):
        (tmp_path / "empty.jsonl").write_text("")
        plot_learning_curves(tmp_path / "empty.jsonl", tmp_path / "x.png")


# ------------------------------------------------------------------------------ regression
def test_regression_metrics_hand_computed():
    pred = np.array([1.0, 2.0, 3.0, 4.0])
    target = np.array([1.5, 2.0, 2.0, 5.0])
    m = regression_metrics(pred, target)
    # residuals -0.5, 0, 1, -1; target mean 2.625; SS_tot 7.6875; SS_res 2.25
    assert m["mae"] == pytest.approx(0.625)
    assert m["mse"] == pytest.approx(0.5625)
    assert m["rmse"] == pytest.approx(0.75)
    assert m["r2"] == pytest.approx(1 - 2.25 / 7.6875)
    # Pearson: centered pred (-1.5,-.5,.5,1.5), target (-1.125,-.625,-.625,2.375): 5.25/sqrt(5*7.6875)
    assert m["pearson"] == pytest.approx(5.25 / math.sqrt(5 * 7.6875))
    # Spearman with a tie: ranks (1,2,3,4) vs (1,2.5,2.5,4): 4.5 / sqrt(5 * 4.5)
    assert m["spearman"] == pytest.approx(4.5 / math.sqrt(22.5))
    assert regression_metrics(target, target)["r2"] == 1.0
    assert math.isnan(regression_metrics(pred, np.full(4, 2.0))["r2"])
    with pytest.raises(ValueError):
        regression_metrics(pred, target[:3])


def test_mean_squared_error_weights_and_head_shape():
    pred = jnp.array([[1.0], [2.0], [10.0]])  # a one-output head
    target = jnp.array([2.0, 4.0, 0.0])
    assert float(mean_squared_error(pred, target)) == pytest.approx((1 + 4 + 100) / 3)
    assert float(mean_squared_error(pred, target, jnp.array([1, 1, 0]))) == pytest.approx(2.5)


# ------------------------------------------------------------------------------ causal LM
def _logits_from_probs(rows):
    return jnp.log(jnp.asarray(rows, jnp.float32))


def test_causal_lm_loss_mask_token_weighting_and_perplexity():
    # shifted batch (adapt.data.lm): logits at position j are scored against labels[:, j]
    logits = _logits_from_probs([[[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]])
    labels = jnp.array([[1, 2]])  # p(1) = 0.25 at position 0, p(2) = 0.6 at position 1
    loss, aux = causal_lm_loss(logits, labels)
    assert float(loss) == pytest.approx((math.log(4) - math.log(0.6)) / 2, rel=1e-6)
    assert float(aux["tokens"]) == 2 and float(aux["correct"]) == 1  # argmax 2 == label 2 only
    loss, aux = causal_lm_loss(logits, labels, loss_mask=jnp.array([[1.0, 0.0]]))
    assert float(loss) == pytest.approx(math.log(4), rel=1e-6) and float(aux["tokens"]) == 1
    assert float(aux["nll_sum"]) == pytest.approx(math.log(4), rel=1e-6)

    # token-weighted, not a mean of sequence means: 1 target with NLL log 4, 2 with NLL log 2
    logits2 = _logits_from_probs([[[0.5, 0.25, 0.25]] * 2, [[0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]])
    labels2 = jnp.array([[1, 0], [1, 2]])
    mask2 = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    loss, aux = causal_lm_loss(logits2, labels2, mask2)
    assert float(loss) == pytest.approx((math.log(4) + 2 * math.log(2)) / 3, rel=1e-6)

    # prompt tuning prepends virtual tokens: their logits are ignored
    extra = jnp.concatenate([jnp.full((2, 4, 3), 7.0), logits2], axis=1)
    loss_p, _ = causal_lm_loss(extra, labels2, mask2)
    assert float(loss_p) == pytest.approx(float(loss), rel=1e-7)
    with pytest.raises(ValueError, match="positions"):
        causal_lm_loss(logits2[:, :1], labels2)

    # perplexity of an eval set from sums over batches, not a mean of per-batch perplexities
    total = lm_metrics(math.log(4) + 3 * math.log(2), 4, correct=3)
    assert total["loss"] == pytest.approx(5 * math.log(2) / 4)
    assert total["perplexity"] == pytest.approx(2 ** (5 / 4))
    assert total["token_accuracy"] == 0.75
    with pytest.raises(ValueError, match="loss mask"):
        lm_metrics(0.0, 0)
