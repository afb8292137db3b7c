"""Benchmark of the M³D stack (not a test): what the design promises about cost, measured.

For the tiny model and for paper shapes (Longformer-base-sized text encoder, d_h 768, 12 layers, ~450 pieces;
ViT-base at 224 px, 8 frames; random weights built from configs; batch 1) it measures

- the training step (forward + backward) on a real document of the release's dev split;
- the pair scoring cost: the step with 17 entities in 9 chains (the dev average) against 170 in 90; pairs
  are scored as batched tensors, so the ratio should stay well under 1.25;
- the frame encoder: all frames of a clip in one batched call against one call per frame;
- the processor's throughput (rows/s) on real dev rows with synthetic frames.

    python examples/benchmark.py --output benchmark.json
    python examples/benchmark.py --quick            # tiny shapes, one repeat

It prints a table and, with --output, writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import LongformerConfig, ViTConfig, ViTImageProcessorPil

from modeling_m3d import M3DConfig, M3DModel, M3DProcessor
from modeling_m3d.release import iter_examples
from modeling_m3d.schema import join_tokens
from modeling_m3d.testing import build_tokenizer, tiny_model_and_processor

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEV_FILE = REPO.parent / "shared" / "m3d" / "data" / "en" / "dev_en.json"
PAPER_FRAMES = 8
PAPER_PIECES = 450
ENTITY_SETTINGS = {"17 entities / 9 chains": (17, 9, 7), "170 entities / 90 chains": (170, 90, 70)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev_file", type=Path, default=DEFAULT_DEV_FILE, help="release dev_en.json")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--repeats", type=int, help="timed repeats per measurement, median kept (3; quick: 1)"
    )
    parser.add_argument(
        "--processor_rows", type=int, default=50, help="dev rows for the processor throughput"
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes only, one repeat, few rows")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: 1 on a CPU, where the clock is CPU time; torch's choice otherwise)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.quick:
        args.processor_rows = min(args.processor_rows, 10)
    return args


# ------------------------------------------------------------------------------------------------------- data


def load_dev_rows(dev_file: Path) -> list[dict]:
    """Schema rows of the release file, converted as the builder does (no frames)."""
    if not dev_file.is_file():
        raise SystemExit(f"benchmark: {dev_file} not found; pass --dev_file path/to/dev_en.json")
    return list(iter_examples(dev_file, "en"))


def synthetic_frames(count: int, seed: int, size: tuple[int, int] = (640, 360)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)
    ]


def with_video(row: dict, frames: list[Image.Image]) -> dict:
    """The row with frames and one PER box per frame."""
    boxes = [{"frame": i, "type": "PER", "box": [0.5, 0.5, 0.3, 0.4]} for i in range(len(frames))]
    return {**row, "frames": frames, "groundings": boxes}


def with_entities(
    row: dict, entities: int, chains: int, relations: int, relation_type: str, seed: int
) -> dict:
    """The row with ``entities`` one-word mentions spread over the text, in ``chains`` chains, and relations."""
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(len(row["tokens"]), size=entities, replace=False))
    mentions = [
        {"start": int(s), "end": int(s) + 1, "type": "PER", "chain": i % chains} for i, s in enumerate(starts)
    ]
    pairs = rng.choice(chains * chains, size=relations, replace=False)
    links = [{"subject": int(p // chains), "object": int(p % chains), "type": relation_type} for p in pairs]
    return {
        **row,
        "entities": mentions,
        "chains": [{"id": f"L{i}", "type": "PER"} for i in range(chains)],
        "relations": [link for link in links if link["subject"] != link["object"]],
    }


def document_near(rows: list[dict], processor: M3DProcessor, pieces: int) -> dict:
    """The dev row whose piece count is closest to ``pieces``."""
    counts = [len(processor.tokenizer(row["tokens"], is_split_into_words=True)["input_ids"]) for row in rows]
    return rows[int(np.argmin(np.abs(np.array(counts) - pieces)))]


# ----------------------------------------------------------------------------------------------------- models


def paper_processor(texts: list[str]) -> M3DProcessor:
    """ViT-base's image processor (224 px) and a tokenizer built locally from ``texts`` (no download; its pieces
    differ slightly from Longformer's BPE)."""
    return M3DProcessor(ViTImageProcessorPil(), build_tokenizer(texts, "en"), max_frames=PAPER_FRAMES)


def paper_model() -> M3DModel:
    """Paper shapes, random weights: Longformer-base-4096-sized text encoder, ViT-base 224/16, d_vae 64, l_p 64."""
    text_config = LongformerConfig(vocab_size=50265, max_position_embeddings=4098, attention_window=512)
    return M3DModel(M3DConfig(text_config=text_config, vision_config=ViTConfig()))


# ----------------------------------------------------------------------------------------------------- timing


