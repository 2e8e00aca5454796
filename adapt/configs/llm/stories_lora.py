r"""Causal-LM LoRA on Karpathy's stories260K (llama2.c checkpoint, vendored) over TinyStories text.

  python -m experiments.finetune --config=configs/llm/stories_lora.py --workdir=workdirs/stories_lora

LoRA (rank 8) on the attention query/value projections; packed 128-token rows of the vendored
TinyStories sample (5 stories): 12 rows train, 3 rows (20%, ``data.eval_fraction``) are held out
for evaluation. An in-domain smoke of the LM path; configs/llm/stories_instruct.py and
stories_sst2_qlora.py are the studies. Reports per-token NLL and perplexity.
Arguments: method (lora | full), steps, seed, smoke.
"""

import ml_collections

from adapt.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, method="lora", steps=200, seed=0, smoke=False)
    c = ml_collections.ConfigDict()
    c.seed = arg.seed
    c.task = "causal_lm"
    c.model = dict(kind="llama2c", path="third_party/stories260K/stories260K.bin")
    c.method = dict(
        name=arg.method, options={"rank": 8, "alpha": 16} if arg.method == "lora" else {}
    )
    c.optim = dict(
        default=dict(
            lr=3e-3, weight_decay=0.0, schedule="warmup_cosine", warmup_steps=arg.steps // 10
        ),
        groups={"lora": {"lr": 3e-3}} if arg.method == "lora" else {"backbone": {"lr": 5e-4}},
    )
    c.train = dict(
        batch_size=8,
        steps=arg.steps,
        log_every=max(arg.steps // 20, 1),
        eval_every=0,
        eval_batch_size=8,
    )
    c.data = dict(
        kind="lm",
        source="third_party/stories260K/tinystories_sample.txt",
        tokenizer="third_party/stories260K/tok512.model",
        seq_len=128,
        document_separator="<|endoftext|>",
        eval_fraction=0.2,  # 3 of the 15 packed rows, held out (split_seed 0)
    )
    c.mesh = dict(axes=[("data", -1)], rules="dp")
    c.checkpoint = dict(every=max(arg.steps // 4, 1), keep=2)
    if arg.smoke:
        c.train.update(steps=4, batch_size=8, log_every=2, eval_batch_size=8)
        c.optim.default.warmup_steps = 1
        c.checkpoint.every = 2
    return c
