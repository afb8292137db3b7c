"""Processor for M³D: schema rows (`modeling_m3d.schema`) to the model's batch (words, frames, labels, masks), and the
model's decoded tensors back to documents (`post_process_extraction`).

The processor is also the collator: ``DataLoader(rows, collate_fn=processor.collate)``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from . import schema
from .decoding_m3d import documents_from_decoded
from .schema import (
    ENTITY_TYPES,
    GROUNDING_TYPES,
    IGNORE_INDEX,
    RELATION_TYPES,
    SYMMETRIC_RELATION_TYPES,
    check_language,
    join_tokens,
)


def _records(value: Any) -> list[dict]:
    """A list of structs as datasets gives it: a list of dicts, or a dict of lists (``Sequence`` features)."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [dict(zip(value, fields, strict=True)) for fields in zip(*value.values(), strict=True)]
    return list(value)


def _as_rows(rows: Any) -> list[Mapping]:
    """One schema row, a list of rows, or a datasets batch (dict of lists) → a list of rows."""
    if isinstance(rows, Mapping):
        tokens = rows.get("tokens")
        if isinstance(tokens, Sequence) and tokens and not isinstance(tokens[0], str):
            return [dict(zip(rows, fields, strict=True)) for fields in zip(*rows.values(), strict=True)]
        return [rows]
    return list(rows)


def _label_index(value: Any, names: Sequence[str], schema_names: Sequence[str], where: str) -> int:
    """Index in ``names`` of a type given as a name or as a schema ClassLabel int (index in ``schema_names``)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if not 0 <= value < len(schema_names):
            raise ValueError(f"{where}: type id {value} is outside the schema's labels {list(schema_names)}")
        value = schema_names[value]
    if value not in names:
        raise ValueError(f"{where}: type {value!r} is not one of {list(names)}")
    return names.index(value)


def _open_frame(frame: Any, where: str) -> Image.Image:
    """A PIL image, a ``{"bytes"|"path"}`` dict (datasets ``Image(decode=False)``) or a path, as RGB."""
    try:
        if isinstance(frame, Image.Image):
            image = frame
        elif isinstance(frame, Mapping):
            image = (
                Image.open(io.BytesIO(frame["bytes"])) if frame.get("bytes") else Image.open(frame["path"])
            )
        else:
            image = Image.open(frame)
        return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}: cannot read the frame as an image ({err})") from err


def subsample_indices(num_frames: int, max_frames: int | None) -> np.ndarray:
    """Indices of at most ``max_frames`` frames spread evenly over ``num_frames``, in temporal order."""
    if max_frames is None or num_frames <= max_frames:
        return np.arange(num_frames)
    return np.linspace(0, num_frames - 1, max_frames).round().astype(np.int64)


def frame_pixels(image_processor, images: list[Image.Image]) -> torch.Tensor:
    """Pixel values `(N, 3, H, W)` of `images`, each frame processed alone.

    A video model's image processor (VideoMAE's, ViViT's) reads a list of images as one video and returns
    `(1, N, 3, H, W)`; its steps (resize, centre crop, rescale, normalise) act frame by frame, so this is the same as
    processing each frame alone. (Their video processors, `AutoVideoProcessor`, need torchvision, which M³D does
    not require.)
    """
    pixels = image_processor(images, return_tensors="pt")["pixel_values"]
    return pixels.flatten(0, pixels.dim() - 4)


def _pad_stack(arrays: list[np.ndarray], length: int, fill: float | int, dtype: torch.dtype) -> torch.Tensor:
    """Stack ragged per-row arrays (leading dim ragged) into one padded tensor of ``length`` along dim 1."""
    trailing = arrays[0].shape[1:]
    out = torch.full((len(arrays), length, *trailing), fill, dtype=dtype)
    for i, array in enumerate(arrays):
        out[i, : len(array)] = torch.as_tensor(array, dtype=dtype)
    return out


def _lengths_mask(lengths: Sequence[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.as_tensor(list(lengths))[:, None]


def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) item mask → (B, N, N) mask of valid ordered pairs of distinct items."""
    eye = torch.eye(mask.shape[1], dtype=torch.bool)
    return mask[:, :, None] & mask[:, None, :] & ~eye


