"""`from_hf_config` / `to_hf_config` on transformers config objects: strict in, faithful out."""

import dataclasses

import pytest

from adapt.convert.hf import from_hf_config, to_hf_config
from adapt.convert.hf_config import UnsupportedConfigError

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    "hf_config, architecture",
    [
        (
            transformers.BertConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
            ),
            "BertModel",
        ),
        (
            transformers.RobertaConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
            ),
            "RobertaModel",
        ),
        (
            transformers.ViTConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
            ),
            "ViTModel",
        ),
        (
            transformers.LlamaConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=37,
            ),
            "LlamaForCausalLM",
        ),
    ],
    ids=["bert", "roberta", "vit", "llama"],
)
def test_config_objects_round_trip(hf_config, architecture):
    ours = from_hf_config(hf_config)
    back = to_hf_config(ours, architecture)
    reloaded = type(hf_config)(**back)
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        assert getattr(reloaded, field) == getattr(hf_config, field)
    again = from_hf_config(back)
    if hasattr(ours, "id2label"):  # default label names get written out explicitly
        again = dataclasses.replace(again, id2label=ours.id2label)
    assert again == ours


def test_unsupported_rope_scaling_is_named():
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    )
    with pytest.raises(UnsupportedConfigError, match="rope"):
        from_hf_config(cfg)


def test_unknown_model_type_and_architecture():
    with pytest.raises(UnsupportedConfigError, match="model_type 'gpt2'"):
        from_hf_config({"model_type": "gpt2"})
    ours = from_hf_config(transformers.BertConfig(hidden_size=32, num_attention_heads=4))
    with pytest.raises(UnsupportedConfigError, match="BertForQuestionAnswering"):
        to_hf_config(ours, "BertForQuestionAnswering")
