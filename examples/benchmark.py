"""Benchmark of the M³D stack (not a test): the costs the design promises, measured against targets.

Random weights built from configs, batch 1, one warm-up run then the median of the repeats. Paper shapes:
Longformer-base-sized text encoder (d_h 768, 12 layers) on a real dev document of 450–512 pieces with ~20
entities in ~8 chains and ~6 relations; ViT-base (224 px, patch 16) on 8 frames with 3 boxes; the paper's
DFFM + MMCM with all four heads and losses. The top-level figures of the JSON file:

- `fusion_overhead`: full training step (forward + backward) / the encoders alone on the same inputs
  (forward + backward through the hidden states the model reads) − 1. Target ≤ 0.10.
- `fusion_overhead_tiny`: the same with 2-layer, 128-wide encoders (what users of small encoders pay).
- `pair_scaling`: full step with 200 entities in 40 chains / with 20 entities in 4 chains, same text. Target
  ≤ 1.25.
- `crf_share`: (CRF loss forward + backward + Viterbi decoding) / full step. Target ≤ 0.05.
- `preprocess_rows_per_s`: the processor on real dev rows with 8 frames (640×360) each, one row per call.
- `eval_rows_per_s`: `predict` (end to end) + post-processing per row, then the metrics over all rows.
- `ingest_frames_per_s`: frames kept per second when ingesting a generated 10-minute 640×360 24-fps video
  (one frame per 24 of the source).
- `memory_table`: step time and peak memory against text length (512 … 4,096 pieces) and frames (8, 16, 32);
  CPU: peak resident-memory growth during the step (sampled every 0.5 ms); CUDA: `max_memory_allocated`.

    python examples/benchmark.py --output benchmark.json                  # CPU, one thread, paper shapes
    python examples/benchmark.py --device cuda --output benchmark.json    # bf16 autocast
    python examples/benchmark.py --quick --output quick.json              # tiny shapes only, small table

On a CPU the clock is the process's CPU time (see `clock`); on CUDA, wall time after a synchronisation.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import LongformerConfig, PreTrainedTokenizerFast, ViTConfig, ViTImageProcessorPil

from modeling_m3d import M3DConfig, M3DModel, M3DProcessor
from modeling_m3d.benchmark_video_m3d import frames_kept_per_second, write_test_video
from modeling_m3d.decoding_m3d import viterbi_decode
from modeling_m3d.loss_m3d import crf_negative_log_likelihood
from modeling_m3d.release import iter_examples
from modeling_m3d.schema import GROUNDING_TYPES, join_tokens, reference_document
from modeling_m3d.scoring import m3d_scores
from modeling_m3d.testing import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEV_FILE = REPO.parent / "shared" / "m3d" / "data" / "en" / "dev_en.json"
TARGETS = {"fusion_overhead": 0.10, "pair_scaling": 1.25, "crf_share": 0.05}  # upper bounds
# The paper's document: its length in pieces, its annotations; boxes over its 8 frames.
PIECES_RANGE = (450, 512)
DOCUMENT = {"entities": 20, "chains": 8, "relations": 6}
FRAMES, BOXES = 8, 3
PAIR_SETTINGS = {"20 entities / 4 chains": (20, 4, 6), "200 entities / 40 chains": (200, 40, 60)}
# Encoder shapes: (width, layers). The text encoder is Longformer-sized, the frame encoder ViT at 224 px.
SHAPES = {"paper": (768, 12), "tiny": (128, 2)}
TABLE = {"pieces": (512, 1024, 2048, 4096), "frames": (8, 16, 32)}
QUICK_TABLE = {"pieces": (512, 1024), "frames": (8, 16)}
VIDEO_SIZE = (640, 360)
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev_file", type=Path, default=DEFAULT_DEV_FILE, help="release dev_en.json")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda (bf16 autocast)")
    parser.add_argument("--repeats", type=int, help="timed repeats per step, median kept (3; quick: 1)")
    parser.add_argument("--table_repeats", type=int, default=1, help="timed repeats per memory-table cell")
    parser.add_argument("--processor_rows", type=int, help="dev rows for the processor throughput (50)")
    parser.add_argument("--eval_rows", type=int, help="dev rows for the evaluation throughput (20)")
    parser.add_argument("--video_seconds", type=int, help="length of the ingested video (600; quick: 30)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes only, a 2x2 table, few rows")
    parser.add_argument("--table_shape", choices=tuple(SHAPES), help="encoders of the memory table (paper)")
    parser.add_argument(
        "--table_pieces", type=int, nargs="+", help=f"text lengths of the table {TABLE['pieces']}"
    )
    parser.add_argument(
        "--table_frames", type=int, nargs="+", help=f"frame counts of the table {TABLE['frames']}"
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: 1 on a CPU, where the clock is CPU time)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    defaults = {
        "repeats": (3, 1),
        "processor_rows": (50, 5),
        "eval_rows": (20, 3),
        "video_seconds": (600, 30),
        "table_shape": ("paper", "tiny"),
        "table_pieces": (TABLE["pieces"], QUICK_TABLE["pieces"]),
        "table_frames": (TABLE["frames"], QUICK_TABLE["frames"]),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


# ------------------------------------------------------------------------------------------------------- data


def load_dev_rows(dev_file: Path) -> list[dict]:
    """Schema rows of the release file, converted as the builder does (no frames)."""
    if not dev_file.is_file():
        raise SystemExit(f"benchmark: {dev_file} not found; pass --dev_file path/to/dev_en.json")
    return list(iter_examples(dev_file, "en"))


def synthetic_frames(count: int, seed: int, size: tuple[int, int] = VIDEO_SIZE) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)
    ]


def with_video(row: dict, frames: list[Image.Image]) -> dict:
    """The row with `frames` and `BOXES` boxes spread over them, of every grounding type in turn."""
    boxes = [
        {"frame": i * len(frames) // BOXES, "type": GROUNDING_TYPES[i % len(GROUNDING_TYPES)],
         "box": [0.3 + 0.2 * i, 0.5, 0.2, 0.4]}
        for i in range(BOXES)
    ]  # fmt: skip
    return {**row, "frames": frames, "groundings": boxes}


def with_entities(
    row: dict, entities: int, chains: int, relations: int, relation_type: str, seed: int
) -> dict:
    """The row with `entities` one-word mentions spread over the text, in `chains` chains, and `relations`
    relations between distinct chains."""
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(len(row["tokens"]), size=entities, replace=False))
    mentions = [
        {"start": int(s), "end": int(s) + 1, "type": "PER", "chain": i % chains} for i, s in enumerate(starts)
    ]
    pairs = [(s, o) for s in range(chains) for o in range(chains) if s != o]
    chosen = rng.choice(len(pairs), size=relations, replace=False)
    return {
        **row,
        "entities": mentions,
        "chains": [{"id": f"L{i}", "type": "PER"} for i in range(chains)],
        "relations": [{"subject": pairs[p][0], "object": pairs[p][1], "type": relation_type} for p in chosen],
    }


def piece_count(tokenizer: PreTrainedTokenizerFast, tokens: list[str]) -> int:
    return len(tokenizer(tokens, is_split_into_words=True)["input_ids"])


def paper_document(rows: list[dict], tokenizer: PreTrainedTokenizerFast) -> dict:
    """The dev row of `PIECES_RANGE` pieces (any row if none is) closest to `DOCUMENT`'s annotations (relative
    distance summed over entities, chains and relations)."""
    pieces = [piece_count(tokenizer, row["tokens"]) for row in rows]
    fitting = [
        row for row, count in zip(rows, pieces, strict=True) if PIECES_RANGE[0] <= count <= PIECES_RANGE[1]
    ]

    def distance(row: dict) -> float:
        return sum(abs(len(row[key]) - target) / target for key, target in DOCUMENT.items())

    return min(fitting or rows, key=distance)


def text_of_pieces(rows: list[dict], tokenizer: PreTrainedTokenizerFast, pieces: int) -> list[str]:
    """The longest prefix of the dev documents' words, concatenated, that takes at most `pieces` pieces."""
    words = [word for row in rows for word in row["tokens"]]
    word_ids = tokenizer(words[: 2 * pieces], is_split_into_words=True).word_ids()
    if len(word_ids) < pieces:
        raise SystemExit(f"benchmark: the dev documents hold fewer than {pieces} pieces")
    return words[: word_ids[pieces - 2]]  # the pieces [CLS] … [SEP]; the cut word would spill over


