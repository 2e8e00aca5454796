"""Streamed training data (adapt.data.streaming): ArrayRecord through Grain, read batch by batch.

The same batches as the in-memory path, each process reading only its rows, a run killed with
SIGKILL resuming with the uninterrupted run's losses, and peak memory flat in the data size."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grain")

from adapt import weights  # noqa: E402
from adapt.data import DataError, load_text_classification, train_batches  # noqa: E402
from adapt.data.batching import batch_indices  # noqa: E402
from adapt.data.streaming import (  # noqa: E402
    Records,
    open_records,
    open_text_classification,
    write_array_record,
)

REPO = Path(__file__).resolve().parents[1]
GOOD = ["great movie", "loved it", "wonderful acting", "a delight", "superb and moving"]
BAD = ["terrible film", "hated it", "boring plot", "a mess", "awful and dull"]


def _rows(n: int, offset: int = 0, filler: str = "") -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        rows.append({"review": f"{GOOD[i % 5]} number {i}{filler}", "stars": "good"})
        rows.append({"review": f"{BAD[i % 5]} number {i}{filler}", "stars": "bad"})
    return rows


@pytest.fixture(scope="module")
def tokenizer() -> Path:
    return weights.resolve("all-MiniLM-L6-v2") / "tokenizer.json"


def _streamed(path, tokenizer, **kw):
    return open_text_classification(
        str(path), tokenizer, text_column="review", label_column="stars",
        label_names=["bad", "good"], max_length=24, **kw,
    )  # fmt: skip


def test_streamed_batches_equal_the_in_memory_batches(tmp_path, tokenizer):
    rows = _rows(20)
    write_array_record(tmp_path / "train.array_record", rows)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    streamed = _streamed(tmp_path / "train.array_record", tokenizer)
    in_memory = load_text_classification(
        str(tmp_path / "train.jsonl"), tokenizer, split="train", text_column="review",
        label_column="stars", label_names=["bad", "good"], max_length=24, bucket_boundaries=None,
    )  # fmt: skip
    assert streamed.num_examples == in_memory.num_examples == 40
    a, b = train_batches(streamed, 8, seed=3), train_batches(in_memory, 8, seed=3)
    for _ in range(12):  # 5 steps an epoch: across two epoch boundaries
        x, y = next(a), next(b)
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    # a stream started at step 7 yields what the first stream yielded from its 7th batch on
    again, ref = (
        train_batches(streamed, 8, seed=3, start_step=7),
        train_batches(in_memory, 8, seed=3),
    )
    for _ in range(7):
        next(ref)
    np.testing.assert_array_equal(next(again)["input_ids"], next(ref)["input_ids"])


class _Recording:
    """A data source that remembers which records were read."""

    def __init__(self, source):
        self.source, self.read = source, []

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.source[i]


def test_each_process_reads_only_its_half_of_every_batch(tmp_path, tokenizer):
    write_array_record(tmp_path / "train.array_record", _rows(20))
    whole = _streamed(tmp_path / "train.array_record", tokenizer)
    reads, batches = [], []
    for process in (0, 1):
        records = whole.records
        recording = _Recording(records.source)
        mine = type(whole)(
            **{**whole.__dict__, "records": Records(recording, records.decode, records.where)}
        )
        stream = train_batches(mine, 8, seed=0, process_index=process, process_count=2)
        batches.append([next(stream) for _ in range(5)])
        reads.append(recording.read)
    global_rows = [batch_indices(40, 8, 0, step) for step in range(5)]
    for process in (0, 1):
        expected = np.concatenate([g[process * 4 : (process + 1) * 4] for g in global_rows])
        assert reads[process] == expected.tolist()  # its rows of each batch, nothing more
    assert not set(reads[0]) & set(reads[1])
    single = train_batches(whole, 8, seed=0)
    for step in range(5):  # the halves stack into the one-process batch
        ref = next(single)
        np.testing.assert_array_equal(
            np.concatenate([batches[0][step]["labels"], batches[1][step]["labels"]]), ref["labels"]
        )


def test_shards_globs_and_a_tfds_like_folder(tmp_path, tokenizer):
    write_array_record(tmp_path / "train-00000-of-00002.array_record", _rows(5))
    write_array_record(tmp_path / "train-00001-of-00002.array_record", _rows(5, offset=5))
    write_array_record(tmp_path / "test.array_record", _rows(2))
    assert len(open_records(str(tmp_path), "train")) == 20
    assert len(open_records(str(tmp_path / "train-*.array_record"), "ignored")) == 20
    assert len(open_records(str(tmp_path), "test")) == 4
    data = _streamed(tmp_path, tokenizer)
    assert data.read([0, 1, 10]).inputs["text"] == [
        "great movie number 0", "terrible film number 0", "great movie number 5"
    ]  # fmt: skip


def test_bad_streamed_input_is_named(tmp_path, tokenizer):
    write_array_record(tmp_path / "train.array_record", _rows(3))
    with pytest.raises(DataError, match="label names up front"):
        open_text_classification(str(tmp_path / "train.array_record"), tokenizer,
                                 text_column="review", label_column="stars")  # fmt: skip
    with pytest.raises(DataError, match=r"text column 'text' not found.*\['review', 'stars'\]"):
        open_text_classification(str(tmp_path / "train.array_record"), tokenizer,
                                 label_column="stars", label_names=["bad", "good"])  # fmt: skip
    with pytest.raises(DataError, match="label 'meh'|'meh'"):
        write_array_record(tmp_path / "odd.array_record", [{"review": "x", "stars": "meh"}])
        _streamed(tmp_path / "odd.array_record", tokenizer)
    write_array_record(tmp_path / "csv_lines.array_record", [])
    (tmp_path / "junk").mkdir()
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(tmp_path / "junk" / "train.array_record"), "group_size:1")
    writer.write(b"review,stars")
    writer.close()
    with pytest.raises(DataError, match="not a UTF-8 JSON object"):
        _streamed(tmp_path / "junk", tokenizer)
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(DataError, match="no ArrayRecord file for split 'train'"):
        open_records(str(tmp_path / "nothing_here"), "train")
    with pytest.raises(DataError, match="holds no records"):
        _streamed(tmp_path / "csv_lines.array_record", tokenizer)
    with pytest.raises(DataError, match="not hub: names"):
        open_records("hub:sst2", "train")
    with pytest.raises(DataError, match="no file matches"):
        open_records(str(tmp_path / "absent-*.array_record"), "train")


def test_streaming_refuses_what_needs_every_label():
    from adapt.config import ConfigError
    from adapt.harness.command_line import load_config_file

    path = str(REPO / "configs/text/classify.py")
    config = load_config_file(path, "train=t.array_record,streaming=True,labels=a|b")
    assert config.data.streaming and config.train.length_grouping == 0
    from adapt.config import RunConfig
    from adapt.harness.validation import check_run

    def validate(config):
        check_run(RunConfig.parse(config))

    with pytest.raises(ConfigError, match="examples_per_class needs every example's label"):
        validate(
            load_config_file(path, "train=t.array_record,streaming=True,labels=a|b,per_class=10")
        )
    with pytest.raises(ConfigError, match="label names up front"):
        validate(load_config_file(path, "train=t.array_record,streaming=True"))


# Runs a command as its child and prints the child's peak RSS (KiB): one number per run, not
# the maximum over every child the test process ever had.
_PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def _finetune(workdir, train, *flags, wait=True, eval_file=None, measure=False):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    arg = (f"train={train},eval={eval_file},text=review,label=stars,labels=bad|good,"
           "streaming=True,head_init=fresh,smoke")  # fmt: skip
    cmd = [sys.executable, "-m", "experiments.finetune", f"--workdir={workdir}",
           f"--config=configs/text/classify.py:{arg}", *flags]  # fmt: skip
    if measure:
        cmd = [sys.executable, "-c", _PEAK_RSS, *cmd]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _losses(workdir):
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.slow
def test_a_streamed_run_killed_with_sigkill_resumes_with_the_same_losses(tmp_path):
    from tests.test_harness import _steps, _wait_until

    write_array_record(tmp_path / "train.array_record", _rows(200))
    write_array_record(tmp_path / "test.array_record", _rows(8, offset=1000))
    flags = ["--config.train.epochs=0", "--config.train.steps=24", "--config.train.log_every=1",
             "--config.train.early_stopping=0", "--config.checkpoint.every=4",
             "--config.data.max_examples=100000"]  # fmt: skip
    train, held = tmp_path / "train.array_record", tmp_path / "test.array_record"
    out = _finetune(tmp_path / "ref", train, *flags, eval_file=held)
    assert "train 300 (streamed from disk), val 100, eval 16 examples" in out.stderr
    reference = _losses(tmp_path / "ref")
    assert len(reference) == 24
    workdir = tmp_path / "killed"
    proc = _finetune(workdir, train, *flags, wait=False, eval_file=held)
    _wait_until(lambda: (workdir / "checkpoints" / "4").is_dir(), proc, "the step-4 checkpoint")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert max(_steps(workdir)) < 24 and not (workdir / "results.json").exists()
    _finetune(workdir, train, *flags, eval_file=held)
    assert _losses(workdir) == reference  # bit for bit: the step is the data position


@pytest.mark.slow
def test_peak_memory_stays_flat_with_ten_times_the_data(tmp_path):
    """A run over 20,000 examples of ~1 KB, then one over 200,000 (about 200 MB of text, 28 MB
    compressed on disk): read whole, the larger set alone would add several hundred MB to the
    process."""
    filler = " and more words" * 60
    write_array_record(tmp_path / "small.array_record", _rows(10_000, filler=filler))
    write_array_record(tmp_path / "large.array_record", _rows(100_000, filler=filler))
    write_array_record(tmp_path / "test.array_record", _rows(8, offset=10**6))
    assert 200_000 * len(filler) > 150e6  # as Python strings; the files are compressed
    flags = ["--config.train.epochs=0", "--config.train.steps=6",
             "--config.data.max_examples=100000000", "--config.data.val_fraction=0.0005"]  # fmt: skip
    held = tmp_path / "test.array_record"
    peaks = {}
    for name in ("small", "large"):
        out = _finetune(tmp_path / name, tmp_path / f"{name}.array_record", *flags,
                        eval_file=held, measure=True)  # fmt: skip
        peaks[name] = int(out.stdout.split("peak_rss_kib")[-1].split()[0])
    assert "train 199,900 (streamed from disk)" in out.stderr
    assert peaks["large"] <= 1.2 * peaks["small"], peaks


def test_streamed_chat_rows_equal_the_in_memory_rows(tmp_path):
    from adapt.data.chat import load_chat
    from adapt.data.streaming import open_lm
    from adapt.data.tokenizers import load_lm_tokenizer
    from tests.test_chat import CONVERSATION, _folder, _jsonl

    tok = load_lm_tokenizer(_folder(tmp_path / "llama"))
    chats = [CONVERSATION[: 3 + 2 * (i % 2)] for i in range(6)]
    write_array_record(tmp_path / "train.array_record", [{"messages": c} for c in chats])
    streamed = open_lm(str(tmp_path / "train.array_record"), tok, 96, format="chat")
    in_memory = load_chat(_jsonl(tmp_path / "c.jsonl", chats), tok, 96)
    assert streamed.num_examples == in_memory.num_examples == 6
    rows = streamed.read(np.arange(6)).arrays
    for key, value in in_memory.arrays.items():
        np.testing.assert_array_equal(rows[key], value, err_msg=key)
    a, b = train_batches(streamed, 2, seed=1), train_batches(in_memory, 2, seed=1)
    for _ in range(4):
        x, y = next(a), next(b)
        for key in y:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    with pytest.raises(DataError, match=r"messages column 'messages' not found.*\['text'\]"):
        write_array_record(tmp_path / "bad.array_record", [{"text": "hello"}])
        open_lm(str(tmp_path / "bad.array_record"), tok, 96, format="chat")


@pytest.mark.slow
def test_streamed_chat_sft_runs_from_the_command_line(tmp_path, randomized_eval):
    """configs/llm/tune.py with streaming=True on ArrayRecord shards of conversations."""
    from tests.test_chat import CONVERSATION, tiny_chat_llama

    folder = tiny_chat_llama(tmp_path / "llama", randomized_eval)
    chats = [{"messages": CONVERSATION[: 3 + 2 * (i % 2)]} for i in range(40)]
    write_array_record(tmp_path / "data" / "train-00000-of-00002.array_record", chats[:20])
    write_array_record(tmp_path / "data" / "train-00001-of-00002.array_record", chats[20:])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    arg = f"model={folder},train={tmp_path / 'data'},seq_len=96,streaming=True,smoke"
    out = subprocess.run(
        [sys.executable, "-m", "experiments.finetune", f"--workdir={tmp_path / 'w'}",
         f"--config=configs/llm/tune.py:{arg}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = [line for line in out.stderr.splitlines() if line.startswith("data:")]
    assert summary[0] == "data: train 36 (streamed from disk), eval 4 examples", summary
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["steps"] == 4 and np.isfinite(results["eval"]["loss"])


@pytest.mark.slow
def test_two_processes_streaming_reproduce_the_single_process_losses(tmp_path):
    """Each process reads its half of every batch (the test above); together they train as one."""
    import socket

    write_array_record(tmp_path / "train.array_record", _rows(100))
    write_array_record(tmp_path / "test.array_record", _rows(8, offset=1000))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = ["--config.train.epochs=0", "--config.train.steps=6", "--config.train.log_every=1",
             "--config.data.max_examples=100000"]  # fmt: skip
    train, held = tmp_path / "train.array_record", tmp_path / "test.array_record"
    _finetune(tmp_path / "single", train, *flags, "--cpu_devices=8", eval_file=held)
    procs = [
        _finetune(
            tmp_path / "multi",
            train,
            *flags,
            "--cpu_devices=4",
            f"--coordinator=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            wait=False,
            eval_file=held,
        )  # fmt: skip
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    a, b = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
    assert len(a) == 6
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_table_converts_to_shards_that_stream_like_the_table(tmp_path, tokenizer, suffix):
    import pandas as pd

    from adapt.data.streaming import convert_table

    rows = _rows(25)
    frame = pd.DataFrame(rows)
    table = tmp_path / f"reviews{suffix}"
    frame.to_parquet(table) if suffix == ".parquet" else frame.to_csv(table, index=False)
    shards = convert_table(table, tmp_path / "shards", rows_per_shard=20)
    assert [p.name for p in shards] == ["train-00000.array_record", "train-00001.array_record",
                                        "train-00002.array_record"]  # fmt: skip
    streamed = _streamed(tmp_path / "shards", tokenizer)
    assert streamed.read(np.arange(50)).inputs["text"] == [r["review"] for r in rows]
    in_memory = load_text_classification(
        str(table), tokenizer, split="train", text_column="review", label_column="stars",
        label_names=["bad", "good"], max_length=24, bucket_boundaries=None,
    )  # fmt: skip
    a, b = train_batches(streamed, 10, seed=5), train_batches(in_memory, 10, seed=5)
    for _ in range(6):
        np.testing.assert_array_equal(next(a)["input_ids"], next(b)["input_ids"])
    with pytest.raises(DataError, match="convert_table reads"):
        convert_table(shards[0], tmp_path / "again")


@pytest.mark.slow
def test_a_workdir_refuses_a_resume_on_changed_training_data(tmp_path, monkeypatch):
    """The step is the data position only while the data stays the same: records added after a
    run was checkpointed make the resume (or the finished run's reuse) stop with the reason."""
    from adapt.checkpoint import WorkdirMismatchError
    from adapt.harness.command_line import load_config_file
    from adapt.harness.loop import run

    monkeypatch.chdir(REPO)
    write_array_record(tmp_path / "data" / "train-00000.array_record", _rows(30))
    write_array_record(tmp_path / "test.array_record", _rows(8, offset=100))
    arg = (f"train={tmp_path / 'data'},eval={tmp_path / 'test.array_record'},text=review,"
           "label=stars,labels=bad|good,streaming=True,head_init=fresh,smoke")  # fmt: skip

    def config():
        return load_config_file(str(REPO / "configs/text/classify.py"), arg)

    run(config(), tmp_path / "w")
    assert run(config(), tmp_path / "w")["already_finished"]  # the same data: reused
    write_array_record(tmp_path / "data" / "train-00001.array_record", _rows(5, offset=50))
    with pytest.raises(WorkdirMismatchError, match="training data differs"):
        run(config(), tmp_path / "w")  # the finished run's results
    (tmp_path / "w" / "results.json").unlink()  # as if killed after its last checkpoint
    with pytest.raises(WorkdirMismatchError, match=r"training data differs \(its size or labels"):
        run(config(), tmp_path / "w")
