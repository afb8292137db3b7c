"""Tiny M³D models and processors built from configs alone (no download), for tests, examples and CPU runs.

``build_tokenizer`` makes a tokenizer locally with the ``tokenizers`` library (EN: WordPiece, ZH: one piece per
character) wrapped as a transformers fast tokenizer, so that it saves and loads with ``AutoTokenizer``.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LongformerConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTImageProcessorPil,
)

from .configuration_m3d import M3DConfig
from .modeling_m3d import M3DModel
from .processing_m3d import M3DProcessor

# RoBERTa/Longformer order: bos/cls = 0, pad = 1, eos/sep = 2, as LongformerConfig's defaults expect.
SPECIAL_TOKENS = {"cls_token": "[CLS]", "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]",
                  "mask_token": "[MASK]"}  # fmt: skip
TINY_IMAGE_SIZE = 32
TINY_MAX_FRAMES = 8
_EN_WORDS = (
    "the of and to in a is was he she his her they it that for on with as by at from this an were be had "
    "said says after before when who where which their there into over about would could new first one two "
    "three year years day time city country river mountain school university company party president "
    "minister king queen father mother son daughter brother sister wife husband friend born died lived "
    "worked moved went left visited founded built joined member leader capital near located near south "
    "north east west people family war government team band club church city village street station"
)
_ZH_CHARACTERS = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里所去行"
    "过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从已开本现山"
    "北京上海南西东省市县区镇村街路河湖江海岛州美英法德日韩俄加澳意班牙葡荷瑞典挪丹芬波兰希腊土耳其印度埃及"
    "父母亲儿女兄弟姐妹妻夫朋友老师学生先王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田"
    "月号时分秒春夏秋冬早晚今明昨世纪代岁出生死去世工作住搬离开加入创立建成公司大学医院银行政府党团队俱乐部"
    "，。、；：？！“”‘’（）《》—…·"
)


def _tokenizer_from_backend(backend: Tokenizer) -> PreTrainedTokenizerFast:
    specials = [backend.token_to_id(SPECIAL_TOKENS[name]) for name in ("cls_token", "sep_token")]
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=list(zip(("[CLS]", "[SEP]"), specials, strict=True)),
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=1_000_000, **SPECIAL_TOKENS)


def _ranked(units: list[str], known: list[str], limit: int) -> list[str]:
    """The ``limit`` most frequent ``units`` not in ``known``; ties in alphabetical order (deterministic)."""
    counts = Counter(units)
    known = set(known)
    return [unit for unit in sorted(counts, key=lambda u: (-counts[u], u)) if unit not in known][
        : max(0, limit)
    ]


def build_tokenizer(
    texts: Iterable[str] | None = None, lang: str = "en", vocab_size: int = 2000
) -> PreTrainedTokenizerFast:
    """
    A tokenizer for tiny models, built deterministically from ``texts`` (documents as strings) or, without
    texts, from a small built-in word list (EN) / set of common characters (ZH).

    EN: WordPiece trained on the texts up to ``vocab_size`` (frequent words whole, rarer ones in learned
    sub-word pieces); every character seen (and all printable ASCII) is a piece, alone and as a ``##``
    continuation, and case is kept, so a rare word splits into known pieces instead of ``[UNK]``. ZH: one piece per character (the
    common set plus the most frequent characters of ``texts``), others map to ``[UNK]``.
    """
    texts = list(texts) if texts is not None else []
    specials = list(SPECIAL_TOKENS.values())
    if lang == "en":
        backend = _trained_wordpiece(texts or [_EN_WORDS], specials, vocab_size)
    elif lang == "zh":
        characters = [c for text in texts for c in text if not c.isspace()]
        base = [
            *specials,
            *sorted(set(_ZH_CHARACTERS + string.ascii_letters + string.digits + string.punctuation)),
        ]
        tokens = base + _ranked(characters, base, vocab_size - len(base))
        backend = Tokenizer(models.WordLevel(_index(tokens), unk_token=SPECIAL_TOKENS["unk_token"]))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\S"), behavior="isolated")
        backend.decoder = decoders.Fuse()
    else:
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    return _tokenizer_from_backend(backend)


def _trained_wordpiece(texts: list[str], specials: list[str], vocab_size: int) -> Tokenizer:
    """A WordPiece vocabulary trained on ``texts`` (the ``tokenizers`` trainer: BPE merges of ``##`` pieces).

    Every character seen (and all printable ASCII) is in the vocabulary alone and as a ``##`` continuation.
    The continuations are declared up front, in sorted order, so that their ids, and with them the trainer's
    choice among merges of equal count, do not depend on hash order: the same texts give the same vocabulary
    in every process. The trained tokenizer is rebuilt from its vocabulary, with only the real special tokens.
    """
    splitter = pre_tokenizers.BertPreTokenizer()
    words = (word for text in texts for word, _ in splitter.pre_tokenize_str(text))
    alphabet = sorted(set(string.printable.strip()).union(*words))
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=[*specials, *(f"##{character}" for character in alphabet)],
        initial_alphabet=alphabet,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    trained = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"]))
    trained.pre_tokenizer = splitter
    trained.train_from_iterator(texts, trainer)
    backend = Tokenizer(models.WordPiece(trained.get_vocab(), unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = splitter
    backend.decoder = decoders.WordPiece()
    return backend


def _index(tokens: list[str]) -> dict[str, int]:
    return {token: i for i, token in enumerate(tokens)}


def tiny_image_processor() -> ViTImageProcessorPil:
    """A ViT image processor (PIL backend) resizing frames to the tiny ViT's 32 px."""
    return ViTImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})


def tiny_config(
    tokenizer: PreTrainedTokenizerFast, vision_config: PreTrainedConfig | None = None, **config_overrides
) -> M3DConfig:
    """An [`M3DConfig`] with a 3-layer Longformer (d_h 32) and `vision_config`, by default a 3-layer ViT (32 px,
    patch 8)."""
    text_config = LongformerConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        attention_window=[16] * 3,
        max_position_embeddings=512 + tokenizer.pad_token_id + 1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )
    vision_config = vision_config or ViTConfig(
        image_size=TINY_IMAGE_SIZE,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
    )
    defaults = {"latent_dim": 16, "prompt_length": 4, "fusion_heads": 2, "grounding_slots": 4, "bilinear_dim": 16,
                "max_frames": TINY_MAX_FRAMES}  # fmt: skip
    return M3DConfig(text_config=text_config, vision_config=vision_config, **{**defaults, **config_overrides})


def tiny_model_and_processor(
    lang: str = "en", texts: Iterable[str] | None = None, **config_overrides
) -> tuple[M3DModel, M3DProcessor]:
    """
    A randomly initialised tiny [`M3DModel`] and its matching [`M3DProcessor`] (same label sets and frame count).

    Example:

    ```python
    >>> from modeling_m3d.testing import tiny_model_and_processor
    >>> model, processor = tiny_model_and_processor("zh", texts=["张三在北京工作。"], grounding_slots=2)
    >>> model.config.grounding_slots, processor.lang
    (2, 'zh')
    ```
    """
    tokenizer = build_tokenizer(texts, lang)
    config = tiny_config(tokenizer, **config_overrides)
    processor = M3DProcessor(
        tiny_image_processor(),
        tokenizer,
        entity_types=config.entity_types,
        relation_types=config.relation_types,
        grounding_types=config.grounding_types,
        max_frames=config.max_frames,
        lang=lang,
    )
    return M3DModel(config), processor