def bio_labels(
    entity_spans: torch.Tensor, entity_types: torch.Tensor, entity_mask: torch.Tensor, word_mask: torch.Tensor
) -> torch.Tensor:
    """BIO tag ids per word (0 = O, B = 1 + 2t, I = 2 + 2t; -100 on padding) for the NER loss (Eq. 19).

    Every word takes the tag of the longest mention covering it (the first of equal length), so a nested
    mention gives way to the one around it: BIO cannot express nesting and keeps the outer mention.
    """
    words = torch.arange(word_mask.shape[1])
    starts, ends = entity_spans[..., 0, None], entity_spans[..., 1, None]
    cover = (starts <= words) & (words < ends) & entity_mask[..., None]  # (B, E, W)
    length = (ends - starts).expand_as(cover)
    best = torch.where(cover, length, -1).argmax(dim=1)  # (B, W)
    best_start = entity_spans[..., 0].gather(1, best)
    best_type = entity_types.gather(1, best)
    tags = torch.where(words == best_start, 1 + 2 * best_type, 2 + 2 * best_type)
    tags = torch.where(cover.any(dim=1), tags, 0)
    return torch.where(word_mask, tags, IGNORE_INDEX)


def coreference_labels(entity_chain: torch.Tensor, entity_mask: torch.Tensor) -> torch.Tensor:
    """(B, E, E): 1 when two mentions are in one chain, else 0; -100 on padding and the diagonal (Eq. 20)."""
    same = (entity_chain[:, :, None] == entity_chain[:, None, :]).long()
    return torch.where(_pair_mask(entity_mask), same, IGNORE_INDEX)


