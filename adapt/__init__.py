"""adapt: efficient adaptation of pretrained models in JAX/Flax.

Importing :mod:`adapt` is cheap and has no side effects; the heavy pieces live in submodules
(``adapt.models``, ``adapt.convert``, ...) and are imported where used.
"""

__version__ = "0.1.0"