# ----------------------------------------------------------------------------------------------------- models


def benchmark_processor(tokenizer: PreTrainedTokenizerFast) -> M3DProcessor:
    """ViT-base's image processor (224 px) and a tokenizer built locally from the dev text (no download; its
    pieces differ slightly from Longformer's BPE); up to 32 frames per row, as the memory table needs."""
    return M3DProcessor(ViTImageProcessorPil(), tokenizer, max_frames=max(TABLE["frames"]))


def benchmark_model(shape: str, vocab_size: int) -> M3DModel:
    """Random weights: a Longformer-4096-like text encoder and a ViT 224/16 frame encoder of the shape's width
    and depth (64-wide heads), the paper's defaults otherwise (DFFM + MMCM, d_vae 64, l_p 64)."""
    width, layers = SHAPES[shape]
    common = {"hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": width // 64,
              "intermediate_size": 4 * width}  # fmt: skip
    text_config = LongformerConfig(
        vocab_size=max(vocab_size, 50265 if shape == "paper" else 0),
        max_position_embeddings=4098,
        attention_window=512,
        **common,
    )
    return M3DModel(M3DConfig(text_config=text_config, vision_config=ViTConfig(**common)))


# ----------------------------------------------------------------------------------------------------- timing


def clock(device: torch.device) -> Callable[[], float]:
    """Wall time on an accelerator; on a CPU the process's CPU time, which a shared machine's other jobs disturb
    far less than wall time. It counts all threads, waiting ones included, so on a CPU the benchmark runs on one
    thread by default: with torch's default of 2 threads on a busy 2-core machine, one tiny step measured 7.6 s
    of CPU time for 0.2 s of wall time."""
    return time.perf_counter if device.type != "cpu" else time.process_time


def precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median time of each function over `repeats` runs after one warm-up run, the functions interleaved so
    that drifts of the machine's load hit them alike."""
    now = clock(device)
    times = {name: [] for name in fns}
    for repeat in range(repeats + 1):
        for name, fn in fns.items():
            start = now()
            fn()
            synchronize(device)
            if repeat:
                times[name].append(now() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def training_step(model: M3DModel, batch, device: torch.device) -> Callable[[], None]:
    """Forward with all four heads and losses (Eq. 24), backward."""

    def step() -> None:
        with precision(device):
            loss = model(**batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def encoder_step(model: M3DModel, batch, device: torch.device) -> Callable[[], None]:
    """The text and frame encoders alone on the same inputs, forward and backward through every hidden state
    the level features read (Eq. 5–7)."""

    def step() -> None:
        with precision(device):
            text = model.text_model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=True,
            )
            frames = model.vision_model(
                pixel_values=batch["pixel_values"][batch["frame_mask"]], output_hidden_states=True
            )
            loss = sum(state.float().mean() for state in (*text.hidden_states[1:], *frames.hidden_states[1:]))
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def crf_step(model: M3DModel, batch, device: torch.device) -> Callable[[], None]:
    """The CRF alone on the model's emissions for the batch: its loss (Eq. 19) forward and backward, and
    Viterbi decoding."""
    with torch.no_grad(), precision(device):
        emissions = model(**batch).ner_logits.float()
    emissions.requires_grad_()
    crf = model.entity_head.crf

    def step() -> None:
        crf_negative_log_likelihood(crf, emissions, batch["word_mask"], batch["ner_labels"]).backward()
        viterbi_decode(crf, emissions.detach(), batch["word_mask"])
        emissions.grad = None
        model.zero_grad(set_to_none=True)

    return step


def return_freed_memory() -> None:
    """Tell glibc's allocator to map every block of 64 KiB or more on its own and unmap it when freed, so that
    the resident set size follows the live tensors (by default freed blocks stay in the heap, and the RSS of a
    step says little). Called before any tensor work on a CPU; without glibc, a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)


class PeakMemory:
    """Peak memory growth in bytes over a block: CUDA's `max_memory_allocated`; on a CPU the resident set size
    sampled every 0.5 ms by a thread (meaningful after `return_freed_memory`)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _resident(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self._page

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base = self.top = self._resident()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.top = max(self.top, self._resident())
            time.sleep(0.0005)

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
            return
        self.running = False
        self.thread.join()
        self.peak = max(self.top, self._resident()) - self.base


# ---------------------------------------------------------------------------------------------- measurements


def measure_shape(model: M3DModel, processor: M3DProcessor, document: dict, args, device) -> dict:
    """Full step, encoders alone, CRF and the two pair settings on one document, interleaved."""
    model.to(device).train()
    relation_type = processor.relation_types[0]
    batches = {"document": processor([document]).to(device)}
    for name, sizes in PAIR_SETTINGS.items():
        batches[name] = processor([with_entities(document, *sizes, relation_type, args.seed)]).to(device)
    steps = {
        "full": training_step(model, batches["document"], device),
        "encoders": encoder_step(model, batches["document"], device),
        "crf": crf_step(model, batches["document"], device),
        **{name: training_step(model, batches[name], device) for name in PAIR_SETTINGS},
    }
    seconds = median_seconds(steps, args.repeats, device)
    small, large = (seconds[name] for name in PAIR_SETTINGS)
    batch = batches["document"]
    return {
        "pieces": int(batch["input_ids"].shape[1]),
        "words": int(batch["word_mask"].sum()),
        "entities": len(document["entities"]),
        "chains": len(document["chains"]),
        "relations": len(document["relations"]),
        "frames": int(batch["frame_mask"].sum()),
        "boxes": len(document["groundings"]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_seconds": seconds,
        "fusion_overhead": seconds["full"] / seconds["encoders"] - 1,
        "pair_scaling": large / small,
        "crf_share": seconds["crf"] / seconds["full"],
    }


def memory_table(model: M3DModel, processor: M3DProcessor, rows: list[dict], args, device) -> list[dict]:
    """Step time (median of `--table_repeats` after a warm-up) and peak memory (one more step), per text length
    and frame count; entities, chains and relations as the paper's document."""
    model.to(device).train()
    cells = []
    for pieces in args.table_pieces:
        words = text_of_pieces(rows, processor.tokenizer, pieces)
        row = {"id": f"text_{pieces}", "tokens": words}
        row = with_entities(row, *DOCUMENT.values(), processor.relation_types[0], args.seed)
        for frames in args.table_frames:
            batch = processor([with_video(row, synthetic_frames(frames, args.seed))]).to(device)
            step = training_step(model, batch, device)
            seconds = median_seconds({"step": step}, args.table_repeats, device)["step"]
            with PeakMemory(device) as memory:
                step()
            cells.append({"pieces": int(batch["input_ids"].shape[1]), "frames": frames, "step_seconds": seconds,
                          "peak_memory_mib": memory.peak / 2**20})  # fmt: skip
            print(f"  table: {cells[-1]}", flush=True)
    return cells


def preprocess_throughput(processor: M3DProcessor, rows: list[dict], device, seed: int) -> float:
    """Rows per second through the processor, one row per call (a batch-1 DataLoader's collator), 8 frames
    of 640×360 each."""
    frames = synthetic_frames(FRAMES, seed)
    video_rows = [with_video(row, frames) for row in rows]
    now = clock(device)
    start = now()
    for row in video_rows:
        processor([row])
    return len(rows) / (now() - start)


def eval_throughput(model: M3DModel, processor: M3DProcessor, rows: list[dict], device, seed: int) -> float:
    """Rows per second through `predict` (end to end, with post-processing), one row per batch, then the four
    tasks' metrics over all rows; preprocessing is left out."""
    model.to(device).eval()
    frames = synthetic_frames(FRAMES, seed)
    video_rows = [with_video(row, frames) for row in rows]
    batches = [processor([row]).to(device) for row in video_rows]
    references = [reference_document(row, processor.relation_types) for row in video_rows]
    with precision(device):
        model.predict(**batches[0])  # warm-up
    now = clock(device)
    start = now()
    predictions = []
    for batch in batches:
        with precision(device):
            predictions += model.predict(**batch)
    m3d_scores(predictions, references)
    return len(rows) / (now() - start)


def ingest_throughput(seconds: int) -> tuple[float, int]:
    """Frames kept per second of wall time when ingesting a generated `seconds`-long 640×360, 24 fps H.264 video
    (`benchmark_video_m3d`: sampled as `ingest_m3d` does, one frame every 24 source frames; writing the video is
    not timed)."""
    with tempfile.TemporaryDirectory() as folder:
        video = write_test_video(
            Path(folder) / "video.mp4", seconds=seconds, width=VIDEO_SIZE[0], height=VIDEO_SIZE[1]
        )
        result = frames_kept_per_second(video)
        return result["frames_per_second"], result["frames"]


# ------------------------------------------------------------------------------------------------------ report


def targets_met(results: dict) -> dict[str, bool]:
    return {name: results[name] <= bound for name, bound in TARGETS.items()}


def print_report(results: dict) -> None:
    print(f"clock: {results['clock']}; shapes: {results['shapes']}")
    for name in (*TARGETS, "fusion_overhead_tiny", "preprocess_rows_per_s", "eval_rows_per_s",
                 "ingest_frames_per_s"):  # fmt: skip
        bound = ""
        if name in TARGETS:
            bound = f"  (target <= {TARGETS[name]}: {'met' if results['targets_met'][name] else 'MISSED'})"
        print(f"{name:24} {results[name]:10.3f}{bound}")
    print(f"{'pieces':>8} {'frames':>6} {'step s':>8} {'peak MiB':>9}")
    for cell in results["memory_table"]:
        step = f"{cell['step_seconds']:.3f}" if cell["step_seconds"] is not None else "-"
        print(f"{cell['pieces']:>8} {cell['frames']:>6} {step:>8} {cell['peak_memory_mib']:>9.0f}")


@contextlib.contextmanager
def announced(what: str) -> Iterator[None]:
    start = time.perf_counter()
    print(f"benchmark: {what} …", flush=True)
    yield
    print(f"benchmark: {what} done in {time.perf_counter() - start:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if device.type == "cpu":
        return_freed_memory()
    rows = load_dev_rows(args.dev_file)
    tokenizer = build_tokenizer([join_tokens(row["tokens"], "en") for row in rows], "en")
    processor = benchmark_processor(tokenizer)
    document = with_video(paper_document(rows, tokenizer), synthetic_frames(FRAMES, args.seed))
    shape = "tiny" if args.quick else "paper"
    results = {
        "device": str(device),
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },  # fmt: skip
        "repeats": args.repeats,
        "clock": "wall time" if device.type != "cpu" else "process CPU time",
        "shapes": shape,
        "targets": TARGETS,
    }
    measured = {}
    for name in dict.fromkeys(("tiny", shape)):
        with announced(f"{name} shapes"):
            model = benchmark_model(name, len(tokenizer))
            measured[name] = measure_shape(model, processor, document, args, device)
    results["fusion_overhead_tiny"] = measured["tiny"]["fusion_overhead"]
    results.update({name: measured[shape][name] for name in TARGETS})
    with announced("throughputs"):
        results["preprocess_rows_per_s"] = preprocess_throughput(
            processor, rows[: args.processor_rows], device, args.seed
        )
        results["eval_rows_per_s"] = eval_throughput(
            model, processor, rows[: args.eval_rows], device, args.seed
        )
        results["ingest_frames_per_s"], kept = ingest_throughput(args.video_seconds)
    with announced(f"memory table, {args.table_shape} shapes"):
        if args.table_shape != shape:
            model = benchmark_model(args.table_shape, len(tokenizer))
        results["memory_table_shapes"] = args.table_shape
        results["memory_table"] = memory_table(model, processor, rows, args, device)
    results["targets_met"] = targets_met(results)
    results["details"] = {**measured, "ingest": {"video_seconds": args.video_seconds,
                          "size": VIDEO_SIZE, "fps": 24, "frames_kept": kept},
                          "rows": {"preprocess": args.processor_rows, "eval": args.eval_rows}}  # fmt: skip
    print_report(results)
    if args.output:
        temporary = args.output.with_suffix(args.output.suffix + ".tmp")
        temporary.write_text(json.dumps(results, indent=2) + "\n")
        temporary.replace(args.output)
    return results


if __name__ == "__main__":
    main()
