"""The `"m3d-extraction"` pipeline: clips in, entities, chains, relations and groundings out (JSON-ready).

```python
import modeling_m3d  # registers the Auto classes and this pipeline
from transformers import pipeline

extractor = pipeline("m3d-extraction", model="path/to/m3d-model")
extractor({"video": "clip.mp4", "subtitles": "clip.srt"})  # a raw clip
extractor({"text": "Peter's father, Patrick ...", "frames": ["f0.jpg", "f1.jpg"]})  # text and frames
extractor(dataset["test"][0], protocol="gold_pairs")  # a schema row (`modeling_m3d.schema`)
extractor(rows, batch_size=8, threshold=0.5)  # many clips, confident groundings only
```

A folder written by `extractor.save_pretrained(folder)` holds the pipeline's code too and loads without this
package: `pipeline(model=folder, trust_remote_code=True)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sized
from functools import partial
from typing import Any

from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .schema import PROTOCOLS, tokenize_text
from .video_m3d import unannotated_row, video_to_row

ANNOTATION_FIELDS = ("entities", "chains", "relations", "groundings")


def _open_image(frame: Any, where: str) -> Image.Image | Mapping:
    """A frame path opened as RGB; PIL images and undecoded datasets frames (`{"bytes", "path"}` dicts) pass
    as they are, for the processor to read."""
    if isinstance(frame, (Image.Image, Mapping)):
        return frame
    try:
        with Image.open(frame) as image:
            return image.convert("RGB")
    except (OSError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}: cannot read {frame!r} as an image ({err})") from err


def to_schema_row(inputs: Mapping, lang: str = "en", num_frames: int = 8) -> dict:
    """Turn one pipeline input into a schema row (`modeling_m3d.schema`).

    Accepted inputs: a schema row (has `tokens`); `{"text": str, "frames": [paths or PIL images]}` (text
    tokenised like the release); `{"video": path, "subtitles": path}` (frames sampled with
    `video_m3d.sample_frames`). An input's own `lang` and `id` win over the defaults.
    """
    if not isinstance(inputs, Mapping):
        raise ValueError(
            "expected a schema row, {'text', 'frames'} or {'video', 'subtitles'}; "
            f"got {type(inputs).__name__}"
        )
    lang = inputs.get("lang") or lang
    clip_id = inputs.get("id")
    if "video" in inputs:
        return video_to_row(
            inputs["video"], inputs.get("subtitles"), lang=lang, num_frames=num_frames, video_id=clip_id
        )
    where = f"input {clip_id!r}" if clip_id is not None else "input"
    frames = [
        _open_image(frame, f"{where}: field 'frames'[{j}]")
        for j, frame in enumerate(inputs.get("frames") or [])
    ]
    if "tokens" in inputs:
        return {**inputs, "lang": lang, "frames": frames}
    if "text" in inputs:
        if not isinstance(inputs["text"], str):
            raise ValueError(f"{where}: field 'text' must be a string, got {type(inputs['text']).__name__}")
        return unannotated_row(clip_id, lang, tokenize_text(inputs["text"], lang), [], frames)
    raise ValueError(f"{where}: has none of the fields 'tokens', 'text' or 'video'")


class M3DExtractionPipeline(Pipeline):
    """Grounded multimodal information extraction (M³D, Section V) over clips: subtitles plus frames.

    Parameters (at construction or per call): `protocol` (`"end_to_end"`, the default: predicted entities →
    chains → relations; or `"gold_pairs"`, the paper's: chains and relations over the row's gold entities),
    `relation_threshold` and `grounding_threshold` (the least probability of a kept relation or grounding;
    defaults to the model config's, chosen on validation data when it was trained), `lang` (for inputs without one; defaults to the
    processor's) and `num_frames` (frames sampled from a raw video; defaults to the processor's `max_frames`).

    Each clip gives `{"id", "entities": [{"start", "end", "type", "text"}], "chains": [[{"start", "end",
    "text"}, ...]], "relations": [{"subject", "object", "type", "score", "subject_text", "object_text"}], "groundings":
    [{"frame", "type", "box", "score"}]}`: spans index the row's tokens (end exclusive); relation subjects and
    objects index `chains` (under the gold-pairs protocol, the predicted chain holding the gold chain's first
    mention), their texts are those chains' first mentions; grounding frames index the clip's frames and boxes
    are (cx, cy, w, h) normalised. The pipeline only wraps the model's `decode` and the processor's
    `post_process_extraction`, adding the texts.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the model, the pipeline's code and the processor, which `Pipeline.save_pretrained` omits."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)

    def _sanitize_parameters(
        self,
        protocol=None,
        relation_threshold=None,
        grounding_threshold=None,
        lang=None,
        num_frames=None,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"M3DExtractionPipeline got unexpected parameters {sorted(kwargs)}")
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        preprocess = {
            name: value
            for name, value in [("protocol", protocol), ("lang", lang), ("num_frames", num_frames)]
            if value is not None
        }
        forward = {
            name: value
            for name, value in [
                ("protocol", protocol),
                ("relation_threshold", relation_threshold),
                ("grounding_threshold", grounding_threshold),
            ]
            if value is not None
        }
        return preprocess, forward, {}

    def _to_row(self, inputs: Mapping, lang: str | None = None, num_frames: int | None = None) -> dict:
        return to_schema_row(
            inputs, lang or self.processor.lang, num_frames or self.processor.max_frames or 8
        )

    def _collate(self, rows: list[dict], protocol: str = "end_to_end") -> dict:
        """Batch rows with the processor; end to end, gold annotations are dropped so they cannot leak in."""
        if protocol == "end_to_end":
            model_rows = [{k: v for k, v in row.items() if k not in ANNOTATION_FIELDS} for row in rows]
        else:
            model_rows = rows
        return {"rows": rows, **self.processor(model_rows, return_tensors="pt")}

    def preprocess(self, inputs: Mapping, protocol: str = "end_to_end", **row_params) -> dict:
        return self._collate([self._to_row(inputs, **row_params)], protocol)

    def get_iterator(
        self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
    ):
        """Batched runs: rows are built one by one, then batched by the processor (the default collate pads
        plain 2-D tensors only)."""
        row_params = dict(preprocess_params)
        protocol = row_params.pop("protocol", "end_to_end")
        dataset_class = PipelineDataset if isinstance(inputs, Sized) else PipelineIterator
        rows = dataset_class(inputs, self._to_row, row_params)
        loader = DataLoader(
            rows,
            num_workers=num_workers,
            batch_size=batch_size,
            collate_fn=partial(self._collate, protocol=protocol),
        )
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def _forward(self, model_inputs: dict, protocol: str = "end_to_end", **thresholds: float) -> dict:
        rows = model_inputs.pop("rows")
        decoded = self.model.decode(**model_inputs, protocol=protocol, **thresholds)
        return {"documents": self.processor.post_process_extraction(decoded, model_inputs), "rows": rows}

    def postprocess(self, model_outputs: dict) -> dict:
        document, row = model_outputs["documents"], model_outputs["rows"]
        if isinstance(row, list):  # batch_size 1: the iterator passes the one-row batch through unsplit
            (document,), (row,) = document, row
        tokens, lang = list(row.get("tokens") or []), row.get("lang") or self.processor.lang
        span_text = partial(self.processor.span_text, tokens, lang=lang)
        chains = [
            [{"start": s, "end": e, "text": span_text(s, e)} for s, e in chain]
            for chain in document["chains"]
        ]
        return {
            "id": row.get("id"),
            "entities": [
                {**entity, "text": span_text(entity["start"], entity["end"])}
                for entity in document["entities"]
            ],
            "chains": chains,
            "relations": [
                {
                    "subject": relation["subject_chain"],
                    "object": relation["object_chain"],
                    "type": relation["type"],
                    "score": relation["score"],
                    "subject_text": chains[relation["subject_chain"]][0]["text"],
                    "object_text": chains[relation["object_chain"]][0]["text"],
                }
                for relation in document["relations"]
            ],
            "groundings": document["groundings"],
        }


PIPELINE_REGISTRY.register_pipeline(
    "m3d-extraction", pipeline_class=M3DExtractionPipeline, pt_model=AutoModel, type="multimodal"
)
