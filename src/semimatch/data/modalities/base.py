"""What every modality answers: the :class:`Modality` protocol with the defaults most share.

A modality is one kind of sample (images, feature vectors, texts). Its object says, for data
of that kind, everything the rest of semimatch would otherwise decide by asking the kind:
how samples stack into batch tensors and raw inputs become model input, which views train it,
which config options it takes and which defaults it derives (``resolve`` asks it), which
backbone it builds, what a run folder keeps to reload it, and what ``evaluate``/``predict``
read. The subclasses live next to this module, one file per modality, and register in
:data:`semimatch.data.modalities.MODALITIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from semimatch.data.sources import DatasetInfo, SampleSource, SSLDataset
from semimatch.data.views import Views

if TYPE_CHECKING:
    from semimatch.config import Config
    from semimatch.models.pretrained import InputSpec

__all__ = ["Derive", "Modality", "PredictInputs"]

#: ``derive(name, value, why)``: set the auto (None) config field ``name`` and record why.
Derive = Callable[[str, Any, str], None]


class PredictInputs:
    """What ``predict`` feeds the model: the inputs as ``to_model_input`` takes them, and the
    files they were read from (one per input; ``None`` when the inputs were given as they are)."""

    def __init__(self, inputs: Any, paths: list[str] | None = None) -> None:
        self.inputs, self.paths = inputs, paths


class Modality:
    """One kind of sample. Class attributes describe it; methods are the questions the
    stream, ``resolve``, the model recipe, the run folder and prediction ask of it."""

    #: ``DatasetInfo.kind``.
    kind: ClassVar[str]
    #: dtype of the batch tensors (an empty unlabeled batch is made with it).
    dtype: ClassVar[torch.dtype]
    #: What a run of this modality classifies, in messages ("images", "texts").
    noun: ClassVar[str]
    #: Samples differ in shape (text): gathered as lists, no common ``sample_shape``.
    ragged: ClassVar[bool] = False
    #: The per-sample (``augment='pil'``) views apply; else the views are batched only.
    per_sample_views: ClassVar[bool] = False
    #: Whether the inputs are continuous (pixels, feature values), so a method may perturb them
    #: (VAT); token ids are not.
    continuous: ClassVar[bool] = True
    #: Whether the samples are images a method may turn (``Needs.spatial``: ReMixMatch's rotation).
    spatial: ClassVar[bool] = False
    #: ``TrainStream(augment=None)``: the views the stream builds by default.
    default_augment: ClassVar[str] = "batched"
    #: Config fields that only this modality takes (given with other data: refused).
    options: ClassVar[tuple[str, ...]] = ()
    #: Backbone names of this modality alone (``"hf:"``) and what they are, for the message
    #: refusing one with other data.
    backbone_prefix: ClassVar[str | None] = None
    backbone_noun: ClassVar[str] = ""
    #: FixMatch's labeled batch and unlabeled ratio, unless the modality's papers differ.
    batch_size: ClassVar[tuple[int, str]] = (64, "FixMatch's")
    uratio: ClassVar[tuple[int, str]] = (7, "FixMatch's mu")
    #: ``channels_last`` is a memory layout of image batches; other data derives False.
    channels_last: ClassVar[bool] = False
    #: ``eval --test-dir`` and ``predict`` read tables (``--text-column``, ``--header``).
    reads_tables: ClassVar[bool] = False
    #: The diagnostic's advice when the strong view changes the class too often.
    milder_strong_view: ClassVar[str] = ""

    # ---- samples and inputs -------------------------------------------------------------------
    def stack(self, samples: Any, encoding: Any = None) -> torch.Tensor:
        """``(gathered samples, source.encoding)`` -> the batch tensor ``(n, *input_shape)``;
        fixed-shape samples come as one ``(n, *sample_shape)`` array, ragged ones as a list."""
        raise NotImplementedError

    def stack_groups(self, groups: list[Any], encoding: Any) -> list[torch.Tensor]:
        """The batch tensors of one step's views (text pads them to one common length)."""
        return [self.stack(g, encoding) for g in groups]

    def default_views(
        self,
        info: DatasetInfo,
        augment: str = "pil",
        strong_variant: str = "fixmatch",
        pad_frac: float = 0.125,
        weak: Any = None,
        strong: Any = None,
    ) -> Views:
        """The weak/strong views when the data brings none."""
        raise NotImplementedError

    def to_model_input(self, inputs: Any, info: DatasetInfo) -> torch.Tensor:
        """Raw user inputs -> the batch tensor (checked against ``info``), for prediction."""
        raise NotImplementedError

    def wrap_model(self, model: nn.Module, info: DatasetInfo) -> nn.Module:
        """The network the engine trains: ``model`` plus the input normalisation it needs."""
        return model

    def check_source(self, src: SampleSource, info: DatasetInfo, what: str) -> None:
        """A source of this modality that the stream cannot batch is refused (``what`` names
        it in the message)."""
        if tuple(src.sample_shape) != info.sample_shape:
            raise ValueError(
                f"dataset.{what}: samples are {src.sample_shape} {self.layout} but the dataset "
                f"info says {info.sample_shape}; resize them to a common size"
            )

    #: How one stored sample is laid out, in messages.
    layout: ClassVar[str] = ""

    # ---- the config ---------------------------------------------------------------------------
    def check_config(self, cfg: Config, data: SSLDataset) -> None:
        """This modality's own checks of ``cfg`` (options of other modalities are refused by
        ``semimatch.data.modalities.check_config``)."""

    def prepare(self, cfg: Config, data: SSLDataset) -> SSLDataset:
        """``data`` as training takes it for ``cfg`` (text: tokenized for the encoder)."""
        return data

    def derive_from_data(self, cfg: Config, data: SSLDataset, auto: dict[str, str]) -> None:
        """Auto fields that the prepared data decided (text: the strong view, the labels)."""

    def derive_backbone(self, info: DatasetInfo, derive: Derive) -> None:
        """The default backbone for ``info``'s samples."""

    def default_optimizer(self, cfg: Config) -> tuple[str, str]:
        """The optimizer when ``cfg.optimizer`` is auto, and why."""
        return "sgd", "SGD + Nesterov, the papers'"

    def derive_recipe(self, cfg: Config, info: DatasetInfo, derive: Derive) -> None:
        """The modality's training-recipe defaults, after the optimizer's (text: USB's)."""

    def derive_loading(self, cfg: Config, auto: dict[str, str], derive: Derive) -> None:
        """The batch layout and loading defaults that only depend on the modality."""
        if not self.channels_last:
            derive("channels_last", False, f"a memory layout of images; these are {self.kind}")

    # ---- the model ----------------------------------------------------------------------------
    def input_spec(self, cfg: Config) -> InputSpec | None:
        """The input resolution and normalisation pretrained weights impose, else None."""
        return None

    def build_backbone(
        self, cfg: Config, info: DatasetInfo, spec: InputSpec | None, training: bool
    ) -> nn.Module:
        """``cfg.backbone`` for this modality's inputs (``spec``: ``input_spec``)."""
        raise NotImplementedError

    def save_for_reload(self, folder: Path, info: DatasetInfo, net: nn.Module) -> None:
        """What a run folder keeps besides the config and checkpoints to reload the model
        (``folder``: the run's ``hf/``; text: the tokenizer and the encoder's config)."""

    def reload(self, folder: Path, info: DatasetInfo, cfg: Config) -> tuple[DatasetInfo, Config]:
        """``load_run``: the info and config that rebuild the model from what
        ``save_for_reload`` kept in ``folder``."""
        return info, cfg

    # ---- evaluation and prediction -----------------------------------------------------------
    def labeled_files(
        self, path: str, cfg: Config, info: DatasetInfo, reading: dict[str, Any]
    ) -> SampleSource:
        """``evaluate(test_dir=path)``: the labeled samples there, read as training read its
        data (``reading``: ``text_column``, ``label_column``, ``header``, ``skip_corrupt``;
        ``None`` = the run's)."""
        raise ValueError(f"test_dir: a run on {self.noun} has no files to read labels from")

    @property
    def reads_labeled_files(self) -> bool:
        """Whether ``labeled_files`` reads labeled files for this modality (``--test-dir``)."""
        return type(self).labeled_files is not Modality.labeled_files

    def predict_inputs(self, inputs: Any, info: DatasetInfo) -> PredictInputs:
        """``predict(run, inputs)``: the inputs themselves (image runs also read files)."""
        return PredictInputs(inputs)

    def read_table(self, sources: Sequence[str], column: str, header: bool) -> list[Any]:
        """``semimatch predict`` of a run that ``reads_tables``: the rows of ``sources``."""
        raise NotImplementedError
