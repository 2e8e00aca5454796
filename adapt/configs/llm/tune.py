r"""Causal-LM tuning of your own checkpoint on your own data: chat, prompt/response or plain text.

  python -m experiments.finetune --workdir=workdirs/my_sft \
      --config=configs/llm/tune.py:model=path/to/hf_checkpoint,train=chats.jsonl

  python -m experiments.finetune --workdir=workdirs/my_lm \
      --config=configs/llm/tune.py:model=path/to/hf_checkpoint,train=corpus.txt,format=text

Expected: whatever your model and data allow; the run reports the held-out per-token loss and
perplexity over the target tokens (chat: the assistant replies and their end-of-turn token).
tests/test_chat.py runs the smoke variant on a tiny LLaMA checkpoint.

Arguments:
- ``model``: a local Hugging Face folder (LLaMA or Qwen2 family) holding its ``tokenizer.json``
  and, for chat data, its chat template (``tokenizer_config.json``); ``tokenizer``: another
  tokenizer (a ``tokenizer.json``, its folder, or a SentencePiece ``.model``);
- ``train``: ``chat`` (default) reads rows with a ``messages`` list (JSONL/JSON/parquet);
  ``prompt_response`` rows with ``prompt`` and ``response``; ``text`` a text file of
  documents separated by blank lines, or a table's ``text`` column, one document per row
  (``format``); tables may be ``tfds:<name>`` (the ``train`` split of a TensorFlow Datasets set
  prepared under ``data_dir``) or ``hub:<name>``;
- ``eval``: a file of held-out rows; without it 10% of the packed or padded rows are held out;
- ``method``: ``lora`` (rank 16 on every linear layer, QLoRA's recipe without the NF4 base),
  ``qlora`` (the same over an NF4 base) or ``full``; ``steps`` (200), ``lr`` (2e-4 for
  adapters, 2e-5 for full), ``batch`` (8), ``seq_len`` (512), ``pack`` (chat and
  prompt/response rows packed into full rows, else one padded row each), ``seed``, ``smoke``;
- ``streaming``: read the training rows batch by batch instead of into memory (an SFT corpus
  larger than RAM): ``train`` is ``.array_record`` files of JSON records (a file, a folder of
  ``train.array_record`` / ``train-*.array_record`` shards, or a glob) or a prepared ``tfds:``
  name; each record is one row, never packed (adapt.data.streaming).
"""

import ml_collections

from adapt.config import ConfigError, parse_arg

FORMATS = ("chat", "prompt_response", "text")


def get_config(arg=None):
    arg = parse_arg(
        arg, model="", tokenizer="", train="", eval="", format="chat", method="lora", steps=200,
        lr=0.0, batch=8, seq_len=512, pack=False, seed=0, smoke=False, data_dir="", text="text",
        streaming=False,
    )  # fmt: skip
    if not arg.model or not arg.train:
        raise ConfigError("configs/llm/tune.py needs model=<checkpoint folder> and train=<file>")
    if arg.format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {arg.format!r}")
    if arg.method not in ("lora", "qlora", "full"):
        raise ConfigError(f"method must be lora, qlora or full, got {arg.method!r}")
    adapter = arg.method != "full"
    lr = arg.lr or (2e-4 if adapter else 2e-5)
    c = ml_collections.ConfigDict()
    c.seed = arg.seed
    c.task = "causal_lm"
    c.model = dict(kind="hf", path=arg.model)
    options = {"rank": 16, "alpha": 32, "targets": "all_linear"} if adapter else {}
    c.method = dict(name=arg.method, options=options)
    c.optim = dict(
        default=dict(lr=lr, weight_decay=0.0, schedule="warmup_cosine",
                     warmup_steps=max(arg.steps // 20, 1), clip_norm=1.0),
        groups={"lora": {"lr": lr}} if adapter else {"backbone": {"lr": lr}},
    )  # fmt: skip
    c.train = dict(batch_size=arg.batch, steps=arg.steps, log_every=max(arg.steps // 20, 1),
                   eval_every=0, eval_batch_size=arg.batch)  # fmt: skip
    data = dict(kind="lm", source=arg.train, format=arg.format, seq_len=arg.seq_len)
    if arg.tokenizer:
        data["tokenizer"] = arg.tokenizer
    if arg.eval:
        data["eval_source"] = arg.eval
    else:
        data["eval_fraction"] = 0.1
    if arg.data_dir:
        data["data_dir"] = arg.data_dir
    table = (
        arg.streaming
        or arg.train.startswith(("tfds:", "hub:"))
        or arg.train.endswith((".csv", ".tsv", ".json", ".jsonl", ".parquet", ".array_record"))
    )
    if arg.streaming:  # the training rows read batch by batch (adapt.data.streaming)
        data["streaming"] = True
    if arg.format == "text" and table:  # one document per row of the text column
        data["text_column"] = arg.text
    elif arg.format == "text":
        data["document_separator"] = "blank_line"
    else:
        data["pack_examples"] = arg.pack
    c.data = data
    c.mesh = dict(axes=[("data", -1)], rules="dp")
    c.checkpoint = dict(every=max(arg.steps // 4, 1), keep=2)
    if arg.smoke:  # seconds, for tests
        c.train.update(steps=4, log_every=2)
        c.optim.default.warmup_steps = 1
        c.checkpoint.every = 2
    return c
