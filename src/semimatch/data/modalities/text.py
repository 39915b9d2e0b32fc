"""Texts: token-id samples, int64 ``(N, 2, L)`` batches, trained by an ``hf:`` encoder.

``[:, 0]`` input ids and ``[:, 1]`` attention mask, padded to the longest text of the batch
(the three views of a training step to one common ``L``; :mod:`semimatch.data.text`). The model
takes that packed tensor as it is (as the ``hf:`` backbones' ``HFClassifier`` does) and is not
wrapped; a module whose forward takes ``(input_ids, attention_mask)`` can be adapted with
:class:`~semimatch.data.text.TokenInput`. A *ragged* modality: samples differ in length, so
stacking takes a list of samples and the source's ``encoding``.

The texts are tokenized once, for the config's encoder (``prepare``); the defaults are USB's
NLP recipe (8 + 8 texts per step, AdamW at 5e-5, no weight EMA) with a CPU-sized
``max_length``; a run folder keeps the tokenizer and the encoder's config in ``hf/``, so
``predict`` takes strings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from semimatch.data.modalities.base import Derive, Modality
from semimatch.data.sources import DatasetInfo, SampleSource, SSLDataset
from semimatch.data.text import (
    DEFAULT_MAX_LENGTH,
    has_augmentations,
    stack_text_views,
    stack_texts,
    texts_to_model_input,
)
from semimatch.data.text_views import DEFAULT_STRONG, STRONG_TEXT_VIEWS, TextViews, text_views
from semimatch.data.views import Views
from semimatch.log import status

if TYPE_CHECKING:
    from semimatch.config import Config
    from semimatch.models.pretrained import InputSpec

__all__ = ["TextModality", "is_hf"]


def is_hf(cfg: Config) -> bool:
    """Whether ``cfg`` trains a Hugging Face encoder (``hf:`` backbone)."""
    return str(cfg.backbone or "").startswith("hf:")


def _config_error(message: str) -> Exception:
    from semimatch.config import ConfigError

    return ConfigError(message)


class TextModality(Modality):
    kind = "text"
    dtype = torch.int64
    noun = "texts"
    ragged = True
    per_sample_views = True
    continuous = False
    options = ("max_length", "text_strong")
    backbone_prefix = "hf:"
    backbone_noun = "a text encoder"
    # USB's NLP configs train text encoders on 8 labeled + 8 unlabeled texts; FixMatch's 64 +
    # 448 cost a CPU ~50x more per step with a text encoder (docs/benchmarks/text.md, "Text
    # defaults on a CPU").
    batch_size = (8, "USB's NLP batch")
    uratio = (1, "USB's NLP batch, 8 + 8")
    reads_tables = True
    milder_strong_view: ClassVar[str] = (
        "try --text-strong deletion (or cutoff), which keep more of a short text"
    )

    # ---- samples and inputs -------------------------------------------------------------------
    def stack(self, samples: Any, encoding: Any = None) -> torch.Tensor:
        return stack_texts(samples, encoding)

    def stack_groups(self, groups: list[Any], encoding: Any) -> list[torch.Tensor]:
        return stack_text_views(groups, encoding)

    def default_views(
        self,
        info: DatasetInfo,
        augment: str = "pil",
        strong_variant: str = "fixmatch",
        pad_frac: float = 0.125,
        weak: Any = None,
        strong: Any = None,
    ) -> Views:
        if weak is not None or strong is not None:
            base = text_views()
            return TextViews(weak or base.weak, strong or base.strong)
        return text_views()

    def to_model_input(self, inputs: Any, info: DatasetInfo) -> torch.Tensor:
        return texts_to_model_input(inputs, info)

    def check_source(self, src: SampleSource, info: DatasetInfo, what: str) -> None:
        if src.encoding is None:
            raise ValueError(
                f"dataset.{what}: the texts are not tokenized; call "
                "semimatch.data.tokenize_dataset(dataset, tokenizer, max_length) first"
            )

    # ---- the config ---------------------------------------------------------------------------
    def check_config(self, cfg: Config, data: SSLDataset) -> None:
        """Image options, an encoder that cannot be found and token lengths that disagree with
        the texts passed in would silently do nothing or fail deep in training."""
        from semimatch.config import Config

        info = data.info
        custom = str(cfg.backbone or "").startswith("custom:")
        if not is_hf(cfg) and not (custom and info.spec.tokenizer):  # your model, your tokenizer
            text_backbone(cfg)
        defaults = Config()
        image_only = [
            f"{n}={getattr(cfg, n)}"
            for n in ("strong_augment", "augment_device")
            if getattr(cfg, n) != getattr(defaults, n)
        ]
        if cfg.augment == "batched":
            image_only.append("augment=batched")
        if cfg.channels_last:
            image_only.append("channels_last=True")
        if image_only:
            raise _config_error(
                f"{', '.join(image_only)} apply to images; text views are per-sample edits of "
                "the token ids, chosen with --text-strong - drop them"
            )
        if (
            cfg.max_length is not None
            and info.spec.tokenizer
            and cfg.max_length != info.spec.max_length
        ):
            raise _config_error(
                f"max_length={cfg.max_length}, but the texts passed in were tokenized with "
                f"max_length={info.spec.max_length}; drop max_length or tokenize them again"
            )
        check_text_options(cfg)
        if cfg.text_strong == "precomputed" and not has_augmentations(data):
            raise _config_error(
                "text_strong='precomputed' takes the strong views the data brings (USB's JSON "
                "aug_0/aug_1, from_texts(augmentations=...)), and this data has none; choose "
                f"another of {', '.join(v for v in STRONG_TEXT_VIEWS if v != 'precomputed')}"
            )

    def prepare(self, cfg: Config, data: SSLDataset) -> SSLDataset:
        """The texts tokenized once for ``cfg``'s encoder.

        The tokenizer is the ``hf:`` backbone's (``models.hf.load_tokenizer``: a local folder
        never touches the network), ``max_length`` and the strong view (``text_strong``) are
        the config's; texts passed in tokenized already (``from_texts(tokenizer=...)``) stay as
        they are.
        """
        if data.info.spec.tokenizer:
            return data
        from semimatch.data.text import tokenize_dataset
        from semimatch.models.hf import load_tokenizer, max_positions

        backbone = text_backbone(cfg)
        source = backbone.removeprefix("hf:")
        check_text_options(cfg)
        try:  # the encoder's config first: a model that is not there fails in a moment
            positions = max_positions(source) or DEFAULT_MAX_LENGTH
            status(f"loading the tokenizer of {backbone}")
            tokenizer = load_tokenizer(source)
        except OSError as e:  # no such folder, not in the cache, the Hub unreachable: one line
            raise _config_error(f"backbone={backbone!r}: {str(e).removeprefix('hf: ')}") from None
        # auto: the default, within the encoder's positions
        max_length = cfg.max_length or min(DEFAULT_MAX_LENGTH, positions)
        sources = (data.train, data.test, data.extra_unlabeled)
        status(f"tokenizing {sum(len(s) for s in sources if s is not None):,} texts")
        try:
            return tokenize_dataset(
                data, tokenizer, max_length, name=source, strong=cfg.text_strong
            )
        except ValueError as e:  # max_length or the strong view's name: the config's options
            raise _config_error(str(e)) from None

    def derive_from_data(self, cfg: Config, data: SSLDataset, auto: dict[str, str]) -> None:
        """The strong view ``prepare`` chose, and how the labels were read (a resume reads
        them so)."""
        from semimatch.data.text_datasets import label_reason

        if cfg.text_strong is None:
            augs = has_augmentations(data)
            cfg.text_strong = "precomputed" if augs else DEFAULT_STRONG
            auto["text_strong"] = (
                "the data's own augmentations (USB's back-translations)"
                if augs
                else "the data has no augmentations: UDA's TF-IDF word replacement"
            )
        if cfg.label_kind is None and data.label_kind is not None:
            cfg.label_kind = data.label_kind
            auto["label_kind"] = label_reason(data.label_kind, data.info.class_names)

    def default_optimizer(self, cfg: Config) -> tuple[str, str]:
        if is_hf(cfg):
            return "adamw", "USB's fine-tuning recipe for hf: encoders"
        return super().default_optimizer(cfg)

    def derive_recipe(self, cfg: Config, info: DatasetInfo, derive: Derive) -> None:
        if is_hf(cfg):
            # Evaluating a weight EMA never made the error worse and halved the late swing of
            # the evaluated model, on 10-word and full AG News, 3 seeds each.
            derive(
                "ema_decay",
                0.999,
                "a weight EMA of the fine-tuned model, measured steadier and never worse on "
                "short and full AG News (docs/benchmarks/text.md); USB's NLP recipe has none: "
                "--ema-decay 0 or an nlp preset",
            )
        length = info.spec.max_length or DEFAULT_MAX_LENGTH
        capped = f": the encoder has {length} positions" if length < DEFAULT_MAX_LENGTH else ""
        derive(
            "max_length",
            length,
            f"{DEFAULT_MAX_LENGTH} (the CPU-sized default; USB uses 512), within the encoder's "
            f"positions{capped}",
        )

    def derive_loading(self, cfg: Config, auto: dict[str, str], derive: Derive) -> None:
        super().derive_loading(cfg, auto, derive)
        if cfg.augment == "auto":
            cfg.augment = "pil"
            auto["augment"] = "pil: text views are per-sample edits of the token ids"
            derive("num_workers", 0, "text views are cheap id edits, made in the main process")

    # ---- the model ----------------------------------------------------------------------------
    def build_backbone(
        self, cfg: Config, info: DatasetInfo, spec: InputSpec | None, training: bool
    ) -> nn.Module:
        from semimatch.models import build_model

        if training:  # a large encoder takes seconds: say so
            status(f"loading the encoder {cfg.backbone}")
        name = str(cfg.backbone)
        if isinstance(cfg.pretrained, str):
            raise _config_error(
                "pretrained: an hf: backbone's weights are those of its folder (or Hub model); "
                "pass true (the default) or false (random weights), not a file"
            )
        pretrained = {} if cfg.pretrained is None else {"pretrained": cfg.pretrained}
        try:
            model = build_model(name, info.num_classes, **pretrained)
        except OSError as e:  # not in the folder or the cache, the Hub unreachable: one line
            raise _config_error(f"backbone={name!r}: {str(e).removeprefix('hf: ')}") from None
        longest = getattr(model, "max_positions", None)
        if longest is not None and info.spec.max_length > longest:
            raise _config_error(
                f"max_length={info.spec.max_length} exceeds the {longest} positions of {name}; "
                f"pass --max-length {longest} or less"
            )
        return model

    def save_for_reload(self, folder: Path, info: DatasetInfo, net: nn.Module) -> None:
        """The tokenizer and the encoder's config (``load_run`` rebuilds the model from them)."""
        from semimatch.data.text import tokenizer_named
        from semimatch.models.hf import save_for_reload

        save_for_reload(folder, tokenizer_named(info.spec.tokenizer), net)

    def reload(self, folder: Path, info: DatasetInfo, cfg: Config) -> tuple[DatasetInfo, Config]:
        """The run's own tokenizer and encoder config, not the source's (which may have moved
        or changed)."""
        if not folder.is_dir():
            return info, cfg
        info = dataclasses.replace(info, spec=dataclasses.replace(info.spec, tokenizer=str(folder)))
        if is_hf(cfg) and (folder / "config.json").exists():
            cfg = cfg.replace(backbone=f"hf:{folder}", pretrained=False)
        return info, cfg

    # ---- evaluation and prediction -----------------------------------------------------------
    def labeled_files(
        self, path: str, cfg: Config, info: DatasetInfo, reading: dict[str, Any]
    ) -> SampleSource:
        """A labeled text file or folder (``load_text``), read with the run's ``text_column``,
        ``label_column``, ``header`` and ``skip_corrupt`` unless given, tokenized as training
        did."""
        from semimatch.data.text import tokenize_dataset, tokenizer_named
        from semimatch.data.text_datasets import load_text

        given = {k: getattr(cfg, k) if v is None else v for k, v in reading.items()}
        texts = load_text(path, class_names=info.class_names, **given)
        tok = tokenizer_named(info.spec.tokenizer)
        return tokenize_dataset(texts, tok, info.spec.max_length).train

    def read_table(self, sources: Sequence[str], column: str, header: bool) -> list[Any]:
        """Texts to classify: ``"-"`` (standard input), ``.txt`` files, folders of them or
        tables (``text_readers.read_texts``); rows with ``.where`` and ``.text``."""
        from semimatch.data.text_readers import read_texts

        return [row for source in sources for row in read_texts(source, column, header)]


