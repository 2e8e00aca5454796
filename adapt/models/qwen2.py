"""Qwen2 (Qwen2, Qwen2.5): LLaMA's decoder with biases on the query, key and value projections.

Everything else is LLaMA's computation: RMSNorm, rotary embeddings in the ``rotate_half`` layout,
grouped-query attention, a SwiGLU MLP, optionally tied embeddings. So the model is
:class:`adapt.models.llama.LlamaForCausalLM` with a config whose
:meth:`~adapt.models.llama.LlamaConfig.projection_bias` says which projections carry a bias, and
parameters named as in Hugging Face's ``Qwen2ForCausalLM``. Sliding-window attention
(``use_sliding_window``, off in every released Qwen2 checkpoint) is not implemented; the
converter refuses a config that turns it on.
"""

from __future__ import annotations

import dataclasses

from adapt.models.llama import LlamaConfig, LlamaForCausalLM, LlamaModel

_QKV = ("q_proj", "k_proj", "v_proj")


@dataclasses.dataclass(frozen=True)
class Qwen2Config(LlamaConfig):
    """Field names and defaults follow ``transformers.Qwen2Config`` (Qwen2-7B's shape)."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def projection_bias(self, name: str) -> bool:
        return name in _QKV  # the output projection and the MLP have none


class Qwen2ForCausalLM(LlamaForCausalLM):
    """``model`` + ``lm_head``, as :class:`~adapt.models.llama.LlamaForCausalLM`."""

    config: Qwen2Config


class Qwen2Model(LlamaModel):
    """The decoder without the language-model head (Hugging Face's ``Qwen2Model``)."""

    config: Qwen2Config


__all__ = ["Qwen2Config", "Qwen2ForCausalLM", "Qwen2Model"]
