r"""Prompt/response LoRA on stories260K: continue a story by one sentence, loss on the response only.

  python -m experiments.finetune --config=configs/llm/stories_instruct.py \
      --workdir=workdirs/stories_instruct

Expected (CPU, about a minute): held-out response perplexity falls from 10.45 (the base model)
to 6.14 after 100 steps (tests/test_lm_finetune.py measures both). The whole gain is the
response format, i.e. EOS after one sentence: stories260K was pretrained on BOS-separated
stories without EOS, so the base model gives the 18 held-out EOS targets 25.5 nats each (a
third of its loss); after tuning, 9.0. The other response tokens get slightly worse (1.37 ->
1.51 nats): 50 examples from four stories teach this in-domain model no new content.

Data: ``third_party/stories260K/instruct_sample.jsonl`` (50 examples from four TinyStories
stories: prompt = up to two consecutive sentences, response = the next one) and
``instruct_heldout.jsonl`` (18 examples from a fifth story, never trained on), made as described
in ``third_party/stories260K/METADATA``. Each example is one row ``[BOS] prompt response [EOS]``
(unpacked, 160 tokens); the loss mask covers the response and EOS only. LoRA rank 8 on the
attention query/value projections; the eval perplexity counts response tokens only. Longer
runs overfit the four training stories (over 200 steps, held-out perplexity bottoms out near
step 80, then creeps back up).
Arguments: method (lora | full), steps, seed, smoke.
"""

import ml_collections

from adapt.config import parse_arg

DATA = "third_party/stories260K"


def get_config(arg=None):
    arg = parse_arg(arg, method="lora", steps=100, seed=0, smoke=False)
    c = ml_collections.ConfigDict()
    c.seed = arg.seed
    c.task = "causal_lm"
    c.model = dict(kind="llama2c", path=f"{DATA}/stories260K.bin")
    c.method = dict(
        name=arg.method, options={"rank": 8, "alpha": 16} if arg.method == "lora" else {}
    )
    c.optim = dict(
        default=dict(
            lr=1e-3, weight_decay=0.0, schedule="warmup_cosine", warmup_steps=arg.steps // 10
        ),
        groups={"lora": {"lr": 1e-3}} if arg.method == "lora" else {"backbone": {"lr": 2e-4}},
    )
    c.train = dict(
        batch_size=8,
        steps=arg.steps,
        log_every=max(arg.steps // 10, 1),
        eval_every=0,
        eval_batch_size=32,
    )
    c.data = dict(
        kind="lm",
        format="prompt_response",
        source=f"{DATA}/instruct_sample.jsonl",
        eval_source=f"{DATA}/instruct_heldout.jsonl",
        tokenizer=f"{DATA}/tok512.model",
        seq_len=160,
        template="{prompt}",
    )
    c.mesh = dict(axes=[("data", -1)], rules="dp")
    c.checkpoint = dict(every=arg.steps, keep=1)
    if arg.smoke:
        c.train.update(steps=4, log_every=2)
        c.optim.default.warmup_steps = 1
        c.checkpoint.every = 2
    return c
