"""M³D model configuration."""

from __future__ import annotations

import math
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .schema import ENTITY_TYPES, GROUNDING_TYPES, RELATION_TYPES

FUSIONS = ("dffm", "none", "one_stream", "two_stream")
GROUNDING_POOLINGS = ("mean", "slots")
# α of Eq. 24 (the paper does not give its values); the box L1 term is weighted as in DETR.
DEFAULT_LOSS_WEIGHTS = {
    "ner": 1.0,
    "coref": 1.0,
    "relation": 1.0,
    "grounding_type": 1.0,
    "grounding_box": 5.0,
}
LOSS_TERMS = tuple(DEFAULT_LOSS_WEIGHTS)


def default_initializer_range(hidden_size: int) -> float:
    """0.02·√(768 / d_h): the usual 0.02 at the paper's width, larger for narrow encoders."""
    return 0.02 * math.sqrt(768 / hidden_size)


def _check_type(name: str, value: Any, types: type | tuple[type, ...], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    # bool is a subclass of int: a flag must not pass as a count, nor a count as a flag.
    if isinstance(value, bool) != (types is bool) or not isinstance(value, types):
        raise TypeError(f"M3DConfig: `{name}` must be {types}, got {value!r} ({type(value).__name__}).")


def _check_labels(name: str, labels: Any) -> list[str]:
    if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(x, str) for x in labels):
        raise TypeError(f"M3DConfig: `{name}` must be a non-empty list of strings, got {labels!r}.")
    if len(set(labels)) != len(labels):
        raise ValueError(f"M3DConfig: `{name}` has duplicates: {labels!r}.")
    return list(labels)


def _build_sub_config(
    name: str, value: PretrainedConfig | dict | None, default_type: str
) -> PretrainedConfig:
    if value is None:
        return CONFIG_MAPPING[default_type]()
    if isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", default_type)
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"M3DConfig: `{name}` has unknown model_type {model_type!r}.")
        return CONFIG_MAPPING[model_type](**value)
    raise TypeError(f"M3DConfig: `{name}` must be a config, a dict or None, got {type(value).__name__}.")


