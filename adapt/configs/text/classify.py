r"""Text classification (or regression) on your own data, with any BERT-family checkpoint and
any method.

  python -m experiments.finetune --workdir=workdirs/reviews \
      --config=configs/text/classify.py:train=reviews.csv,text=review,label=stars

  python -m experiments.finetune --workdir=workdirs/similarity \
      --config=configs/text/classify.py:task=regression,train=pairs.csv,text=s1,text_pair=s2,label=score

  python -m experiments.finetune --workdir=workdirs/tickets_lora \
      --config=configs/text/classify.py:model=path/to/hf_checkpoint,train=data/,eval_split=test,method=lora

Expected: whatever your data allow; the run prints a data summary first (examples per split,
classes, label mapping, the share cut at ``max_length``), and the workdir holds results.json,
labels.json and predictions.jsonl (every eval example with its prediction). On the vendored
Banking77 (``train=third_party/banking77,eval_split=test,text=text,label=category``) this is
configs/text/minilm.py's recipe, whose results are quoted there.

Arguments:
- ``train``: a ``.csv``/``.tsv``/``.json``/``.jsonl``/``.parquet`` file, a folder holding
  ``<split>.<ext>`` files (``train_split``, ``eval_split``), ``hub:<name>`` (online only) or
  ``tfds:<name>``, a TensorFlow Datasets data set prepared under ``data_dir`` (default TFDS's;
  read without TensorFlow, never downloaded; its class names are kept);
- ``eval``: a file of held-out examples; without it, a folder or hub source gives its
  ``eval_split``, and a single file holds out ``eval_fraction`` (0.2) of itself, stratified;
- ``text`` / ``text_pair`` / ``label``: column names (``text``, none, ``label``); labels may be
  strings or integers; ``labels`` (``"neg|pos"``) fixes their names and order;
- ``model``: a local Hugging Face folder, a packaged name or a hub name (all-MiniLM-L6-v2);
  the classifier is the checkpoint family's sequence classifier, pooling as the checkpoint
  was trained (sentence-transformers folders: their pooling);
- the recipe's arguments (configs/recipe.py, described in configs/text/minilm.py):
  ``method`` (lora), ``per_class`` (0: all the training examples), ``epochs`` (0: the
  recipe's), ``lr_scale``, ``head_init``, ``wise``, ``export``, ``seed``, ``smoke``;
- ``max_length`` (128 tokens), ``batch`` (32);
- ``streaming``: read the training examples batch by batch instead of into memory, for data
  larger than RAM: ``train`` is ``.array_record`` files of JSON records (a file, a folder of
  ``<split>.array_record`` / ``<split>-*.array_record`` shards, or a glob) or a prepared
  ``tfds:`` name, ``labels=`` is required (outside TFDS), batches pad to ``max_length``, held-out
  fractions are drawn at random (adapt.data.streaming);
- ``task``: ``classification`` (default) or ``regression`` (a numeric ``label`` column, a
  one-output head trained with the mean squared error, MAE/RMSE/R2/Pearson/Spearman reported,
  the checkpoint selected by validation Pearson; the head starts fresh, and a single file's
  held-out fraction is drawn at random instead of by class).

A validation split is carved from the training examples (10%, or 20% of a few-label budget)
for best-checkpoint selection and early stopping, evaluated every half epoch; the eval set is
never used for a choice.
"""

from adapt.config import ConfigError, parse_arg
from adapt.configs.recipe import check, classifier


def get_config(arg=None):
    arg = parse_arg(
        arg, train="", eval="", train_split="train", eval_split="test", eval_fraction=0.2,
        text="text", text_pair="", label="label", labels="", model="all-MiniLM-L6-v2",
        method="lora", per_class=0, epochs=0.0, lr_scale=1.0, head_init="probe",
        max_length=128, batch=32, wise=False, export=False, seed=0, smoke=False,
        task="classification", data_dir="", streaming=False,
    )  # fmt: skip
    if not arg.train:
        raise ConfigError(
            "configs/text/classify.py needs train=<file, folder, hub:name or tfds:name> (and text=, "
            "label= naming its columns); see the file's docstring"
        )
    check(arg)
    single_file = (
        not arg.train.startswith(("hub:", "tfds:")) and "." in arg.train.rsplit("/", 1)[-1]
    )
    data = dict(
        kind="text",
        source=arg.train,
        train_split=arg.train_split,
        eval_split=arg.eval_split,
        text_column=arg.text,
        label_column=arg.label,
        max_length=arg.max_length,
        bucket_boundaries=tuple(b for b in (16, 32, 64, 128, 256, 512) if b < arg.max_length),
    )
    if arg.eval:
        data["eval_source"] = arg.eval
    elif single_file:
        data["eval_fraction"] = arg.eval_fraction
    if arg.text_pair:
        data["text_pair_column"] = arg.text_pair
    if arg.data_dir:
        data["data_dir"] = arg.data_dir
    if arg.streaming:
        data["streaming"] = True
    if arg.labels:
        data["label_names"] = arg.labels.split("|")
    if arg.task == "regression" and (arg.labels or arg.per_class):
        raise ConfigError("task=regression has numeric targets: no labels= and no per_class=")
    few = arg.per_class > 0
    if few:
        data["examples_per_class"] = arg.per_class
    model = dict(kind="hf", path=arg.model, architecture="classifier")
    return classifier(
        arg, model=model, data=data, batch=arg.batch, few=few, eval_every_epochs=1.0 if few else 0.5,
        log_every=25,
    )  # fmt: skip
