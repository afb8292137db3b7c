"""M³D on the Hugging Face stack: grounded, document-level, multimodal, multilingual information extraction.

Importing the package registers ``M3DConfig``, ``M3DModel`` and ``M3DProcessor`` with ``AutoConfig``,
``AutoModel`` and ``AutoProcessor`` (model type ``"m3d"``) and the ``"m3d-extraction"`` pipeline, and marks them
for the Hub's remote code, so that ``save_pretrained`` writes ``auto_map`` and copies the code files next to the
weights.

The public names load lazily (PEP 562), as in transformers: ``modeling_m3d.schema`` and ``modeling_m3d.scoring``
are pure Python and work where torch and PyAV are not installed. Registering needs the classes themselves, and
transformers' configuration module imports torch, so the registration runs only where torch is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# Public name -> the submodule defining it.
_LAZY = {
    "M3DConfig": "configuration_m3d",
    "M3DModel": "modeling_m3d",
    "M3DModelOutput": "modeling_m3d",
    "M3DPreTrainedModel": "modeling_m3d",
    "M3DProcessor": "processing_m3d",
    "M3DExtractionPipeline": "pipeline_m3d",
    "ENTITY_TYPES": "schema",
    "GROUNDING_TYPES": "schema",
    "RELATION_TYPES": "schema",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _register() -> None:
    """The Auto classes, the remote-code markers and the ``"m3d-extraction"`` pipeline task."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    from .configuration_m3d import M3DConfig
    from .modeling_m3d import M3DModel
    from .pipeline_m3d import M3DExtractionPipeline  # noqa: F401  (registers the pipeline task on import)
    from .processing_m3d import M3DProcessor

    AutoConfig.register(M3DConfig.model_type, M3DConfig, exist_ok=True)
    AutoModel.register(M3DConfig, M3DModel, exist_ok=True)
    AutoProcessor.register(M3DConfig, M3DProcessor, exist_ok=True)
    M3DConfig.register_for_auto_class()
    M3DModel.register_for_auto_class("AutoModel")
    M3DProcessor.register_for_auto_class()


if importlib.util.find_spec("torch") is not None:
    _register()
