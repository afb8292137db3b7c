"""Export the M³D release as a Hub-native dataset: parquet shards plus a dataset card, no loading script.

    python dataset_script/build_hub_dataset.py --data_dir DIR --output_dir OUT [--lang en zh]
        [--image_dir IMG] [--max_shard_size 500MB] [--overwrite] [--repo_id ID --push [--private]]

writes ``OUT/<lang>/<split>-NNNNN-of-MMMMM.parquet`` (frames embedded as image bytes, so the copy is
self-contained) and ``OUT/README.md``, whose YAML ``configs:`` make ``datasets.load_dataset(OUT, "zh")``
work without a loading script (tested with datasets 5, which no longer runs them). The rows are those of the builder
(``dataset_script/m3d``, defined in ``modeling_m3d.builder``). The folder is written in a temporary sibling and
renamed when complete, so a failure leaves nothing half-written. ``--push`` uploads the same files to the Hub dataset repo ``ID``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.info import DatasetInfo, DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from modeling_m3d.builder import M3D
from modeling_m3d.schema import LANGUAGES

BUILDER_CARD = Path(__file__).resolve().parent / "m3d" / "README.md"
CARD_SECTIONS = ("Dataset description", "Schema", "Getting the frames", "Citation")
COUNTED_LISTS = ("entities", "chains", "relations", "groundings")

LOADING = """\
## Loading

```python
from datasets import load_dataset

dataset = load_dataset("{repo}", "zh")  # or "en"; splits: {splits}
```
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="local copy of the release (data/<lang>/, img/)")
    parser.add_argument(
        "--output_dir", required=True, help="folder to create (must not exist unless --overwrite)"
    )
    parser.add_argument("--lang", nargs="+", default=list(LANGUAGES), choices=LANGUAGES)
    parser.add_argument(
        "--image_dir", default=None, help="frame folders <video_id>/ (default: <data_dir>/img)"
    )
    parser.add_argument("--max_shard_size", default="500MB", help="largest parquet shard, e.g. 500MB")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output_dir")
    parser.add_argument("--repo_id", default=None, help="Hub dataset repo to push to, e.g. user/m3d")
    parser.add_argument("--push", action="store_true", help="upload the export to --repo_id")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    args = parser.parse_args(argv)
    if args.push and not args.repo_id:
        parser.error("--push needs --repo_id")
    return args


def prepare_config(
    lang: str, data_dir: str, image_dir: str | None, work_dir: Path, target: Path, max_shard_size: str
) -> DatasetInfo:
    """Build one config with the builder as parquet and move its shards to ``target/<split>-*.parquet``."""
    builder = M3D(config_name=lang, data_dir=data_dir, image_dir=image_dir, cache_dir=str(work_dir / "cache"))
    prepared = work_dir / "prepared" / lang
    builder.download_and_prepare(
        output_dir=str(prepared), file_format="parquet", max_shard_size=max_shard_size
    )
    target.mkdir(parents=True)
    for split in builder.info.splits:
        prefix = f"{builder.dataset_name}-{split}"
        shards = sorted([*prepared.glob(f"{prefix}.parquet"), *prepared.glob(f"{prefix}-*-of-*.parquet")])
        for index, shard in enumerate(shards):
            shard.rename(target / f"{split}-{index:05d}-of-{len(shards):05d}.parquet")
    return builder.info


def split_statistics(shards: list[Path]) -> dict[str, int]:
    """Documents and annotation counts of one split, read from the list lengths (frames are not read)."""
    table = pq.read_table(shards, columns=list(COUNTED_LISTS))
    counts = {"documents": table.num_rows}
    for column in COUNTED_LISTS:
        counts[column] = int(pc.sum(pc.list_value_length(table.column(column))).as_py() or 0)
    return counts