def clock(device: torch.device) -> Callable[[], float]:
    """Wall time on an accelerator; on a CPU the process's CPU time, which a shared machine's other jobs disturb
    far less than wall time. It counts all threads, waiting ones included, so on a CPU the benchmark runs on one
    thread by default: with torch's default of 2 threads on a busy 2-core machine, one tiny step measured 7.6 s
    of CPU time for 0.2 s of wall time."""
    return time.perf_counter if device.type != "cpu" else time.process_time


def median_seconds(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median time of each function over ``repeats`` runs after one warm-up run, the functions interleaved so
    that drifts of the machine's load hit them alike."""
    now = clock(device)
    times = {name: [] for name in fns}
    for repeat in range(repeats + 1):
        for name, fn in fns.items():
            start = now()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if repeat:
                times[name].append(now() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def training_step(model: M3DModel, batch) -> Callable[[], None]:
    def step() -> None:
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def measure_model(model: M3DModel, processor: M3DProcessor, row: dict, args, device: torch.device) -> dict:
    """Step time at 17 and 170 entities, and the frame encoder batched vs per frame."""
    model.to(device).train()
    relation_type = processor.relation_types[0]
    batches = {
        name: processor([with_entities(row, *sizes, relation_type, args.seed)]).to(device)
        for name, sizes in ENTITY_SETTINGS.items()
    }
    steps = median_seconds(
        {name: training_step(model, batch) for name, batch in batches.items()}, args.repeats, device
    )
    first, second = steps.values()
    batch = next(iter(batches.values()))
    frames = batch["pixel_values"][batch["frame_mask"]]
    with torch.no_grad():
        vision = median_seconds(
            {
                "batched": lambda: model.vision_model(pixel_values=frames),
                "per_frame": lambda: [model.vision_model(pixel_values=frame[None]) for frame in frames],
            },
            args.repeats,
            device,
        )
    return {
        "pieces": int(batch["input_ids"].shape[1]),
        "words": int(batch["word_mask"].sum()),
        "frames": int(frames.shape[0]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_seconds": steps,
        "step_ratio_170_vs_17": second / first,
        "vision_batched_seconds": vision["batched"],
        "vision_per_frame_seconds": vision["per_frame"],
        "vision_speedup": vision["per_frame"] / vision["batched"],
    }


def measure_processor(processor: M3DProcessor, rows: list[dict], seed: int) -> dict:
    """Rows per second through the processor, one row per call (the collator of a batch-1 DataLoader)."""
    frames = synthetic_frames(PAPER_FRAMES, seed)
    video_rows = [with_video(row, frames) for row in rows]
    now = clock(torch.device("cpu"))
    start = now()
    for row in video_rows:
        processor([row])
    seconds = now() - start
    return {
        "rows": len(rows),
        "frames_per_row": PAPER_FRAMES,
        "seconds": seconds,
        "rows_per_second": len(rows) / seconds,
    }


# ------------------------------------------------------------------------------------------------------ report


def print_table(results: dict) -> None:
    shapes = [name for name in ("tiny", "paper") if name in results]
    rows = [(f"measurement ({results['clock']}, s)", *shapes)]
    rows += [(f"step fwd+bwd, {name}", *(f"{results[s]['step_seconds'][name]:.3f}" for s in shapes))
             for name in ENTITY_SETTINGS]  # fmt: skip
    for label, key, fmt in [
        ("step ratio 170 vs 17 entities", "step_ratio_170_vs_17", "{:.3f}"),
        ("vision, one batched call", "vision_batched_seconds", "{:.3f}"),
        ("vision, one call per frame", "vision_per_frame_seconds", "{:.3f}"),
        ("vision speed-up of batching", "vision_speedup", "{:.1f}x"),
        ("pieces", "pieces", "{}"),
        ("words", "words", "{}"),
        ("frames", "frames", "{}"),
    ]:
        rows.append((label, *(fmt.format(results[s][key]) for s in shapes)))
    processor = results["processor"]
    rows.append(
        (
            f"processor rows/s ({processor['frames_per_row']} frames at 224 px)",
            f"{processor['rows_per_second']:.1f}",
        )
    )
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    rows = load_dev_rows(args.dev_file)
    texts = [join_tokens(row["tokens"], "en") for row in rows]
    frames = synthetic_frames(PAPER_FRAMES, args.seed)
    results = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },  # fmt: skip
        "repeats": args.repeats,
        "clock": "wall time" if device.type != "cpu" else "process CPU time",
    }
    model, processor = tiny_model_and_processor("en", texts=texts)
    row = with_video(document_near(rows, processor, PAPER_PIECES), frames)
    results["tiny"] = measure_model(model, processor, row, args, device)
    processor = paper_processor(texts)
    if not args.quick:
        row = with_video(document_near(rows, processor, PAPER_PIECES), frames)
        results["paper"] = measure_model(paper_model(), processor, row, args, device)
    results["processor"] = measure_processor(processor, rows[: args.processor_rows], args.seed)
    print_table(results)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
