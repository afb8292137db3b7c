"""M³D model configuration."""

import math
from collections.abc import Sequence
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .schema import ENTITY_TYPES, GROUNDING_TYPES, RELATION_TYPES

# α of Eq. 24 (the paper does not give its values); the box L1 term is weighted as in DETR.
DEFAULT_LOSS_WEIGHTS = {"ner": 1.0, "coref": 1.0, "re": 1.0, "grounding_type": 1.0, "grounding_box": 5.0}
# Loss-weight keys saved by earlier versions -> their names now.
_LEGACY_LOSS_TERMS = {"relation": "re"}


def default_initializer_range(hidden_size: int) -> float:
    """0.02·√(768 / d_h): the usual 0.02 at the paper's width, larger for narrow encoders."""
    return 0.02 * math.sqrt(768 / hidden_size)


def _loss_weights(loss_weights: dict[str, float] | None) -> dict[str, float]:
    """`DEFAULT_LOSS_WEIGHTS` updated with `loss_weights` (legacy keys renamed); unknown keys raise."""
    given = {_LEGACY_LOSS_TERMS.get(name, name): value for name, value in (loss_weights or {}).items()}
    unknown = set(given) - set(DEFAULT_LOSS_WEIGHTS)
    if unknown:
        raise ValueError(
            f"M3DConfig: unknown `loss_weights` keys {sorted(unknown)}; expected {tuple(DEFAULT_LOSS_WEIGHTS)}."
        )
    return {**DEFAULT_LOSS_WEIGHTS, **{name: float(value) for name, value in given.items()}}


def _labels(name: str, labels: Sequence[str]) -> list[str]:
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"M3DConfig: `{name}` must be a non-empty list of distinct names, got {labels!r}.")
    return labels


@strict
class M3DConfig(PreTrainedConfig):
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
        relation_between (`bool`, defaults to `False`): beyond the paper, the relation head also reads, for each
            pair of chains, the mean of the words between their two closest mentions ("X , whose father Y"),
            through a two-layer perceptron added to the biaffine scores of Eq. 17.
        relation_none_weight (`float`, defaults to 1.0): beyond the paper, the weight of class 0 ("no relation")
            in the relation cross-entropy (Eq. 21; a weighted mean over the chain pairs): most chain pairs of a
            document have no relation, and a weight below 1 gives the few related ones more of the loss. 1.0 is
            the paper's.
        pair_gradient_scale (`float`, defaults to 1.0): beyond the paper, the share of the coreference and
            relation losses' gradient that reaches the text features (and through them the encoders); the pair heads
            themselves learn from the whole of it. 0 trains the encoders on the entity (and grounding) losses alone,
            1.0 is the paper's.
        loss_weights (`dict[str, float]`): α of Eq. 24 over `ner`, `coref`, `re`, `grounding_type`,
            `grounding_box`; missing keys take the defaults (1.0 each, 5.0 for `grounding_box`).
        ner_loss_normalization (`str`, defaults to `"word"`): how the CRF negative log-likelihood (Eq. 19) is
            normalised: `"word"` (the paper's 1/n_x: the mean over a document's words) or `"document"` (summed over
            each document's words, as the CRF likelihood usually is; averaged over documents). On ~300-word
            documents `"word"` makes the NER term of Eq. 24 ~300 times smaller than the pair losses, which then
            steer a pretrained encoder (the `finetune` recipe of `examples/train.py` uses `"document"`).
        relation_threshold (`float`, defaults to 0.5): decoding: a chain pair is a relation when its probability of
            one, 1 − p(no relation), is at least this; its type is the likeliest relation type.
        grounding_threshold (`float`, defaults to 0.5): decoding: a grounding slot gives a box when its likeliest
            class is a type with at least this probability. `examples/train.py` sets both to the values that
            maximise the validation F1 of their task (`modeling_m3d.training.choose_thresholds`) and saves them
            with the model; `M3DModel.decode` takes others per call.
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
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="longformer"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit"),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    entity_types: list[str] | tuple[str, ...] = ENTITY_TYPES
    relation_types: list[str] | tuple[str, ...] = RELATION_TYPES
    grounding_types: list[str] | tuple[str, ...] = GROUNDING_TYPES
    latent_dim: int = 64
    prompt_length: int = 64
    fusion: Literal["dffm", "none", "one_stream", "two_stream"] = "dffm"
    use_mmcm: bool = True
    fusion_heads: int = 4
    mmcm_kernel_size: int = 3
    grounding_slots: int = 10
    grounding_none_weight: float | int = 0.1
    grounding_pooling: Literal["mean", "slots"] = "mean"
    bilinear_dim: int = 256
    relation_context: int = 0
    relation_between: bool = False
    relation_none_weight: float | int = 1.0
    pair_gradient_scale: float | int = 1.0
    loss_weights: dict[str, float | int] | None = None
    ner_loss_normalization: Literal["word", "document"] = "word"
    relation_threshold: float | int = 0.5
    grounding_threshold: float | int = 0.5
    vae_kl_weight: float | int = 1e-3
    dropout: float | int = 0.1
    max_frames: int = 32
    text_window_length: int | None = None
    text_window_stride: int | None = None
    initializer_range: float | int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.initializer_range is None:
            self.initializer_range = default_initializer_range(self.text_config.hidden_size)
        self.entity_types = _labels("entity_types", self.entity_types)
        self.relation_types = _labels("relation_types", self.relation_types)
        self.grounding_types = _labels("grounding_types", self.grounding_types)
        self.loss_weights = _loss_weights(self.loss_weights)

    def validate_architecture(self):
        """The cross-field checks (`@strict` checks each field's type; this runs after it)."""
        super().validate_architecture()
        positive = ["latent_dim", "prompt_length", "fusion_heads", "mmcm_kernel_size", "grounding_slots",
                    "bilinear_dim", "max_frames", "text_window_length", "text_window_stride"]  # fmt: skip
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"M3DConfig: `{name}` must be >= 1, got {getattr(self, name)}.")
        non_negative = [
            "relation_context",
            "grounding_none_weight",
            "vae_kl_weight",
            "dropout",
            "initializer_range",
        ]
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"M3DConfig: `{name}` must be >= 0, got {getattr(self, name)}.")
        if self.relation_none_weight <= 0:  # a document whose pairs are all "no relation" would weigh nothing
            raise ValueError(f"M3DConfig: `relation_none_weight` must be > 0, got {self.relation_none_weight}.")
        if self.latent_dim % self.fusion_heads:
            raise ValueError(
                f"M3DConfig: `fusion_heads` ({self.fusion_heads}) must divide `latent_dim` ({self.latent_dim})."
            )
        for name in ("relation_threshold", "grounding_threshold", "pair_gradient_scale"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"M3DConfig: `{name}` must be in [0, 1], got {getattr(self, name)}.")
        if self.mmcm_kernel_size % 2 == 0:
            raise ValueError(f"M3DConfig: `mmcm_kernel_size` must be odd, got {self.mmcm_kernel_size}.")

    @property
    def num_ner_tags(self) -> int:
        """Size of the BIO tag set: O plus B/I per entity type."""
        return 1 + 2 * len(self.entity_types)

    @property
    def uses_mmcm(self) -> bool:
        """Whether the MMCM modules exist: they generate keys for the DFFM, so they need it."""
        return self.use_mmcm and self.fusion == "dffm"


__all__ = ["M3DConfig"]
