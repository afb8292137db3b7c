"""`datasets` builder for the M³D release (configs ``en`` and ``zh``; splits train, validation, test).

Usage (datasets re-imports a builder's module by name, so import it as a module)::

    import sys
    sys.path.insert(0, "dataset_script/m3d")
    import m3d

    builder = m3d.M3D(config_name="zh", data_dir="path/to/m3d")  # data/zh/*_zh.json and img/<video_id>/
    builder.download_and_prepare()
    dataset = builder.as_dataset()

Without ``data_dir`` the annotation files are downloaded from the release's public repository;
frames only come from a local copy of the image archive (``<data_dir>/img`` or ``image_dir=...``).
The record parsing and validation live in :mod:`m3d_release`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError
from m3d_release import (
    CITATION,
    DESCRIPTION,
    FEATURES,
    HOMEPAGE,
    M3DFormatError,
    iter_examples,
    record_to_example,
    release_sources,
)

__all__ = ["FEATURES", "M3D", "M3DBuilderConfig", "M3DFormatError", "record_to_example"]

logger = datasets.logging.get_logger(__name__)

_VERSION = datasets.Version("1.0.0")


@dataclass
class M3DBuilderConfig(datasets.BuilderConfig):
    """One language of the release.

    Args:
        lang: ``"en"`` or ``"zh"``.
        image_dir: folder holding ``<video_id>/`` frame folders; defaults to ``<data_dir>/img``.
    """

    lang: str = "en"
    image_dir: str | None = None


class M3D(datasets.GeneratorBasedBuilder):
    """M³D: one row per video clip with its document, entities, chains, relations, frames and boxes."""

    VERSION = _VERSION
    BUILDER_CONFIG_CLASS = M3DBuilderConfig
    BUILDER_CONFIGS = [
        M3DBuilderConfig(name="en", lang="en", version=_VERSION, description="English clips."),
        M3DBuilderConfig(name="zh", lang="zh", version=_VERSION, description="Chinese clips."),
    ]
    DEFAULT_CONFIG_NAME = "en"

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=DESCRIPTION, features=FEATURES, homepage=HOMEPAGE, citation=CITATION
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        image_dir = self._image_dir()
        sources = release_sources(self.config.lang, self.config.data_dir)
        generators = []
        for split, source in sources.items():
            try:
                path = dl_manager.download(source)
            except FileNotFoundError as error:
                if not _is_absent(error):
                    raise ConnectionError(
                        f"M3D {self.config.name}: cannot download {source}: {error.__cause__}"
                    ) from error
                logger.warning(f"M3D {self.config.name}: {source} not found, the {split!r} split is left out")
                continue
            gen_kwargs = {"path": path, "source": source, "image_dir": image_dir}
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs=gen_kwargs))
        if not generators:
            raise FileNotFoundError(
                f"M3D {self.config.name}: no annotation file found, looked for {', '.join(sources.values())}"
            )
        return generators

    def _generate_examples(self, path: str, source: str, image_dir: str | None):
        yield from enumerate(iter_examples(path, self.config.lang, image_dir, source=source))

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        """As the base class, but a release format error surfaces as itself, not wrapped by `datasets`."""
        try:
            super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
        except DatasetGenerationError as error:
            cause = error.__cause__
            if isinstance(cause, M3DFormatError):
                raise cause from cause.__cause__
            raise

    def _image_dir(self) -> str | None:
        """The frame folder: ``image_dir`` if set, else ``<data_dir>/img`` if present, else none."""
        if self.config.image_dir is not None:
            if not Path(self.config.image_dir).is_dir():
                raise FileNotFoundError(
                    f"M3D {self.config.name}: image_dir {self.config.image_dir} is not a folder"
                )
            return str(Path(self.config.image_dir).resolve())
        if self.config.data_dir is not None and (Path(self.config.data_dir) / "img").is_dir():
            return str((Path(self.config.data_dir) / "img").resolve())
        logger.warning(
            f"M3D {self.config.name}: no image folder, frames and groundings are left empty "
            "(the image archive is a manual download, see the dataset card)"
        )
        return None


def _is_absent(error: FileNotFoundError) -> bool:
    """A local file that does not exist, or a URL answered with 404 (rather than a network failure)."""
    cause = error.__cause__
    return cause is None or getattr(cause, "status", None) == 404
