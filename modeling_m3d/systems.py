"""The trained systems of the paper's Table III (main comparison) and Table IV (ablations) as named presets.

A system is the `M3DConfig` fields that make it (the fusion, the MMCM or blank filling, the loss weights) and the
kind of its vision encoder, with the paper's pretrained encoders as defaults (Section VI-C: `longformer-base-4096`
for EN, `xlm-roberta-longformer-base-4096` for ZH, `vit-base-patch16-224` for frames; VideoMAE-base and ViViT-B for
the Table III baselines) and tiny ones, built from configs with random weights, for tests and CPU runs.
`examples/train.py --system NAME` trains one and `examples/reproduce.py` the tables' grid.

| name | paper's row | vision encoder | fusion |
| --- | --- | --- | --- |
| `m3d` | Our / Best Setting | ViT-B/16, frame by frame | DFFM + MMCM (Section V) |
| `m3d-no-mmcm` | w/o MMCM (Table IV) | ViT-B/16 | DFFM, a missing modality as blank features |
| `m3d-no-dffm` | w/o DFFM (Table IV) | ViT-B/16 | none: the heads read each encoder's last layer |
| `videomae-os`, `videomae-ts` | VideoMAE+Longformer+Os/Ts | VideoMAE-B, a 16-frame clip | one-stream / two-stream |
| `vivit-os`, `vivit-ts` | ViViT+Longformer+Os/Ts | ViViT-B, a 32-frame clip | one-stream / two-stream |
| `text-crf` | (not in the paper) | none needed | none; only the NER loss |

`text-crf` is a quality baseline: the text encoder, a linear layer and the CRF trained on the NER loss alone (every
other loss weight 0, no VAE term). The model still runs a frame encoder (a tiny ViT unless one is named) and its
other heads stay untrained: only its entity scores mean anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from transformers import (
    PreTrainedConfig,
    VideoMAEConfig,
    VideoMAEImageProcessorPil,
    VivitConfig,
    VivitImageProcessor,
)

from .modeling_m3d import is_video_encoder
from .schema import check_language
from .testing import TINY_IMAGE_SIZE, tiny_image_processor

PAPER_TEXT_ENCODERS = MappingProxyType(
    {"en": "allenai/longformer-base-4096", "zh": "markussagen/xlm-roberta-longformer-base-4096"}
)
TINY_LAYERS = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}


def _tiny_video_processor(processor_class):
    """A video model's image processor resizing frames to the tiny encoders' 32 px."""
    size = TINY_IMAGE_SIZE
    return processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@dataclass(frozen=True)
class VisionEncoder:
    """A kind of vision encoder: the paper's checkpoint, and a tiny config and image processor for CPU runs.

    Attributes:
        name: the paper's checkpoint (Hub name).
        tiny_config: a small config of the same architecture (32 px frames, 3 layers of width 32), or None for the
            tiny ViT of `modeling_m3d.testing.tiny_config`.
        tiny_image_processor: the image processor for that config.
    """

    name: str
    tiny_config: Callable[[], PreTrainedConfig | None]
    tiny_image_processor: Callable[[], object]


VISION_ENCODERS = MappingProxyType(
    {
        "vit": VisionEncoder("google/vit-base-patch16-224", lambda: None, tiny_image_processor),
        # VideoMAE-base reads 16 frames in 2 × 16 × 16 cubes; the tiny one keeps the clip, with 8 px patches.
        "videomae": VisionEncoder(
            "MCG-NJU/videomae-base",
            lambda: VideoMAEConfig(
                image_size=TINY_IMAGE_SIZE, patch_size=8, num_frames=16, tubelet_size=2, **TINY_LAYERS
            ),  # fmt: skip
            lambda: _tiny_video_processor(VideoMAEImageProcessorPil),
        ),
        # ViViT-B 16x2 reads 32 frames in 2 × 16 × 16 tubelets; the tiny one keeps the clip, with 8 px patches.
        "vivit": VisionEncoder(
            "google/vivit-b-16x2-kinetics400",
            lambda: VivitConfig(
                image_size=TINY_IMAGE_SIZE, tubelet_size=[2, 8, 8], num_frames=32, **TINY_LAYERS
            ),
            lambda: _tiny_video_processor(VivitImageProcessor),
        ),
    }
)


@dataclass(frozen=True)
class System:
    """One trained system of Table III or IV.

    Attributes:
        name: the preset's name (`--system NAME`).
        label: its row in the paper's tables.
        vision: the key of its vision encoder in `VISION_ENCODERS`; None when it needs no visual stream.
        config: the `M3DConfig` fields that make it; `--config_overrides` still changes any of them.
    """

    name: str
    label: str
    vision: str | None
    config: Mapping = field(default_factory=dict)

    def text_encoder(self, lang: str) -> str:
        """The paper's text encoder for `lang` (Section VI-C)."""
        return PAPER_TEXT_ENCODERS[check_language(lang)]

    @property
    def vision_encoder(self) -> str | None:
        """The paper's vision encoder (Hub name), None when the system needs none."""
        return VISION_ENCODERS[self.vision].name if self.vision else None

    def tiny_vision_config(self) -> PreTrainedConfig | None:
        """A tiny config of its vision encoder; None = the tiny ViT of `modeling_m3d.testing`."""
        return VISION_ENCODERS[self.vision].tiny_config() if self.vision else None

    def tiny_image_processor(self):
        """The image processor of `tiny_vision_config`."""
        return VISION_ENCODERS[self.vision or "vit"].tiny_image_processor()


_NER_ONLY = {"ner": 1.0, "coref": 0.0, "re": 0.0, "grounding_type": 0.0, "grounding_box": 0.0}

SYSTEMS = MappingProxyType(
    {
        system.name: system
        for system in (
            System("m3d", "Our", "vit", {"fusion": "dffm", "use_mmcm": True}),
            System("m3d-no-mmcm", "w/o MMCM", "vit", {"fusion": "dffm", "use_mmcm": False}),
            System("m3d-no-dffm", "w/o DFFM", "vit", {"fusion": "none"}),
            System("videomae-os", "VideoMAE+Longformer+Os", "videomae", {"fusion": "one_stream"}),
            System("videomae-ts", "VideoMAE+Longformer+Ts", "videomae", {"fusion": "two_stream"}),
            System("vivit-os", "ViViT+Longformer+Os", "vivit", {"fusion": "one_stream"}),
            System("vivit-ts", "ViViT+Longformer+Ts", "vivit", {"fusion": "two_stream"}),
            System(
                "text-crf",
                "Longformer+CRF",
                None,
                {"fusion": "none", "loss_weights": _NER_ONLY, "vae_kl_weight": 0.0},
            ),  # fmt: skip
        )
    }
)
# The rows of Table III (the paper's model last) and Table IV (the best setting first), as systems.
TABLE3 = ("videomae-os", "videomae-ts", "vivit-os", "vivit-ts", "m3d")
TABLE4 = ("m3d", "m3d-no-mmcm", "m3d-no-dffm")


def get_system(name: str) -> System:
    """The system called `name`; `ValueError` naming the known ones otherwise."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
    return SYSTEMS[name]


def frames_per_row(vision_config: PreTrainedConfig | None, default: int) -> int:
    """How many frames of a row the processor keeps (`M3DConfig.max_frames`): a video encoder's clip length (its
    `num_frames`, `M3DTubeletFrames`), else `default`."""
    return (
        vision_config.num_frames if vision_config is not None and is_video_encoder(vision_config) else default
    )


__all__ = ["SYSTEMS", "TABLE3", "TABLE4", "System", "VisionEncoder", "frames_per_row", "get_system"]
