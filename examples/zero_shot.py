#!/usr/bin/env python
"""Score a video LLM zero-shot on M³D: the LLM rows of the paper's Table III, with any transformers-native model.

    python examples/zero_shot.py --model Qwen/Qwen2.5-VL-7B-Instruct --dataset_dir M3D --lang en --split test \\
        [--num_frames 8] [--max_docs N] [--batch_size N] [--output_dir OUT]

Each clip's frames and subtitle document go to the model through its own classes (`AutoProcessor`,
`AutoModelForImageTextToText`, its chat template), with one instruction (`modeling_m3d.zero_shot.INSTRUCTIONS`) asking
for the four outputs as one JSON object, decoded greedily. The answers are parsed into the formats of `metrics/m3d`
and scored by it. OUT receives `prompt.json` (the instruction of the run's language, its parts and the frame input),
`generations.jsonl` (per clip: the frames shown, the rendered chat, the raw answer, what the parser dropped, the
prediction) and `all_results.json` with the keys of `train.py` (`test_ner_f1`, ..., `test_average_f1`), so that the
tables line up, plus the prompt and answer lengths and the parser's `dropped_*` counts.

The split and its missing-modality cut come from train.py's data flags (`--missing_modality_ratio 0` shows every clip
whole; `--modality_manifest` reuses a trained model's cut). An LLM finds its own entities, chains and relations, so
only the end-to-end protocol applies (DESIGN §3): gold pairs would need gold entities in the prompt.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import datasets
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor, HfArgumentParser

from modeling_m3d.data import DataArguments, load_splits, modality_manifest
from modeling_m3d.modality import drop_modality
from modeling_m3d.processing_m3d import subsample_indices
from modeling_m3d.schema import reference_document
from modeling_m3d.training import flatten_scores, results_table
from modeling_m3d.zero_shot import (
    EXAMPLES,
    FRAMES_SHOWN,
    INSTRUCTIONS,
    ISSUES,
    build_instruction,
    parse_answer,
)

EXAMPLES_DIR = Path(__file__).resolve().parent
REPO_ROOT = Path(__file__).resolve().parents[1]
PREFIXES = {"train": "train_", "validation": "eval_", "test": "test_"}  # train.py's keys per split
FRAME_LABELS = {"en": "Frame {}:", "zh": "第 {} 帧："}


@dataclass
class ZeroShotArguments:
    model: str = field(metadata={"help": "Hub name or local folder of an AutoModelForImageTextToText model."})
    split: str = field(
        default="test", metadata={"help": "train, validation or test (see train.py's split flags)."}
    )
    num_frames: int = field(
        default=8, metadata={"help": "Frames shown per clip, spread evenly (as the processor)."}
    )
    max_docs: int | None = field(default=None, metadata={"help": "Only the first N clips of the split."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Default: outputs/zero-shot/<model>-<lang>."}
    )
    batch_size: int = field(
        default=1, metadata={"help": "Clips per generate call (left padding), where the model allows."}
    )
    max_new_tokens: int = field(
        default=1024, metadata={"help": "Answer length cap (an M³D clip needs ~600 tokens)."}
    )
    frames_as: Literal["auto", "video", "images"] = field(
        default="auto",
        metadata={
            "help": "The frames as one video or as numbered images; auto: video when the "
            "processor has a video processor."
        },  # fmt: skip
    )
    dtype: str = field(
        default="auto", metadata={"help": "auto (the checkpoint's), bfloat16, float16 or float32."}
    )
    device_map: str | None = field(
        default="auto", metadata={"help": "Where the weights go (accelerate's big-model map)."}
    )


def load_clips(data_args: DataArguments, args: ZeroShotArguments, workdir: Path) -> datasets.Dataset:
    """The split's clips, each with its modality of train.py's missing-modality cut removed (`drop_modality`) and
    its frame count in a column `num_frames`.

    The frames stay encoded while the rows are rewritten (no image is decoded and encoded again)."""
    splits = load_splits(data_args, workdir)
    if args.split not in splits:
        raise ValueError(f"--split {args.split!r} is not in the data (splits: {sorted(splits)})")
    modes = modality_manifest(data_args, splits)[args.split]
    clips = splits[args.split]
    clips = clips.select(range(min(len(clips), args.max_docs or len(clips))))
    frames = clips.features["frames"]
    encoded = clips.cast_column("frames", datasets.List(datasets.Image(decode=False)))
    dropped = encoded.map(lambda row: _cut(row, modes[row["id"]]), desc="modality cut")
    return dropped.cast_column("frames", frames)


def _cut(row: dict, mode: str) -> dict:
    row = drop_modality(row, mode)
    return {**row, "num_frames": len(row["frames"])}


def load_model(args: ZeroShotArguments):
    """The model and its processor; left padding and a pad token, so that clips batch for generation."""
    model = AutoModelForImageTextToText.from_pretrained(
        args.model, dtype=args.dtype, device_map=args.device_map
    )
    processor = AutoProcessor.from_pretrained(args.model)
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(f"{args.model}: the processor has no chat template (needed to build the prompt)")
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model.eval(), processor


def frames_as_video(processor, frames_as: str) -> bool:
    if frames_as == "auto":
        return getattr(processor, "video_processor", None) is not None
    return frames_as == "video"


def chat(instruction: str, num_frames: int, as_video: bool, lang: str) -> list[dict]:
    """One user turn: the frames (one video, or images each after its number), then the instruction."""
    if num_frames == 0:
        visual = []
    elif as_video:
        visual = [{"type": "video"}]
    else:
        label = FRAME_LABELS[lang]
        visual = [
            part
            for k in range(num_frames)
            for part in ({"type": "text", "text": label.format(k)}, {"type": "image"})
        ]
    return [{"role": "user", "content": [*visual, {"type": "text", "text": instruction}]}]


def generate(model, processor, texts: list[str], frames: list[list], as_video: bool, max_new_tokens: int):
    """Greedy answers of one batch (all clips with frames, or all without), with the prompt and answer lengths in
    tokens."""
    visual = {} if not frames[0] else {"videos": frames} if as_video else {"images": frames}
    inputs = processor(text=texts, return_tensors="pt", padding=True, **visual).to(model.device)
    inputs = inputs.to(model.dtype)  # floating inputs (pixels) only
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    answers = output[:, inputs["input_ids"].shape[1] :]
    return (
        processor.batch_decode(answers, skip_special_tokens=True),
        inputs["attention_mask"].sum(1).tolist(),
        (answers != processor.tokenizer.pad_token_id).sum(1).tolist(),
    )


def run(model, processor, clips: datasets.Dataset, args: ZeroShotArguments, lang: str) -> list[dict]:
    """One record per clip (in split order): id, frames shown, prompt and answer lengths (tokens), the rendered
    chat and the raw answer. A batch holds clips with frames only, or clips without only."""
    as_video = frames_as_video(processor, args.frames_as)
    shown = [subsample_indices(count, args.num_frames).tolist() for count in clips["num_frames"]]
    texts = [
        processor.apply_chat_template(
            chat(build_instruction(tokens, len(indices), lang), len(indices), as_video, lang),
            add_generation_prompt=True,
            tokenize=False,
        )
        for tokens, indices in zip(clips["tokens"], shown, strict=True)
    ]
    groups = ([i for i, s in enumerate(shown) if s], [i for i, s in enumerate(shown) if not s])
    size = args.batch_size
    batches = [group[start : start + size] for group in groups for start in range(0, len(group), size)]
    records: list[dict] = [{} for _ in texts]
    for batch in tqdm(batches, desc="generate"):
        rows = [clips[i] for i in batch]
        frames = [
            [row["frames"][k].convert("RGB") for k in shown[i]] for i, row in zip(batch, rows, strict=True)
        ]
        answers, prompt_tokens, answer_tokens = generate(
            model, processor, [texts[i] for i in batch], frames, as_video, args.max_new_tokens
        )
        for i, row, answer, n_prompt, n_answer in zip(
            batch, rows, answers, prompt_tokens, answer_tokens, strict=True
        ):
            records[i] = {"id": row["id"], "frames": shown[i], "prompt_tokens": n_prompt,
                          "answer_tokens": n_answer, "prompt": texts[i], "answer": answer}  # fmt: skip
    return records


def score(clips: datasets.Dataset, records: list[dict], prefix: str) -> tuple[dict, Counter]:
    """Parse every answer, score the predictions with `metrics/m3d`; fill each record's `dropped` and
    `prediction`; return the flat scores (train.py's keys) and the summed parser counts."""
    dropped: Counter = Counter()
    predictions = []
    for row, record in zip(clips, records, strict=True):
        prediction, issues = parse_answer(record["answer"], row["tokens"], record["frames"])
        record.update(dropped=dict(issues), prediction=prediction)
        dropped.update(issues)
        predictions.append(prediction)
    references = [reference_document(row) for row in clips]
    metric = load_metric("m3d")
    return flatten_scores(metric.compute(predictions=predictions, references=references), prefix), dropped


def load_metric(name: str):
    """`evaluate.load` of the metric module `metrics/<name>`.

    The `evaluate` library is imported with this folder off `sys.path`: here, `import evaluate` would find the script
    `examples/evaluate.py` instead.
    """
    path = sys.path[:]
    sys.path[:] = [entry for entry in path if Path(entry or ".").resolve() != EXAMPLES_DIR]
    try:
        evaluate = importlib.import_module("evaluate")
    finally:
        sys.path[:] = path
    return evaluate.load(str(REPO_ROOT / "metrics" / name))


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder: a reader never sees half a file."""
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp"
    ) as file:
        file.write(text)
    os.replace(file.name, path)


def main() -> None:
    data_args, args = HfArgumentParser((DataArguments, ZeroShotArguments)).parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    lang = data_args.lang
    output_dir = Path(args.output_dir or f"outputs/zero-shot/{Path(args.model).name}-{lang}")
    output_dir.mkdir(parents=True, exist_ok=True)
    clips = load_clips(data_args, args, output_dir)
    model, processor = load_model(args)
    start = time.time()
    records = run(model, processor, clips, args, lang)
    seconds = time.time() - start
    prefix = PREFIXES[args.split]
    results, dropped = score(clips, records, prefix)
    print(f"{args.split} (end_to_end, {args.model}, zero-shot)\n{results_table(results, prefix)}")
    results.update(
        protocol="end_to_end", model=args.model, documents=len(records), generation_seconds=round(seconds, 1),
        mean_prompt_tokens=sum(r["prompt_tokens"] for r in records) / max(len(records), 1),
        mean_answer_tokens=sum(r["answer_tokens"] for r in records) / max(len(records), 1),
        **{f"dropped_{issue}": dropped[issue] for issue in ISSUES},
    )  # fmt: skip
    frames_as = "video" if frames_as_video(processor, args.frames_as) else "images"
    prompt = {"lang": lang, "instruction": INSTRUCTIONS[lang].template, "frames_shown": FRAMES_SHOWN[lang],
              "example": EXAMPLES[lang], "frame_labels": FRAME_LABELS[lang], "frames_as": frames_as}  # fmt: skip
    write_atomic(output_dir / "prompt.json", json.dumps(prompt, ensure_ascii=False, indent=2))
    write_atomic(
        output_dir / "generations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    )
    write_atomic(output_dir / "all_results.json", json.dumps(results, indent=2))
    print(f"wrote {output_dir / 'all_results.json'}, generations.jsonl and prompt.json")


if __name__ == "__main__":
    main()