def text_backbone(cfg: Config) -> str:
    """The ``hf:`` encoder text data trains with, or the error that says how to choose one."""
    if is_hf(cfg):
        return str(cfg.backbone)
    if str(cfg.backbone or "").startswith("custom:"):
        raise _config_error(
            "texts for your own model (model=) must come tokenized: build them with "
            "semimatch.data.from_texts(..., tokenizer=<your tokenizer>)"
        )
    got = "no backbone is set" if cfg.backbone is None else f"backbone={cfg.backbone!r} is not one"
    raise _config_error(
        f"text data trains a text encoder, and {got}: pass --backbone "
        "hf:<model name or local folder> (backbone='hf:...'), e.g. hf:bert-base-uncased "
        "(USB's) or a folder saved by save_pretrained"
    )


def check_text_options(cfg: Config) -> None:
    """The text options whose values need no data (checked before the texts are tokenized)."""
    if cfg.max_length is not None and cfg.max_length < 3:
        raise _config_error(
            f"max_length must be >= 3 (room for the special tokens); got {cfg.max_length}"
        )
    if cfg.text_strong is not None and cfg.text_strong not in STRONG_TEXT_VIEWS:
        raise _config_error(
            f"text_strong={cfg.text_strong!r} is not a text view; choose one of "
            f"{', '.join(STRONG_TEXT_VIEWS)}"
        )