def statistics_section(output_dir: Path, infos: dict[str, DatasetInfo]) -> str:
    """A markdown table of the counts per config and split, computed from the exported shards."""
    header = "| config | split | documents | entities | chains | relations | boxes |\n|---|---|---:|---:|---:|---:|---:|\n"
    rows = []
    for lang, info in infos.items():
        for split in info.splits:
            counts = split_statistics(sorted((output_dir / lang).glob(f"{split}-*.parquet")))
            values = " | ".join(f"{counts[key]:,}" for key in ("documents", *COUNTED_LISTS))
            rows.append(f"| {lang} | {split} | {values} |\n")
    return "## Statistics\n\n" + header + "".join(rows)


def builder_card_sections() -> dict[str, str]:
    """The ``## <name>`` sections of the builder's dataset card, by name."""
    body = BUILDER_CARD.read_text(encoding="utf-8").split("\n---\n", 1)[-1]
    parts = re.split(r"^## ", body, flags=re.MULTILINE)[1:]
    sections = {part.split("\n", 1)[0].strip(): f"## {part.strip()}\n\n" for part in parts}
    missing = [name for name in CARD_SECTIONS if name not in sections]
    if missing:
        raise KeyError(f"{BUILDER_CARD} lacks the sections {missing}")
    return sections


def card_text(output_dir: Path, infos: dict[str, DatasetInfo], repo: str) -> str:
    """The dataset card: YAML (configs, dataset_info), then description, loading, schema, statistics, frames
    and citation (the prose sections come from the builder's card)."""
    configs = [
        {
            "config_name": lang,
            "data_files": [{"split": split, "path": f"{lang}/{split}-*"} for split in info.splits],
            **({"default": True} if index == 0 else {}),
        }
        for index, (lang, info) in enumerate(infos.items())
    ]
    card_data = DatasetCardData(
        language=list(infos),
        license="unknown",
        pretty_name="M³D",
        task_categories=["token-classification", "object-detection"],
        tags=[
            "information-extraction",
            "coreference-resolution",
            "relation-extraction",
            "visual-grounding",
            "video",
        ],
        configs=configs,
    )
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    splits = ", ".join(sorted({split for info in infos.values() for split in info.splits}))
    sections = builder_card_sections()
    body = "".join(
        [
            "# M³D\n\n",
            sections["Dataset description"],
            LOADING.format(repo=repo, splits=splits),
            "\n",
            sections["Schema"],
            statistics_section(output_dir, infos),
            "\n",
            sections["Getting the frames"],
            sections["Citation"],
        ]
    )
    return f"---\n{card_data.to_yaml()}\n---\n\n{body}"


def export(
    data_dir: str,
    output_dir: str,
    langs: list[str],
    image_dir: str | None = None,
    max_shard_size: str = "500MB",
    overwrite: bool = False,
    repo: str | None = None,
) -> Path:
    """Write the Hub-native copy of the release to ``output_dir`` atomically and return its path."""
    output = Path(output_dir).resolve()
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True (--overwrite) to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        staged = staging / "export"
        infos = {
            lang: prepare_config(lang, data_dir, image_dir, staging / "work", staged / lang, max_shard_size)
            for lang in langs
        }
        card = DatasetCard(card_text(staged, infos, repo or str(output)))
        card.save(staged / "README.md")
        if output.exists():
            output.rename(staging / "previous")
        staged.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def push(folder: Path, repo_id: str, private: bool = False) -> None:
    """Upload the export to the Hub dataset repo ``repo_id``, replacing its previous parquet shards."""
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=folder,
        commit_message="Upload the M3D release as parquet",
        delete_patterns=["*.parquet"],
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    folder = export(
        args.data_dir,
        args.output_dir,
        args.lang,
        args.image_dir,
        args.max_shard_size,
        args.overwrite,
        args.repo_id,
    )
    print(f"wrote {folder}")
    if args.push:
        push(folder, args.repo_id, args.private)
        print(f"pushed to https://huggingface.co/datasets/{args.repo_id}")


if __name__ == "__main__":
    main()
