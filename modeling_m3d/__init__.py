"""M³D on the Hugging Face stack: grounded, document-level, multimodal, multilingual information extraction.

Importing the package registers ``M3DConfig``, ``M3DModel`` and ``M3DProcessor`` with ``AutoConfig``,
``AutoModel`` and ``AutoProcessor`` (model type ``"m3d"``) and the ``"m3d-extraction"`` pipeline, and marks them for the Hub's remote code, so that
``save_pretrained`` writes ``auto_map`` and copies the code files next to the weights.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_m3d import ENTITY_TYPES, GROUNDING_TYPES, RELATION_TYPES, M3DConfig
from .modeling_m3d import M3DModel, M3DModelOutput, M3DPreTrainedModel
from .pipeline_m3d import M3DExtractionPipeline  # registers the "m3d-extraction" pipeline task
from .processing_m3d import M3DProcessor

AutoConfig.register(M3DConfig.model_type, M3DConfig, exist_ok=True)
AutoModel.register(M3DConfig, M3DModel, exist_ok=True)
AutoProcessor.register(M3DConfig, M3DProcessor, exist_ok=True)
M3DConfig.register_for_auto_class()
M3DModel.register_for_auto_class("AutoModel")
M3DProcessor.register_for_auto_class()

__all__ = [
    "ENTITY_TYPES",
    "GROUNDING_TYPES",
    "RELATION_TYPES",
    "M3DConfig",
    "M3DExtractionPipeline",
    "M3DModel",
    "M3DModelOutput",
    "M3DPreTrainedModel",
    "M3DProcessor",
]