class M3DProcessor(ProcessorMixin):
    r"""
    Turns M³D schema rows (`modeling_m3d.schema`) into a model batch: words (EN) or characters (ZH) into sub-word pieces
    with their word ids, frames into normalised pixel values, and, for annotated rows, the labels of the four
    tasks (BIO tags, coreference and relation matrices, grounding boxes), padded with masks.

    Args:
        image_processor ([`BaseImageProcessor`]): turns each frame into pixel values (ViT: resize, rescale to
            [0, 1], normalise with its mean and std); a video model's image processor works frame by frame too
            (`frame_pixels`).
        tokenizer ([`PreTrainedTokenizerBase`]): a fast tokenizer that supports ``is_split_into_words``
            (for RoBERTa/Longformer byte-level BPE, load it with ``add_prefix_space=True``).
        entity_types (`list[str]`, *optional*): entity labels, in the model config's order.
        relation_types (`list[str]`, *optional*): relation labels; a row naming another type is an error.
        grounding_types (`list[str]`, *optional*): grounding labels.
        symmetric_relation_types (`list[str]`, *optional*): relation types whose subject and object may be swapped;
            the relation labels hold each of their relations in both directions (the release annotates one
            direction, which the relation scorer does not require, so a reverse labelled "no relation" would
            contradict the scoring). Defaults to
            those of `relation_types` in `schema.SYMMETRIC_RELATION_TYPES` (which the relation scorer also reads).
        max_frames (`int`, *optional*, defaults to 8): frames beyond it are subsampled evenly, in order
            (``None`` keeps all). For a video encoder (VideoMAE, ViViT), its config's `num_frames`: the model
            shows a row's kept frames as one clip of that many frames (`M3DTubeletFrames`), which holds no more.
        lang (`str`, *optional*, defaults to `"en"`): the language of the tokenizer and of the rows (a row whose
            `lang` differs is an error); how spans join back into text (EN with spaces, ZH without).
        pad_to_multiple_of (`int`, *optional*): pad `input_ids` to a multiple of it, e.g. a Longformer's attention
            window, so that the encoder does not pad (and warn) itself.

    Example:

    ```python
    >>> from modeling_m3d.testing import tiny_model_and_processor
    >>> model, processor = tiny_model_and_processor()
    >>> batch = processor([{"id": "v0", "tokens": ["Anna", "visited", "the", "city"], "frames": []}])
    >>> batch["word_ids"].tolist()
    [[-1, 0, 0, 0, 0, 1, 2, 3, -1]]
    ```
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        entity_types: list[str] | None = None,
        relation_types: list[str] | None = None,
        grounding_types: list[str] | None = None,
        symmetric_relation_types: list[str] | None = None,
        max_frames: int | None = 8,
        lang: str = "en",
        pad_to_multiple_of: int | None = None,
        **kwargs,
    ):
        self.entity_types = list(entity_types if entity_types is not None else ENTITY_TYPES)
        self.relation_types = list(relation_types if relation_types is not None else RELATION_TYPES)
        self.grounding_types = list(grounding_types if grounding_types is not None else GROUNDING_TYPES)
        if symmetric_relation_types is None:
            symmetric_relation_types = [name for name in self.relation_types if name in SYMMETRIC_RELATION_TYPES]
        unknown = sorted(set(symmetric_relation_types) - set(self.relation_types))
        if unknown:
            raise ValueError(f"symmetric_relation_types {unknown} are not in relation_types")
        self.symmetric_relation_types = list(symmetric_relation_types)
        if max_frames is not None and (type(max_frames) is not int or max_frames < 1):
            raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")
        self.max_frames = max_frames
        self.lang = check_language(lang)
        if pad_to_multiple_of is not None and (type(pad_to_multiple_of) is not int or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
        self.pad_to_multiple_of = pad_to_multiple_of
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, rows: Any, return_tensors: str | None = "pt") -> BatchFeature:
        r"""
        Builds the model's batch from schema rows: a list of rows, one row, or a datasets batch (dict of lists).

        The batch contract (B rows, T pieces, W words, F kept frames, E mentions, C chains, G boxes per frame;
        every dimension at least 1):

        | key | dtype, shape | padding | meaning |
        | --- | --- | --- | --- |
        | `input_ids` | long (B, T) | the tokenizer's pad id | sub-word pieces of the words, never truncated (Eq. 5) |
        | `attention_mask` | long (B, T) | 0 | real pieces |
        | `word_ids` | long (B, T) | -1 | the word of each piece; -1 for special and padding pieces |
        | `word_mask` | bool (B, W) | False | real words, a prefix per row; all False when the text is missing |
        | `pixel_values` | float (B, F, 3, H, W) | 0 | kept frames through the image processor (Eq. 6) |
        | `frame_mask` | bool (B, F) | False | real frames; all False when the video is missing |
        | `frame_indices` | long (B, F) | -1 | index in the row's `frames` of each kept frame (`max_frames` subsampling) |
        | `entity_spans` | long (B, E, 2) | 0 | gold mention word spans `[start, end)` |
        | `entity_mask` | bool (B, E) | False | real mentions |
        | `entity_chain` | long (B, E) | -1 | each mention's chain (index into the row's `chains`) |
        | `chain_mask` | bool (B, C) | False | real chains |
        | `ner_labels` | long (B, W) | -100 | BIO tag per word: 0 = O, 1 + 2t = B-t, 2 + 2t = I-t (Eq. 19) |
        | `coref_labels` | long (B, E, E) | -100 | 1 same chain, 0 not; -100 on padding and the diagonal (Eq. 20) |
        | `re_labels` | long (B, C, C) | -100 | [subject, object]: 0 no relation, 1 + k `relation_types[k]` (Eq. 21) |
        | `grounding_labels` | long (B, F, G) | -100 | type index of each gold box of each kept frame (Eq. 22) |
        | `grounding_label_boxes` | float (B, F, G, 4) | 0 | those boxes, (cx, cy, w, h) in [0, 1] (Eq. 23) |

        The gold mentions and chains are in every batch (the gold-pairs protocol reads them); the five label keys
        only when the rows carry `entities` (all rows or none). Raises `ValueError` naming the row and field on
        bad input (a span outside the tokens, an unknown type, a box outside [0, 1], an unreadable frame, a `lang`
        other than the processor's).
        """
        rows = _as_rows(rows)
        if not rows:
            raise ValueError("M3DProcessor got no rows")
        ids = [schema.row_id(row, i) for i, row in enumerate(rows)]
        self._check_languages(rows, ids)
        annotated = ["entities" in row for row in rows]
        if any(annotated) and not all(annotated):
            missing = [row_id for row_id, has in zip(ids, annotated, strict=True) if not has]
            raise ValueError(f"rows {missing} have no field 'entities' while others do: annotate all or none")
        tokens = [list(row.get("tokens") or []) for row in rows]
        data = self._text_features(tokens, ids)
        selected = [subsample_indices(len(row.get("frames") or []), self.max_frames) for row in rows]
        data.update(self._frame_features(rows, selected, ids))
        data.update(self._entity_features(rows, data["word_mask"], ids, with_labels=annotated[0]))
        if annotated[0]:
            data.update(self._grounding_labels(rows, selected, ids))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def collate(self, rows: list[Mapping]) -> BatchFeature:
        """``collate_fn`` for a ``torch.utils.data.DataLoader`` over schema rows."""
        return self(rows, return_tensors="pt")

    def post_process_extraction(self, decoded, batch: Mapping[str, torch.Tensor] | None = None) -> list[dict]:
        """[`M3DModel.decode`]'s tensors → one document per row, in the document format of `modeling_m3d.schema`:

        - `entities`: `[{"start", "end", "type"}]`, word spans `[start, end)` of the row's `tokens`;
        - `chains`: predicted chains, each a list of mentions `[start, end]`, numbered as the decoder's chain ids;
        - `relations`: `[{"subject", "object", "type", "subject_chain", "object_chain"}]`, subject and object as
          mention lists (the metric format) and as indices into `chains` (under the gold-pairs protocol, the
          predicted chain holding the gold chain's first mention);
        - `groundings`: `[{"frame", "type", "box", "score"}]`, `frame` indexing the row's own `frames` (through
          the batch's `frame_indices`), `box` (cx, cy, w, h) in [0, 1].
        """
        frame_indices = None if batch is None else batch.get("frame_indices")
        return documents_from_decoded(
            decoded, frame_indices, self.entity_types, self.relation_types, self.grounding_types
        )

    # ----------------------------------------------------------------------------------------- text

    def _check_languages(self, rows: list[Mapping], ids: list[str]) -> None:
        """A row in another language than the tokenizer's would be read as noise (e.g. every Chinese character
        tagged as one entity): refuse it. Rows without `lang` are taken to be in the processor's."""
        other = [(row_id, row["lang"]) for row, row_id in zip(rows, ids, strict=True)
                 if row.get("lang") is not None and row["lang"] != self.lang]  # fmt: skip
        if other:
            row_id, lang = other[0]
            raise ValueError(
                f"row {row_id!r}: field 'lang' is {lang!r} but this processor (and its model) is for "
                f"{self.lang!r}; use a model trained on {lang!r} rows ({len(other)} of {len(rows)} rows differ)"
            )

    def _text_features(self, tokens: list[list[str]], ids: list[str]) -> dict[str, torch.Tensor]:
        """Sub-word pieces of all words (never truncated) and the word each piece belongs to (-1 for none)."""
        encoding, word_ids = self._encode(tokens)
        missing = [
            np.setdiff1d(np.arange(len(words)), row_ids)
            for words, row_ids in zip(tokens, word_ids, strict=True)
        ]
        if any(len(m) for m in missing):
            tokens = [
                self._with_unknown(words, m, row_id)
                for words, m, row_id in zip(tokens, missing, ids, strict=True)
            ]
            encoding, word_ids = self._encode(tokens)
        width = max(1, max(len(words) for words in tokens))
        return {
            "input_ids": encoding["input_ids"].long(),
            "attention_mask": encoding["attention_mask"].long(),
            "word_ids": torch.as_tensor(np.stack(word_ids), dtype=torch.long),
            "word_mask": _lengths_mask([len(words) for words in tokens], width),
        }

    def _encode(self, tokens: list[list[str]]) -> tuple[Mapping, list[np.ndarray]]:
        encoding = self.tokenizer(
            tokens, is_split_into_words=True, padding=True, pad_to_multiple_of=self.pad_to_multiple_of,
            return_tensors="pt",
        )  # fmt: skip
        word_ids = [
            np.nan_to_num(np.array(encoding.word_ids(i), dtype=np.float64), nan=-1).astype(np.int64)
            for i in range(len(tokens))
        ]
        return encoding, word_ids

    def _with_unknown(self, words: list[str], missing: np.ndarray, row_id: str) -> list[str]:
        """Words the tokenizer drops (e.g. a space character) become the unknown token, so none is lost."""
        if not len(missing):
            return words
        if self.tokenizer.unk_token is None:
            raise ValueError(
                f"row {row_id!r}: field 'tokens' {missing.tolist()} yield no piece and the tokenizer has no unk_token"
            )
        words = np.array(words, dtype=object)
        words[missing] = self.tokenizer.unk_token
        return words.tolist()

    def span_text(self, tokens: Sequence[str], start: int, end: int, lang: str | None = None) -> str:
        """Text of the word span ``[start, end)``: EN words joined by spaces, ZH characters joined directly."""
        return join_tokens(tokens[start:end], lang or self.lang)

    def decode_words(
        self, tokens: Sequence[str], spans: Sequence[Sequence[int]], lang: str | None = None
    ) -> list[str]:
        """Texts of word spans ``[[start, end), ...]`` (as in ``model.predict`` output) over a row's ``tokens``."""
        return [self.span_text(tokens, start, end, lang) for start, end in spans]

    # --------------------------------------------------------------------------------------- frames

    def _frame_features(self, rows: list[Mapping], selected: list[np.ndarray], ids: list[str]) -> dict:
        """All frames of the batch through the image processor in one call, padded to (B, F, 3, H, W)."""
        images = [
            _open_frame(row["frames"][j], f"row {row_id!r}: field 'frames'[{j}]")
            for row, indices, row_id in zip(rows, selected, ids, strict=True)
            for j in indices.tolist()
        ]
        frame_mask = _lengths_mask([len(indices) for indices in selected], max(1, max(map(len, selected))))
        frame_indices = _pad_stack(
            [indices[:, None] for indices in selected], frame_mask.shape[1], -1, torch.long
        )
        pixels = frame_pixels(self.image_processor, images or [Image.new("RGB", (8, 8))])[: len(images)]
        shape = (*frame_mask.shape, *pixels.shape[1:])
        if frame_mask.all():  # no padding: skip the copy
            return {
                "pixel_values": pixels.view(shape),
                "frame_mask": frame_mask,
                "frame_indices": frame_indices[..., 0],
            }
        pixel_values = pixels.new_zeros(shape)
        pixel_values[frame_mask] = pixels
        return {
            "pixel_values": pixel_values,
            "frame_mask": frame_mask,
            "frame_indices": frame_indices[..., 0],
        }

    # ------------------------------------------------------------------------------------- entities

    def _entity_features(
        self, rows: list[Mapping], word_mask: torch.Tensor, ids: list[str], with_labels: bool
    ) -> dict[str, torch.Tensor]:
        """Gold mention spans, their chains and types, padded; the NER, coreference and relation labels."""
        per_row = [self._row_entities(row, row_id) for row, row_id in zip(rows, ids, strict=True)]
        width = max(1, max(len(entities) for entities, _ in per_row))
        num_chains = [n for _, n in per_row]
        entity_mask = _lengths_mask([len(entities) for entities, _ in per_row], width)
        columns = [entities if len(entities) else np.zeros((0, 4), np.int64) for entities, _ in per_row]
        table = _pad_stack(columns, width, 0, torch.long)  # (B, E, 4): start, end, type, chain
        data = {
            "entity_spans": table[..., :2],
            "entity_mask": entity_mask,
            "entity_chain": torch.where(entity_mask, table[..., 3], -1),
            "chain_mask": _lengths_mask(num_chains, max(1, max(num_chains))),
        }
        if with_labels:
            data["ner_labels"] = bio_labels(table[..., :2], table[..., 2], entity_mask, word_mask)
            data["coref_labels"] = coreference_labels(data["entity_chain"], entity_mask)
            data["re_labels"] = self._relation_labels(rows, data["chain_mask"], ids)
        return data

    def _row_entities(self, row: Mapping, row_id: str) -> tuple[np.ndarray, int]:
        """(n, 4) array of start, end, type index, chain index for one row, checked; and its chain count."""
        entities = _records(row.get("entities"))
        chains = row.get("chains")
        num_chains = (
            len(_records(chains))
            if chains is not None
            else 1 + max((e["chain"] for e in entities), default=-1)
        )
        table = np.array(
            [
                (
                    e["start"],
                    e["end"],
                    _label_index(
                        e["type"], self.entity_types, ENTITY_TYPES, f"row {row_id!r}: field 'entities'[{k}]"
                    ),
                    e["chain"],
                )
                for k, e in enumerate(entities)
            ],
            dtype=np.int64,
        ).reshape(-1, 4)
        num_words = len(row.get("tokens") or [])
        bad = (table[:, 0] < 0) | (table[:, 1] <= table[:, 0]) | (table[:, 1] > num_words)
        bad |= (table[:, 3] < 0) | (table[:, 3] >= num_chains)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"row {row_id!r}: field 'entities'[{k}] = {entities[k]} is outside the row's {num_words} tokens "
                f"or {num_chains} chains"
            )
        return table, num_chains

    def _relation_labels(self, rows: list[Mapping], chain_mask: torch.Tensor, ids: list[str]) -> torch.Tensor:
        """(B, C, C) [subject, object]: 0 no relation, k + 1 for ``relation_types[k]``; -100 on padding (Eq. 21).

        When one chain pair carries two types, the first in release order wins. A relation of a symmetric type
        (`symmetric_relation_types`) also labels the reverse direction, unless that one holds a relation itself.
        """
        num_chains = chain_mask.sum(dim=1).tolist()
        rows_index, triples = [], []
        for b, (row, row_id) in enumerate(zip(rows, ids, strict=True)):
            for k, relation in enumerate(_records(row.get("relations"))):
                where = f"row {row_id!r}: field 'relations'[{k}]"
                if relation["type"] not in self.relation_types:
                    raise ValueError(
                        f"{where}: relation type {relation['type']!r} is not in relation_types; extend "
                        "relation_types (in the processor and the model config) to include it"
                    )
                if not (0 <= relation["subject"] < num_chains[b] and 0 <= relation["object"] < num_chains[b]):
                    raise ValueError(
                        f"{where} = {relation} names a chain outside the row's {num_chains[b]} chains"
                    )
                rows_index.append(b)
                triples.append(
                    (relation["subject"], relation["object"], self.relation_types.index(relation["type"]))
                )
        symmetric = {self.relation_types.index(name) for name in self.symmetric_relation_types}
        reverse = [(b, (o, s, kind)) for b, (s, o, kind) in zip(rows_index, triples, strict=True) if kind in symmetric]
        rows_index, triples = rows_index + [b for b, _ in reverse], triples + [triple for _, triple in reverse]
        size = chain_mask.shape[1]
        labels = torch.zeros((len(rows), size, size), dtype=torch.long)
        if triples:
            b = np.array(rows_index)
            subject, obj, kind = np.array(triples).T
            _, first = np.unique((b * size + subject) * size + obj, return_index=True)
            labels[b[first], subject[first], obj[first]] = torch.as_tensor(kind[first] + 1)
        return torch.where(_pair_mask(chain_mask), labels, IGNORE_INDEX)

    # ----------------------------------------------------------------------------------- grounding

    def _grounding_labels(self, rows: list[Mapping], selected: list[np.ndarray], ids: list[str]) -> dict:
        """Boxes (cx, cy, w, h) and type ids per kept frame, padded to (B, F, G); -100 types on padding."""
        tables = [
            self._row_groundings(row, indices, row_id)
            for row, indices, row_id in zip(rows, selected, ids, strict=True)
        ]
        row_index = np.concatenate([np.full(len(t), b) for b, t in enumerate(tables)])
        table = np.concatenate(tables)  # frame, type, cx, cy, w, h
        num_frames = max(1, max(map(len, selected)))
        key = row_index * num_frames + table[:, 0].astype(np.int64)
        order = np.argsort(key, kind="stable")
        key, table, row_index = key[order], table[order], row_index[order]
        group_start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        rank = np.arange(len(key)) - np.repeat(group_start, np.diff(np.r_[group_start, len(key)]))
        width = max(1, int(rank.max(initial=0)) + 1)
        boxes = torch.zeros((len(rows), num_frames, width, 4))
        types = torch.full((len(rows), num_frames, width), IGNORE_INDEX, dtype=torch.long)
        frame = table[:, 0].astype(np.int64)
        boxes[row_index, frame, rank] = torch.as_tensor(table[:, 2:], dtype=torch.float32)
        types[row_index, frame, rank] = torch.as_tensor(table[:, 1].astype(np.int64))
        return {"grounding_label_boxes": boxes, "grounding_labels": types}

    def _row_groundings(self, row: Mapping, indices: np.ndarray, row_id: str) -> np.ndarray:
        """(n, 6) float array of kept frame index, type index and box for one row, checked; frames remapped."""
        groundings = _records(row.get("groundings"))
        num_frames = len(row.get("frames") or [])
        for k, g in enumerate(groundings):
            if len(g["box"]) != 4:
                raise ValueError(
                    f"row {row_id!r}: field 'groundings'[{k}] box {g['box']} is not (cx, cy, w, h)"
                )
        table = np.array(
            [
                (
                    g["frame"],
                    _label_index(
                        g["type"],
                        self.grounding_types,
                        GROUNDING_TYPES,
                        f"row {row_id!r}: field 'groundings'[{k}]",
                    ),
                    *g["box"],
                )
                for k, g in enumerate(groundings)
            ],
            dtype=np.float64,
        ).reshape(-1, 6)
        bad = (
            (table[:, 0] < 0)
            | (table[:, 0] >= num_frames)
            | ((table[:, 2:] < 0) | (table[:, 2:] > 1)).any(axis=1)
        )
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"row {row_id!r}: field 'groundings'[{k}] = {groundings[k]} has a frame outside the row's "
                f"{num_frames} frames or a box outside [0, 1]"
            )
        kept = np.full(num_frames, -1)
        kept[indices] = np.arange(len(indices))
        table[:, 0] = kept[table[:, 0].astype(np.int64)]
        return table[table[:, 0] >= 0]
