"""Hugging Face PEFT adapter directories <-> adapt methods and leaves.

An adapter trained here can be served by ``peft.PeftModel.from_pretrained`` on the original
``transformers`` model, and an adapter made with PEFT can be loaded into adapt, for LoRA (with
rsLoRA and DoRA), IA3 and prompt tuning. A PEFT adapter directory holds ``adapter_config.json``
and ``adapter_model.safetensors`` with keys ``base_model.model.<HF module>.lora_A.weight``
(``(r, in)``; ours ``<module>/lora_a`` is ``(in, r)``), ``.lora_B.weight`` (``(out, r)``),
``.lora_magnitude_vector`` (DoRA, ``(out,)``), ``.ia3_l`` (``(out, 1)``, or ``(1, in)`` for
feed-forward modules), ``prompt_embeddings`` (``(num_virtual_tokens, hidden)``), plus the full
weights of ``modules_to_save`` (a new classification head) under their HF names.

PEFT only warns about keys that do not fit the model and silently computes something else;
:func:`import_adapter` raises instead, naming the keys, options or shapes that are wrong.

Prompt tuning on encoders with token-type embeddings: PEFT prepends the prompt as virtual *word* embeddings, which
then receive position and token-type embeddings and the embedding LayerNorm, and it shifts the real
tokens' positions. adapt's :class:`~adapt.methods.PromptTuning` prepends after the LayerNorm
(through ``extend_inputs``), a different function;
:class:`~adapt.methods.VirtualTokenPromptTuning` computes PEFT's, and only it is exchanged with
PEFT for them (the family record's ``peft_prompt``). On decoders both layouts coincide.

The package is cut by concept: :mod:`.names` (file names, adapt paths <-> HF module names),
:mod:`.config` (``adapter_config.json`` options and PEFT's module matching), :mod:`.exporting`
and :mod:`.importing`. Everything a caller needs is re-exported here.
"""

from adapt.methods.prompts import VirtualTokenPromptTuning  # re-exported: where PEFT users look
from adapt.peft_format.config import SUPPORTED_PEFT_TYPES
from adapt.peft_format.exporting import DEFAULT_MODULES_TO_SAVE, export_adapter
from adapt.peft_format.importing import import_adapter, overlay
from adapt.peft_format.names import CONFIG_NAME, WEIGHTS_NAME, AdapterFormatError

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_MODULES_TO_SAVE",
    "SUPPORTED_PEFT_TYPES",
    "WEIGHTS_NAME",
    "AdapterFormatError",
    "VirtualTokenPromptTuning",
    "export_adapter",
    "import_adapter",
    "overlay",
]
