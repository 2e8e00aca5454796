"""The run config: its typed schema (:mod:`.schema`: every section, key and default), the
command line's overrides (:mod:`.overrides`) and config files (:mod:`.files`).

It imports no JAX, so a config file (``get_config(arg)``) and a sweep read it cheaply; the
harness (:mod:`adapt.harness`) runs what it describes.
"""

from adapt.config.files import check, find_config, load_config_file, parse_arg, shipped_configs
from adapt.config.overrides import apply_overrides
from adapt.config.schema import (
    KIND_KEYS,
    OPTIONAL_SECTIONS,
    TASKS,
    CheckpointSection,
    ConfigError,
    DataSection,
    ExportSection,
    GroupSpec,
    MeshSection,
    MethodSection,
    ModelSection,
    OptimSection,
    RegularizerSection,
    RunConfig,
    Section,
    SourceTaskSection,
    TrainSection,
    WiseSection,
    is_finite_number,
    suggest,
    to_dict,
)

__all__ = [
    "KIND_KEYS",
    "OPTIONAL_SECTIONS",
    "TASKS",
    "CheckpointSection",
    "ConfigError",
    "DataSection",
    "ExportSection",
    "GroupSpec",
    "MeshSection",
    "MethodSection",
    "ModelSection",
    "OptimSection",
    "RegularizerSection",
    "RunConfig",
    "Section",
    "SourceTaskSection",
    "TrainSection",
    "WiseSection",
    "apply_overrides",
    "check",
    "is_finite_number",
    "find_config",
    "load_config_file",
    "parse_arg",
    "shipped_configs",
    "suggest",
    "to_dict",
]
