#!/usr/bin/env python
"""Reproduce the paper's Tables III and IV and Figs. 8 and 9: train and evaluate every system, language and seed.

    python examples/reproduce.py                                  # the whole grid: tiny encoders, synthetic data
    python examples/reproduce.py --encoders paper --dataset_dir M3D      # the paper's encoders and recipe
    python examples/reproduce.py --systems m3d vivit-ts --langs en --seeds 1 2 3 \\
        --prompt_lengths 16 64 --missing_modality_ratios 0.2 0.6 --num_train_epochs 5

Systems are the presets of `modeling_m3d.systems`. Flags this script does not know go to every run of
`examples/train.py` (e.g. `--dataset_dir`, `--num_train_epochs`, `--protocol`); without `--dataset_dir` or
`--dataset_name`, one synthetic release per language is written under OUTPUT/data. Each run is train.py's `train` in
this process, in OUTPUT/runs/<system>/<lang>/<setting>/seed-<n>, and records its arguments (run_args.json): a run
whose results (all_results.json) exist for the same arguments is not redone, so an interrupted grid resumes.

The grid: Table III (`videomae-os`, `videomae-ts`, `vivit-os`, `vivit-ts`, `m3d`, and `text-crf` when asked for),
Table IV (`m3d`, `m3d-no-mmcm`, `m3d-no-dffm`), Fig. 8 (`m3d` at each prompt length l_p) and Fig. 9 (`m3d` and
`m3d-no-mmcm` at each missing-modality ratio), for the systems asked for; each figure also shows the tables' runs at
the default value. It writes OUTPUT/table3.md and .json and table4 (F1 per task in %, the variance over seeds in %²
in brackets, and the average F1, in the paper's layout), and OUTPUT/fig8.png and fig9.png with their data in .json.
Scores are on the test split (validation when there is none) under train.py's protocol (default: gold pairs, the
paper's).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import datasets
import transformers
from train import (
    DataArguments,
    ModelArguments,
    TrainArguments,
    apply_system,
    build_accelerator,
    resolve_recipe,
    train,
)
from transformers import HfArgumentParser

from modeling_m3d.schema import LANGUAGES, TASKS
from modeling_m3d.synthetic import write_synthetic_release
from modeling_m3d.systems import SYSTEMS, TABLE3, TABLE4, get_system
from modeling_m3d.training import aggregate_seeds

COLUMNS = {"ner": "Ent.", "coref": "Cha.", "re": "Rel.", "grounding": "Gro."}  # the paper's column names
TABLE4_LABELS = {"m3d": "Best Setting"}  # Table IV names the full model so
# The runs of the default grid on tiny encoders: small enough for a CPU (placed before any flag given).
TINY_RUN_FLAGS = ["--synthetic_docs", "24", "--num_train_epochs", "4", "--per_device_eval_batch_size", "8"]


@dataclass
class ReproduceArguments:
    systems: list[str] = field(
        default_factory=lambda: list(dict.fromkeys(TABLE3 + TABLE4)),
        metadata={"help": "Systems (modeling_m3d.systems); default: those of Tables III and IV.",
                  "choices": sorted(SYSTEMS)},
    )  # fmt: skip
    langs: list[str] = field(default_factory=lambda: list(LANGUAGES), metadata={"choices": list(LANGUAGES)})
    seeds: list[int] = field(
        default_factory=lambda: [1, 2, 3], metadata={"help": "The paper averages three."}
    )
    prompt_lengths: list[int] = field(
        default_factory=lambda: [16, 128],
        metadata={"help": "Fig. 8: MMCM prompt lengths l_p of m3d, besides its default (paper: 64)."},
    )
    missing_modality_ratios: list[float] = field(
        default_factory=lambda: [0.0, 1 / 3],
        metadata={"help": "Fig. 9: shares of documents missing a modality (half text, half video), besides the "
                  "default (the paper's thirds: 2/3)."},
    )  # fmt: skip
    encoders: Literal["tiny", "paper"] = field(
        default="tiny",
        metadata={"help": "tiny: encoders built from tiny configs (minutes on a CPU); paper: the paper's "
                  "pretrained encoders and recipe (Section VI-C)."},
    )  # fmt: skip
    output_dir: str = "results"


@dataclass(frozen=True)
class Run:
    """One training run of the grid: a system, a language, a seed, and at most one setting off its default."""

    system: str
    lang: str
    seed: int
    prompt_length: int | None = None
    missing_modality_ratio: float | None = None

    @property
    def setting(self) -> str:
        if self.prompt_length is not None:
            return f"prompt_length-{self.prompt_length}"
        if self.missing_modality_ratio is not None:
            return f"missing_ratio-{self.missing_modality_ratio:g}"
        return "default"

    def directory(self, root: Path) -> Path:
        return root / "runs" / self.system / self.lang / self.setting / f"seed-{self.seed}"


def plan(args: ReproduceArguments) -> dict[str, list[Run]]:
    """The runs behind each table and figure, for the systems, languages and seeds asked for."""

    def runs(systems: Sequence[str], **setting) -> list[Run]:
        chosen = [name for name in systems if name in args.systems]
        return [
            Run(name, lang, seed, **setting) for lang in args.langs for name in chosen for seed in args.seeds
        ]

    others = [name for name in args.systems if name not in TABLE3 + TABLE4]
    return {
        "table3": runs([*TABLE3, *others]),
        "table4": runs(TABLE4),
        # each figure also shows the tables' runs, at the system's default value of the setting
        "fig8": runs(["m3d"])
        + [run for length in args.prompt_lengths for run in runs(["m3d"], prompt_length=length)],
        "fig9": runs(["m3d", "m3d-no-mmcm"])
        + [
            run
            for ratio in args.missing_modality_ratios
            for run in runs(["m3d", "m3d-no-mmcm"], missing_modality_ratio=ratio)
        ],
    }


class Runner:
    """Trains the runs of the grid with train.py's `train`, one Accelerator for all, skipping finished ones."""

    def __init__(self, args: ReproduceArguments, train_flags: list[str]):
        self.root = Path(args.output_dir)
        self.tiny = args.encoders == "tiny"
        self.flags = [*TINY_RUN_FLAGS, *train_flags] if self.tiny else ["--recipe", "paper", *train_flags]
        self.parser = HfArgumentParser((ModelArguments, DataArguments, TrainArguments))
        self.accelerator = None

    def arguments(self, run: Run) -> tuple[ModelArguments, DataArguments, TrainArguments]:
        """train.py's arguments for `run`: the shared flags, then the run's system, language, seed and setting."""
        argv = [*self.flags, "--system", run.system, "--lang", run.lang, "--seed", str(run.seed),
                "--output_dir", str(run.directory(self.root))]  # fmt: skip
        if self.tiny:
            argv.append("--tiny_encoders")
        if run.missing_modality_ratio is not None:
            argv += ["--missing_modality_ratio", str(run.missing_modality_ratio)]
        model_args, data_args, train_args = self.parser.parse_args_into_dataclasses(args=argv)
        if run.prompt_length is not None:
            overrides = json.loads(model_args.config_overrides or "{}")
            model_args.config_overrides = json.dumps({**overrides, "prompt_length": run.prompt_length})
        if data_args.dataset_dir is None and data_args.dataset_name is None:
            data_args = replace(data_args, dataset_dir=str(self.synthetic_release(data_args)))
        return apply_system(model_args, data_args.lang), data_args, train_args

    def synthetic_release(self, data_args: DataArguments) -> Path:
        """One synthetic release per language and size for all runs, written once (through a temporary folder)."""
        name = f"synthetic-{data_args.lang}-{data_args.synthetic_docs}docs-{data_args.synthetic_frames}frames"
        path = self.root / "data" / name
        if not path.is_dir():
            partial = path.with_name(name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            write_synthetic_release(
                partial, docs=data_args.synthetic_docs, lang=data_args.lang, frames=data_args.synthetic_frames
            )
            os.replace(partial, path)
        return path

    def __call__(self, run: Run) -> dict:
        """The run's flat final scores: read back when it finished with the same arguments, else trained now."""
        model_args, data_args, train_args = self.arguments(run)
        directory = run.directory(self.root)
        record = {"model": asdict(model_args), "data": asdict(data_args), "train": asdict(train_args)}
        results, recorded = directory / "all_results.json", directory / "run_args.json"
        if (
            results.is_file()
            and recorded.is_file()
            and json.loads(recorded.read_text(encoding="utf-8")) == record
        ):
            return json.loads(results.read_text(encoding="utf-8"))
        directory.mkdir(parents=True, exist_ok=True)
        results.unlink(missing_ok=True)  # results left by other arguments never count as this run's
        recorded.write_text(json.dumps(record, indent=2), encoding="utf-8")
        if self.accelerator is None:
            self.accelerator = build_accelerator(train_args)
        recipe = resolve_recipe(model_args, train_args)
        self.accelerator.print(f"== {run.system} {run.lang} {run.setting} seed {run.seed}: {directory}")
        train(self.accelerator, model_args, data_args, train_args, recipe, run.seed, directory)
        return json.loads(results.read_text(encoding="utf-8"))


def seed_scores(results: Sequence[Mapping[str, float]]) -> dict[str, dict]:
    """Mean, variance and values over seeds of each task's F1 and the average F1, on the test split (validation
    when a run has no test scores)."""
    prefix = "test_" if all("test_average_f1" in result for result in results) else "eval_"
    keys = [f"{task}_f1" for task in TASKS] + ["average_f1"]
    return aggregate_seeds([{key: result[prefix + key] for key in keys} for result in results])


def per_system(runs: Sequence[Run], results: Mapping[Run, dict]) -> dict[tuple[str, str], dict]:
    """Seed scores per (system, language), in the order of `runs`."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run.system, run.lang), []).append(results[run])
    return {key: seed_scores(found) for key, found in groups.items()}


def cell(score: Mapping[str, float]) -> str:
    """`mean (variance)`: F1 in %, its variance over seeds in %² (Table III's brackets)."""
    return f"{100 * score['mean']:.2f} ({10000 * score['variance']:.2f})"


def write_table(
    name: str, title: str, runs: Sequence[Run], results: Mapping[Run, dict], root: Path, note: str
):
    """OUTPUT/<name>.md and .json: one row per language and system, in the paper's layout."""
    rows = []
    for (system, lang), scores in per_system(runs, results).items():
        label = (
            TABLE4_LABELS.get(system, SYSTEMS[system].label) if name == "table4" else SYSTEMS[system].label
        )
        rows.append({"lang": lang, "system": system, "label": label, **scores})
    lines = [f"# {title}", "", note, "", "| | System | " + " | ".join(COLUMNS.values()) + " | Avg. |",
             "| --- | --- |" + " --- |" * (len(COLUMNS) + 1)]  # fmt: skip
    for i, row in enumerate(rows):
        first = i == 0 or rows[i - 1]["lang"] != row["lang"]
        cells = [cell(row[f"{task}_f1"]) for task in TASKS] + [f"{100 * row['average_f1']['mean']:.2f}"]
        lines.append(
            f"| {row['lang'].upper() if first else ''} | {row['label']} | " + " | ".join(cells) + " |"
        )
    _write(root / f"{name}.md", "\n".join(lines) + "\n")
    _write(root / f"{name}.json", json.dumps({"title": title, "note": note, "rows": rows}, indent=2))


def write_figure(name: str, axis: str, runs: Sequence[Run], results: Mapping[Run, dict], root: Path) -> None:
    """OUTPUT/<name>.png, one panel per language: F1 of each task and the average against the swept setting
    (`prompt_length` or `missing_modality_ratio`); a second system's average dashed (Fig. 9: w/o MMCM). Its data
    in OUTPUT/<name>.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_value: dict[tuple[str, str, float], dict[int, dict]] = {}
    for run in runs:  # a default run first: a sweep run at the same value and seed is not counted twice
        value = swept_value(run, axis, results[run], root)
        by_value.setdefault((run.system, run.lang, value), {}).setdefault(run.seed, results[run])
    points: dict[tuple[str, str], list[tuple[float, dict]]] = {}
    for (system, lang, value), found in by_value.items():
        points.setdefault((system, lang), []).append((value, seed_scores(list(found.values()))))
    langs = list(dict.fromkeys(lang for _, lang in points))
    figure, axes = plt.subplots(1, len(langs), figsize=(5 * len(langs), 4), squeeze=False)
    for ax, lang in zip(axes[0], langs, strict=True):
        for system in dict.fromkeys(system for system, code in points if code == lang):
            xs, scores = zip(*sorted(points[(system, lang)], key=lambda point: point[0]), strict=True)
            if system == "m3d":
                for task in TASKS:
                    ax.plot(xs, [100 * s[f"{task}_f1"]["mean"] for s in scores], "o-", label=COLUMNS[task])
                ax.plot(xs, [100 * s["average_f1"]["mean"] for s in scores], "s-k", label="Avg.")
            else:
                ax.plot(xs, [100 * s["average_f1"]["mean"] for s in scores], "s--k",
                        label=f"Avg. {SYSTEMS[system].label}")  # fmt: skip
        ax.set(title=lang.upper(), xlabel=axis.replace("_", " "), ylabel="F1 (%)")
        ax.legend(fontsize="small")
    figure.tight_layout()
    png = root / f"{name}.png"
    figure.savefig(png.with_suffix(".png.partial"), format="png", dpi=100)
    plt.close(figure)
    os.replace(png.with_suffix(".png.partial"), png)
    data = [
        {"system": system, "lang": lang, axis: value, **scores}
        for (system, lang), values in points.items()
        for value, scores in sorted(values, key=lambda point: point[0])
    ]
    _write(root / f"{name}.json", json.dumps(data, indent=2))


def swept_value(run: Run, axis: str, result: Mapping, root: Path) -> float:
    """The value of the swept setting a run trained with: its own, or for a run at the system's default the one
    recorded in its results (the ratio) or its saved config (the prompt length)."""
    if getattr(run, axis) is not None:
        return getattr(run, axis)
    if axis == "missing_modality_ratio":
        return result[axis]
    return json.loads((run.directory(root) / "config.json").read_text(encoding="utf-8"))[axis]


def _write(path: Path, text: str) -> None:
    """Write `text` through a temporary file renamed at the end."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def main() -> None:
    parser = HfArgumentParser(ReproduceArguments)
    args, train_flags = parser.parse_args_into_dataclasses(return_remaining_strings=True)
    for name in args.systems:
        get_system(name)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    datasets.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity_warning()
    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    grid = plan(args)
    runner = Runner(args, train_flags)
    results = {run: runner(run) for run in dict.fromkeys(run for runs in grid.values() for run in runs)}
    note = (f"{args.encoders} encoders, seeds {' '.join(map(str, args.seeds))}; F1 in %, variance over seeds in %² "
            f"in brackets. Train flags: {' '.join(runner.flags) or 'none'}.")  # fmt: skip
    if grid["table3"]:
        write_table("table3", "Table III: the systems compared", grid["table3"], results, root, note)
    if grid["table4"]:
        write_table("table4", "Table IV: ablations", grid["table4"], results, root, note)
    if grid["fig8"]:
        write_figure("fig8", "prompt_length", grid["fig8"], results, root)
    if grid["fig9"]:
        write_figure("fig9", "missing_modality_ratio", grid["fig9"], results, root)
    print(f"wrote {', '.join(sorted(path.name for path in root.glob('*.*')))} to {root}")


if __name__ == "__main__":
    main()
