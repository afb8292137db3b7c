"""The `"m3d-extraction"` pipeline: clips or whole videos in, entities, chains, relations and groundings out
(JSON-ready).

```python
import modeling_m3d  # registers the Auto classes and this pipeline
from transformers import pipeline

extractor = pipeline("m3d-extraction", model="path/to/m3d-model")
extractor({"video": "talk.mp4", "subtitles": "talk.srt"})  # a whole video: clips between subtitle lines
extractor({"video": "talk.mp4"}, asr_model="openai/whisper-small")  # no subtitles: speech transcribed
extractor({"text": "Peter's father, Patrick ...", "frames": ["f0.jpg", "f1.jpg"]})  # text and frames
extractor(dataset["test"][0], protocol="gold_pairs")  # a schema row (`modeling_m3d.schema`)
extractor(rows, batch_size=8, grounding_threshold=0.5)  # many clips, confident groundings only
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
from .timeline_m3d import VideoExtraction, extract_video
from .video_m3d import unannotated_row

ANNOTATION_FIELDS = ("entities", "chains", "relations", "groundings")
VIDEO_PARAMETERS = ("frame_step", "min_clip", "max_clip", "asr_model")  # how whole videos are cut into clips


# The fields of a whole-video input.
VIDEO_FIELDS = ("video", "subtitles", "video_id", "id", "lang")


def is_video_input(inputs: Any) -> bool:
    """Whether a pipeline input is a whole video (`{"video": path, "subtitles": path?, ...}`)."""
    return isinstance(inputs, Mapping) and "video" in inputs


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


def to_schema_row(inputs: Mapping, lang: str = "en") -> dict:
    """Turn one clip input into a schema row (`modeling_m3d.schema`).

    Accepted inputs: a schema row (has `tokens`); `{"text": str, "frames": [paths or PIL images]}` (text
    tokenised like the release). An input's own `lang` and `id` win over the defaults. A whole video is
    no clip: the pipeline cuts it into clips itself (`M3DExtractionPipeline.video_extraction`).
    """
    if not isinstance(inputs, Mapping):
        raise ValueError(f"expected a schema row or {{'text', 'frames'}}; got {type(inputs).__name__}")
    lang = inputs.get("lang") or lang
    clip_id = inputs.get("id")
    where = f"input {clip_id!r}" if clip_id is not None else "input"
    if is_video_input(inputs):
        raise ValueError(
            f"{where}: a whole video ({{'video': {inputs['video']!r}}}) among clips or in a stream; pass a video, "
            "or a list of videos, to the pipeline on its own"
        )
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
    """Grounded multimodal information extraction (M³D, Section V) over clips (subtitles plus frames) or whole
    videos.

    Parameters (at construction or per call): `protocol` (`"end_to_end"`, the default: predicted entities →
    chains → relations; or `"gold_pairs"`, the paper's: chains and relations over the row's gold entities),
    `relation_threshold` and `grounding_threshold` (the least probability of a kept relation or grounding;
    defaults to the model config's, chosen on validation data when it was trained), `lang` (for inputs without one; defaults to the
    processor's); for whole videos, `frame_step` (one frame kept in this many; 24), `min_clip` and `max_clip`
    (clip lengths in seconds; 60 and 120) and `asr_model` (a Whisper-family checkpoint transcribing videos
    without subtitles).

    A whole video, `{"video": path, "subtitles": path?, "video_id": str?}` (or a list of them), is handled as
    `examples/predict.py --video` does (`timeline_m3d.extract_video`): cut into clips between subtitle lines
    (`ingest_m3d.ingest_video`, the paper's Steps 2-4), each clip run as below, and the results anchored in
    the video's time. It gives `timeline_m3d.video_summary`'s record with each clip's whole record under
    `"clips"`: `{"video", "video_id", "clips": [{"id", "start_time", "end_time", "document", "tokens",
    "entities", "chains", "relations", "groundings", ...}], "chains", "relations", "groundings", "box_format"}`,
    times in seconds from the video's start (`timeline_m3d.clip_result`). `video_extraction` also returns the
    clips' rows and frames.

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
        **kwargs,
    ):
        video = {name: kwargs.pop(name) for name in VIDEO_PARAMETERS if name in kwargs}
        if kwargs:
            raise TypeError(f"M3DExtractionPipeline got unexpected parameters {sorted(kwargs)}")
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        preprocess = {
            name: value
            for name, value in [("protocol", protocol), ("lang", lang), *video.items()]
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

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """Clips as any pipeline runs its inputs; a whole video, or a list of videos, through `video_extraction`
        (one video-level record each)."""
        if is_video_input(inputs):
            return self.video_extraction(inputs, **kwargs).to_json()
        if isinstance(inputs, list) and inputs and all(map(is_video_input, inputs)):
            return [self.video_extraction(video, **kwargs).to_json() for video in inputs]
        return super().__call__(inputs, *args, **kwargs)

    def video_extraction(self, inputs: Mapping, **kwargs: Any) -> VideoExtraction:
        """A whole video (`{"video", "subtitles"?, "video_id"?, "lang"?}`) cut into clips, each clip's row and
        extraction, and the time-anchored results (`timeline_m3d.VideoExtraction`). `kwargs` are the pipeline's
        parameters (class docstring), `batch_size` and `num_workers`."""
        preprocess, _, _ = self._sanitize_parameters(
            **{k: v for k, v in kwargs.items() if k not in ("batch_size", "num_workers")}
        )
        unknown = sorted(set(inputs) - set(VIDEO_FIELDS))
        if unknown:
            raise ValueError(
                f"video input {inputs['video']!r}: unknown fields {unknown}; a video input has {list(VIDEO_FIELDS)}"
            )
        params = {**self._preprocess_params, **preprocess}
        cut = {name: params[name] for name in VIDEO_PARAMETERS if name in params}
        clip_kwargs = {name: value for name, value in kwargs.items() if name not in VIDEO_PARAMETERS}
        return extract_video(
            self,
            inputs["video"],
            inputs.get("subtitles"),
            lang=inputs.get("lang") or params.get("lang") or self.processor.lang,
            video_id=inputs.get("video_id") or inputs.get("id"),
            **cut,
            **clip_kwargs,
        )

    def _to_row(
        self, inputs: Mapping, lang: str | None = None, protocol: str = "end_to_end", **video_parameters: Any
    ) -> dict:
        """The schema row of a clip input (`video_parameters` cut whole videos; a clip has none to cut). Under
        `"gold_pairs"` the input must carry its gold `entities` (a schema row): `ValueError` otherwise."""
        if protocol == "gold_pairs" and isinstance(inputs, Mapping) and "entities" not in inputs:
            where = f"input {inputs['id']!r}" if inputs.get("id") is not None else "input"
            raise ValueError(
                f"{where}: protocol 'gold_pairs' predicts chains and relations over the gold entities, and it has "
                "no 'entities' field (a schema row has them); use protocol 'end_to_end'"
            )
        return to_schema_row(inputs, lang or self.processor.lang)

    def _collate(self, rows: list[dict], protocol: str = "end_to_end") -> dict:
        """Batch rows with the processor; end to end, gold annotations are dropped so they cannot leak in."""
        if protocol == "end_to_end":
            model_rows = [{k: v for k, v in row.items() if k not in ANNOTATION_FIELDS} for row in rows]
        else:
            model_rows = rows
        return {"rows": rows, **self.processor(model_rows, return_tensors="pt")}

    def preprocess(self, inputs: Mapping, protocol: str = "end_to_end", **row_params) -> dict:
        return self._collate([self._to_row(inputs, protocol=protocol, **row_params)], protocol)

    def get_iterator(
        self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
    ):
        """Batched runs: rows are built one by one, then batched by the processor (the default collate pads
        plain 2-D tensors only)."""
        row_params = dict(preprocess_params)
        protocol = row_params.get("protocol", "end_to_end")
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