class M3DConfig(PretrainedConfig):
    r"""
    Configuration of [`M3DModel`], the hierarchical multimodal extractor of M³D (Section V of the paper): a
    text encoder, a frame encoder, the denoised feature fusion module (DFFM, Eq. 8–12), the missing modality
    construction module (MMCM, Eq. 13–14) and the four task heads (Eq. 15–18) trained with Eq. 24.

    Args:
        text_config (`PretrainedConfig` or `dict`, *optional*):
            Config of the text encoder, any model `AutoModel` builds (Longformer, XLM-R Longformer, BERT,
            RoBERTa …).
            Defaults to `LongformerConfig()` (allenai/longformer-base-4096).
        vision_config (`PretrainedConfig` or `dict`, *optional*):
            Config of the ViT-like frame encoder. Defaults to `ViTConfig()` (google/vit-base-patch16-224).
        entity_types (`list[str]`): entity types; BIO tag ids are 0 = O, B = 1 + 2i, I = 2 + 2i.
        relation_types (`list[str]`): relation types; class 0 of the relation head is "no relation".
        grounding_types (`list[str]`): visual target types; the grounding head adds a last "none" class.
        latent_dim (`int`, defaults to 64): d_vae, the VAE latent size of the DFFM (Eq. 8).
        prompt_length (`int`, defaults to 64): l_p, the MMCM prompt length (Eq. 13).
        fusion (`str`, defaults to `"dffm"`): `"dffm"` (the paper's), `"none"` (the w/o-DFFM ablation), or
            one of the Table III baseline fusions on the encoders' last layer: `"one_stream"` (words and
            patches concatenated, one self-attention layer) or `"two_stream"` (co-attention: each modality
            attends to the other).
        use_mmcm (`bool`, defaults to `True`): `False` is the w/o-MMCM ablation (missing modality = blank
        features).
            The MMCM feeds the DFFM, so it is only built when `fusion="dffm"`.
        fusion_heads (`int`, defaults to 4): attention heads of the DFFM attention; must divide `latent_dim`.
        mmcm_kernel_size (`int`, defaults to 3): width of the MMCM convolutions (odd).
        grounding_slots (`int`, defaults to 10): prediction slots per frame of the grounding head (Eq. 18).
        grounding_none_weight (`float`, defaults to 0.1): cross-entropy weight of the "none" class (Eq. 22).
        grounding_pooling (`str`, defaults to `"mean"`): what the grounding slots read. `"mean"` (the paper's):
            the frame feature, H^{x→g} averaged over patches (Eq. 12), through linear layers (Eq. 18).
            `"slots"` (beyond the paper): one learned query per slot attends over the frame's patch grid (the
            vision config's `image_size // patch_size` squared, the last positions of the encoder output), the
            linear layers of Eq. 18 read each slot's feature and its box centre is offset from the attention-
            weighted centre of the patches (a reference point); it keeps where the objects are, which the patch
            average loses (small encoders trained from scratch localise far better with it).
        bilinear_dim (`int`, defaults to 256): low-rank projection size before the pair bilinear forms
            (Eq. 16–17).
        relation_context (`int`, defaults to 0): words on each side of a mention added to the chain
            representations of the relation head (Eq. 17). 0 (the paper's): a chain is the mean of its mentions'
            word features. k > 0 (beyond the paper): the chain also gets the element-wise maximum over its
            mentions of the mean of the k words before and of the k words after each mention, where the words
            linking a subject to its object usually are.
        loss_weights (`dict[str, float]`): α of Eq. 24 over `ner`, `coref`, `relation`, `grounding_type`,
            `grounding_box`; missing keys take the defaults (1.0 each, 5.0 for `grounding_box`).
        vae_kl_weight (`float`, defaults to 1e-3): weight of the VAE KL term; 0 also turns sampling off.
        dropout (`float`, defaults to 0.1): dropout of the fusion module and the heads.
        max_frames (`int`, defaults to 32): frames per clip covered by the frame position embeddings (Eq. 12).
        text_window_length (`int`, *optional*): window length for documents longer than the text encoder's
            positions; defaults to the encoder's usable positions.
        text_window_stride (`int`, *optional*): stride of those windows; defaults to half the window.
        initializer_range (`float`, *optional*): std of the normal initialiser of the weights outside the
            encoders. Defaults to 0.02·√(768 / d_h): the usual 0.02 at the paper's width (d_h = 768), larger
            for narrow encoders so that the heads start at the same activation scale.

    Example:

    ```python
    >>> from modeling_m3d import M3DConfig, M3DModel

    >>> configuration = M3DConfig(fusion="dffm", use_mmcm=True)
    >>> model = M3DModel(configuration)
    >>> configuration = model.config
    ```"""

    model_type = "m3d"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    def __init__(
        self,
        text_config: PretrainedConfig | dict | None = None,
        vision_config: PretrainedConfig | dict | None = None,
        entity_types: list[str] | None = None,
        relation_types: list[str] | None = None,
        grounding_types: list[str] | None = None,
        latent_dim: int = 64,
        prompt_length: int = 64,
        fusion: str = "dffm",
        use_mmcm: bool = True,
        fusion_heads: int = 4,
        mmcm_kernel_size: int = 3,
        grounding_slots: int = 10,
        grounding_none_weight: float = 0.1,
        grounding_pooling: str = "mean",
        bilinear_dim: int = 256,
        relation_context: int = 0,
        loss_weights: dict[str, float] | None = None,
        vae_kl_weight: float = 1e-3,
        dropout: float = 0.1,
        max_frames: int = 32,
        text_window_length: int | None = None,
        text_window_stride: int | None = None,
        initializer_range: float | None = None,
        **kwargs,
    ):
        self.text_config = _build_sub_config("text_config", text_config, "longformer")
        self.vision_config = _build_sub_config("vision_config", vision_config, "vit")
        if initializer_range is None:
            initializer_range = default_initializer_range(self.text_config.hidden_size)
        self.entity_types = _check_labels(
            "entity_types", ENTITY_TYPES if entity_types is None else entity_types
        )
        self.relation_types = _check_labels(
            "relation_types", RELATION_TYPES if relation_types is None else relation_types
        )
        self.grounding_types = _check_labels(
            "grounding_types", GROUNDING_TYPES if grounding_types is None else grounding_types
        )
        for name, value in [
            ("latent_dim", latent_dim),
            ("prompt_length", prompt_length),
            ("fusion_heads", fusion_heads),
            ("mmcm_kernel_size", mmcm_kernel_size),
            ("grounding_slots", grounding_slots),
            ("bilinear_dim", bilinear_dim),
            ("max_frames", max_frames),
        ]:
            _check_type(name, value, int)
            if value < 1:
                raise ValueError(f"M3DConfig: `{name}` must be >= 1, got {value}.")
        _check_type("relation_context", relation_context, int)
        if relation_context < 0:
            raise ValueError(f"M3DConfig: `relation_context` must be >= 0, got {relation_context}.")
        for name, value in [
            ("text_window_length", text_window_length),
            ("text_window_stride", text_window_stride),
        ]:
            _check_type(name, value, int, allow_none=True)
            if value is not None and value < 1:
                raise ValueError(f"M3DConfig: `{name}` must be >= 1, got {value}.")
        for name, value in [
            ("grounding_none_weight", grounding_none_weight),
            ("vae_kl_weight", vae_kl_weight),
            ("dropout", dropout),
            ("initializer_range", initializer_range),
        ]:
            _check_type(name, value, (int, float))
            if value < 0:
                raise ValueError(f"M3DConfig: `{name}` must be >= 0, got {value}.")
        _check_type("use_mmcm", use_mmcm, bool)
        if fusion not in FUSIONS:
            raise ValueError(f"M3DConfig: unknown `fusion` {fusion!r}; expected one of {FUSIONS}.")
        if grounding_pooling not in GROUNDING_POOLINGS:
            raise ValueError(
                f"M3DConfig: unknown `grounding_pooling` {grounding_pooling!r}; expected one of {GROUNDING_POOLINGS}."
            )
        if latent_dim % fusion_heads:
            raise ValueError(
                f"M3DConfig: `fusion_heads` ({fusion_heads}) must divide `latent_dim` ({latent_dim})."
            )
        if mmcm_kernel_size % 2 == 0:
            raise ValueError(f"M3DConfig: `mmcm_kernel_size` must be odd, got {mmcm_kernel_size}.")
        self.latent_dim = latent_dim
        self.prompt_length = prompt_length
        self.fusion = fusion
        self.use_mmcm = use_mmcm
        self.fusion_heads = fusion_heads
        self.mmcm_kernel_size = mmcm_kernel_size
        self.grounding_slots = grounding_slots
        self.grounding_none_weight = float(grounding_none_weight)
        self.grounding_pooling = grounding_pooling
        self.bilinear_dim = bilinear_dim
        self.relation_context = relation_context
        self.loss_weights = self._check_loss_weights(loss_weights)
        self.vae_kl_weight = float(vae_kl_weight)
        self.dropout = float(dropout)
        self.max_frames = max_frames
        self.text_window_length = text_window_length
        self.text_window_stride = text_window_stride
        self.initializer_range = float(initializer_range)
        super().__init__(**kwargs)

    @staticmethod
    def _check_loss_weights(loss_weights: dict[str, float] | None) -> dict[str, float]:
        weights = dict(DEFAULT_LOSS_WEIGHTS)
        if loss_weights is None:
            return weights
        if not isinstance(loss_weights, dict):
            raise TypeError(f"M3DConfig: `loss_weights` must be a dict, got {type(loss_weights).__name__}.")
        unknown = set(loss_weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(
                f"M3DConfig: unknown `loss_weights` keys {sorted(unknown)}; expected {LOSS_TERMS}."
            )
        for name, value in loss_weights.items():
            _check_type(f"loss_weights[{name!r}]", value, (int, float))
            weights[name] = float(value)
        return weights

    @property
    def num_ner_tags(self) -> int:
        """Size of the BIO tag set: O plus B/I per entity type."""
        return 1 + 2 * len(self.entity_types)

    @property
    def uses_mmcm(self) -> bool:
        """Whether the MMCM modules exist: they generate keys for the DFFM, so they need it."""
        return self.use_mmcm and self.fusion == "dffm"


__all__ = ["M3DConfig", "ENTITY_TYPES", "GROUNDING_TYPES", "RELATION_TYPES"]
