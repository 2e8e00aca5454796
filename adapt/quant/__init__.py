"""Weight quantisation for memory-efficient adaptation: NF4 with double quantisation
(:mod:`.nf4`), the storage format of QLoRA's frozen base (:mod:`adapt.methods.qlora`)."""

from adapt.quant.nf4 import (
    NF4Tensor,
    QuantizationError,
    dequantize,
    dequantize_kernel,
    dequantize_params,
    quantize,
    quantize_kernel,
    quantize_params,
    quantized_modules,
    storage,
)

__all__ = [
    "NF4Tensor",
    "QuantizationError",
    "dequantize",
    "dequantize_kernel",
    "dequantize_params",
    "quantize",
    "quantize_kernel",
    "quantize_params",
    "quantized_modules",
    "storage",
]
