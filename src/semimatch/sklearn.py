"""A scikit-learn estimator over the same training engine: ``SemiSupervisedClassifier``.

    >>> from semimatch.sklearn import SemiSupervisedClassifier
    >>> clf = SemiSupervisedClassifier(max_iter=500, random_state=0).fit(X, y)  # y == -1: unlabeled
    >>> clf.predict(X_test), clf.predict_proba(X_test), clf.score(X_test, y_test)

``fit`` builds a ``semimatch.Config`` from the estimator's parameters and calls
``semimatch.train`` -> ``semimatch.runs.engine.fit``, the same loop as the command line and the
Python API, so the estimator, ``semimatch.train(...)`` and ``semimatch train ...`` give the same
model for the same seed and settings.

Inputs ``X``:

* **images** ``(N, H, W)`` or ``(N, H, W, C)`` (``C`` in {1, 3}), uint8 0..255 or float in
  [0, 1]: the image pipeline (weak = random crop [+ flip], strong = RandAugment + Cutout;
  reference "Weak view" / "Strong view") and an image backbone (``backbone="auto"``: the small
  CNN up to 28 px, WRN-28-2 above).
* **feature vectors** ``(N, D)``: a feature dataset (``semimatch.data.from_features``):
  standardised with the mean/std of the ``fit`` data and fed, as float32 ``(N, D)`` batches,
  to an MLP (``hidden_layer_sizes``). Images have no meaning here, so the two views are
  perturbations in the standardised feature space (``semimatch.data.views.FeatureViews``),
  drawn for the whole batch at once from a ``torch.Generator`` seeded by
  ``(seed, iteration, rank, view)`` (the contract of the batched image views):

    - weak view:   ``z + weak_noise * e``                 (``e ~ N(0, I)``)
    - strong view: ``m * z + strong_noise * e``, where ``m`` zeroes each feature with
      probability ``strong_dropout`` (a zeroed standardised feature sits at its mean, i.e.
      "feature missing"), so the student sees a harder, partly-masked view.

* **texts**: a list (or 1-d array, or pandas Series) of strings, with
  ``backbone="hf:<model name or local folder>"`` (a Hugging Face encoder): tokenized once with
  the encoder's tokenizer (``max_length`` and the strong view ``text_strong`` through
  ``config=``), weak view = the text, strong view = UDA's TF-IDF word replacement, and USB's
  fine-tuning recipe (AdamW, learning rate 5e-5 unless ``lr`` is given, no weight EMA, 8
  labeled + 8 unlabeled texts per iteration unless ``batch_size``/``uratio`` are given).

Labels ``y``: any values (ints, strings, ...), mapped through ``classes_``; unlabeled rows carry
``unlabeled_label`` (default ``-1``, scikit-learn's semi-supervised convention). For string
labels either pass e.g. ``unlabeled_label="unlabeled"`` or use an object array with ``-1``; in
a NumPy string array the sentinel also matches its string form (``"-1"``), because NumPy turns
``["cat", -1]`` into ``["cat", "-1"]``. ``score`` ignores unlabeled rows, so ``GridSearchCV``
on semi-supervised ``y`` scores only the labeled rows of each validation fold.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from semimatch.config import Config, ConfigError
from semimatch.data import SSLDataset
from semimatch.data.arrays import from_arrays, from_features, to_uint8_images
from semimatch.log import quiet
from semimatch.methods.registry import methods
from semimatch.models import build_model

__all__ = ["SemiSupervisedClassifier"]

# Config fields the estimator sets from its own parameters (``config=`` may not override them).
_OWN_FIELDS = {
    "algorithm": "algorithm", "backbone": "backbone", "iterations": "max_iter",
    "batch_size": "batch_size", "uratio": "uratio", "lr": "lr", "weight_decay": "weight_decay",
    "device": "device", "precision": "precision", "seed": "random_state",
    "progress": "verbose", "num_labels": "y == unlabeled_label", "dataset": "X",
}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------------
class SemiSupervisedClassifier(ClassifierMixin, BaseEstimator):
    """FixMatch / SoftMatch (or Pseudo-Label, supervised) as a scikit-learn classifier.

    Parameters:
        algorithm: any of ``semimatch.methods.registry.methods()`` (``"softmatch"``,
            ``"fixmatch"``, ``"freematch"``, ``"supervised"``, ...).
        backbone: ``"auto"`` (MLP for feature vectors; small CNN for images <= 28 px, WRN-28-2
            above), a ``semimatch.models`` name (``"cnn"``, ``"wrn_28_2"``, ``"mlp"``,
            ``"torchvision:resnet18"``, ...), ``"hf:<model name or folder>"`` (texts; required
            for them) or an ``nn.Module`` (float NCHW images in - float ``(N, D)`` for feature
            vectors - logits out; copied at each ``fit``).
        max_iter: training iterations (optimizer steps).
        batch_size: labeled samples per iteration; None: 64 (FixMatch's) for images and
            feature vectors, 8 (USB's NLP batch) for texts.
        uratio: unlabeled samples per labeled sample in a batch (mu); None: 7 (FixMatch's)
            for images and feature vectors, 1 for texts (8 + 8, USB's NLP batch).
        lr: initial learning rate; None: 0.03 with SGD + Nesterov (images, features), 5e-5
            with AdamW (``hf:`` backbones), each with its cosine decay.
        weight_decay: L2 on weights (not on BatchNorm parameters and biases).
        device: ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ...
        precision: None (default, as the other doors: fp32, the papers' arithmetic; with
            ``verbose``, one line says what bf16 measured where the CPU has it natively),
            ``"fp32"``, ``"auto"`` (bf16 where the hardware has native bf16, else fp32),
            ``"bf16"``, ``"fp16"`` (CUDA).
        random_state: seed (int), ``RandomState`` or None (a fresh seed per ``fit``).
        verbose: 0 / False (default): ``fit`` prints nothing but warnings; 1 / True (or
            more): what ``fit`` is doing before it trains (loading the encoder, tokenizing),
            a progress bar and the evaluation lines, as the command line shows them.
        unlabeled_label: the ``y`` value marking unlabeled rows.
        hflip: images only: whether the weak view may flip horizontally (off by default: safe
            for digits and text; turn on for natural images).
        hidden_layer_sizes: feature vectors with the MLP: widths of the hidden layers.
        weak_noise: feature vectors only: the weak view's noise (module docstring), in units of
            each feature's std.
        strong_noise: feature vectors only: the strong view's noise, in the same units.
        strong_dropout: feature vectors only: the strong view's feature-masking probability. The
            defaults (and the 512-wide MLP) were the best of a small sweep on digits features.
        config: further ``semimatch.Config`` fields as a dict (e.g. ``{"tau": 0.9,
            "ema_decay": 0, "threads": 1}``); fields set by the parameters above are refused.

    Attributes:
        classes_: the label values, sorted; predictions are drawn from them.
        n_features_in_: ``X.shape[1]`` at ``fit`` (the feature count for ``(N, D)`` input, the
            image height for images, as scikit-learn counts n-d input); ``input_shape_`` holds
            the whole per-sample shape.
        feature_names_in_: column names when ``X`` was a DataFrame with string column names.
        input_kind_: ``"features"``, ``"images"`` or ``"texts"``.
        model_: the trained network used for prediction (the EMA model when EMA is on).
        run_: the ``semimatch.Run`` (config, raw and EMA models, summary; no copy of the data).
        config_: the resolved ``semimatch.Config`` that was trained.
        feature_mean_, feature_scale_: feature vectors only: the standardisation of ``X``
            (float32; ``run_.info.spec.mean``/``std`` hold the same numbers).
    """

    def __init__(
        self,
        algorithm: str = "softmatch",
        backbone: str | nn.Module = "auto",
        max_iter: int = 1000,
        batch_size: int | None = None,
        uratio: int | None = None,
        lr: float | None = None,
        weight_decay: float = 5e-4,
        device: str = "auto",
        precision: str | None = None,
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
        unlabeled_label: Any = -1,
        hflip: bool = False,
        hidden_layer_sizes: tuple[int, ...] = (512, 512),
        weak_noise: float = 0.1,
        strong_noise: float = 0.5,
        strong_dropout: float = 0.5,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.backbone = backbone
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.uratio = uratio
        self.lr = lr
        self.weight_decay = weight_decay
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.verbose = verbose
        self.unlabeled_label = unlabeled_label
        self.hflip = hflip
        self.hidden_layer_sizes = hidden_layer_sizes
        self.weak_noise = weak_noise
        self.strong_noise = strong_noise
        self.strong_dropout = strong_dropout
        self.config = config

    # -- scikit-learn plumbing ---------------------------------------------------------------
    def __sklearn_tags__(self):  # noqa: ANN204 - sklearn's Tags type
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # (N, H, W) images
        return tags

    # -- input handling ------------------------------------------------------------------------
    def _unlabeled_mask(self, y: np.ndarray) -> np.ndarray:
        """Rows of ``y`` equal to ``unlabeled_label`` (string arrays also match its str form)."""
        ul = self.unlabeled_label
        if y.dtype.kind == "O":

            def same(v: Any) -> bool:
                try:
                    return bool(v == ul)
                except (TypeError, ValueError):  # e.g. an array-valued comparison
                    return False

            return np.fromiter((same(v) for v in y), dtype=bool, count=len(y))
        if y.dtype.kind in "US":
            return y == str(ul) if ul is not None else np.zeros(len(y), dtype=bool)
        if isinstance(ul, numbers.Number) and not isinstance(ul, bool):
            return y == ul
        return np.zeros(len(y), dtype=bool)

    def _texts(self, X: Any, reset: bool) -> list[str] | None:
        """``X`` as a list of strings when it is texts (a list, 1-d array or Series of
        ``str``), else None."""
        if isinstance(X, str):
            raise ValueError("X: expected a list of texts, got one string; wrap it in a list")
        if isinstance(X, (list, tuple)) or (getattr(X, "ndim", None) == 1):
            items = list(X.tolist() if hasattr(X, "tolist") else X)
            if items and all(isinstance(t, str) for t in items):
                if not reset and getattr(self, "input_kind_", None) != "texts":
                    raise ValueError(
                        f"X: texts, but this {type(self).__name__} was fitted on {self.input_kind_}"
                    )
                return items
            if any(isinstance(t, str) for t in items):
                bad = next(i for i, t in enumerate(items) if not isinstance(t, str))
                raise ValueError(
                    f"X: item {bad} is a {type(items[bad]).__name__}, not a string; texts must "
                    "all be strings"
                )
        if not reset and getattr(self, "input_kind_", None) == "texts":
            raise ValueError(
                f"X: this {type(self).__name__} was fitted on texts; pass a list of strings"
            )
        return None

    def _validate_X(self, X: Any, reset: bool, y: Any = None) -> tuple[np.ndarray, Any]:
        """Checked ``X`` (and 1-d ``y``): numeric, finite, 2-d features or 3/4-d images."""
        kwargs = {"allow_nd": True, "dtype": "numeric", "ensure_all_finite": True}
        if reset:
            X, y = validate_data(self, X, y, reset=True, **kwargs)
        else:
            X = validate_data(self, X, reset=False, **kwargs)
        if X.ndim not in (2, 3, 4):
            raise ValueError(
                f"X: expected (N, D) feature vectors or (N, H, W[, C]) images, got "
                f"an array of shape {X.shape}"
            )
        if not reset and X.shape[1:] != self.input_shape_:
            raise ValueError(
                f"X: samples have shape {X.shape[1:]}, but this "
                f"{type(self).__name__} was fitted on {self.input_shape_}"
            )
        return X, y

    def _check_params(self) -> None:
        if self.algorithm not in methods():
            raise ValueError(f"algorithm={self.algorithm!r} is not one of {sorted(methods())}")
        for name in ("max_iter", "batch_size", "uratio"):
            value = getattr(self, name)
            if value is None and name != "max_iter":  # derived, as the other doors derive it
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        verbose = self.verbose
        if not isinstance(verbose, numbers.Integral) or verbose < 0:
            raise ValueError(f"verbose must be an integer >= 0 or a bool; got {verbose!r}")
        for name in ("weak_noise", "strong_noise"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0; got {value!r}")
        if not isinstance(self.strong_dropout, numbers.Real) or not 0 <= self.strong_dropout < 1:
            raise ValueError(f"strong_dropout must be in [0, 1); got {self.strong_dropout!r}")
        if self.config is not None and not isinstance(self.config, dict):
            raise ValueError(
                f"config must be a dict of semimatch.Config fields or None; got "
                f"{type(self.config).__name__}"
            )
        clash = sorted(set(self.config or {}) & set(_OWN_FIELDS))
        if clash:
            raise ValueError(
                f"config={{{clash[0]!r}: ...}}: set it through the estimator "
                f"parameter {_OWN_FIELDS[clash[0]]!r} instead"
            )

    def _seed(self) -> int:
        rs = self.random_state
        if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
            if rs < 0:
                raise ValueError(f"random_state must be >= 0, a RandomState or None; got {rs}")
            return int(rs)
        return int(check_random_state(rs).randint(0, 2**31 - 1))

    def _make_config(self, backbone: str, features: bool) -> Config:
        # Defaults the user's config may change: one evaluation at the end (there is no test
        # set; it logs pseudo-label stats); for feature vectors, whose views are batched tensor
        # ops in the main process, no worker processes (they would cost more than they save)
        # and no channels_last (a layout of 4-d image tensors; feature batches are 2-d).
        settings: dict[str, Any] = {
            "eval_every": self.max_iter,
            "log_every": min(20, self.max_iter),
            "tensorboard": False,
            **({"num_workers": 0, "channels_last": False} if features else {}),
        }
        settings.update(self.config or {})
        try:
            return Config().replace(
                algorithm=self.algorithm,
                dataset="sklearn",
                num_labels=None,
                backbone=backbone,
                iterations=self.max_iter,
                batch_size=self.batch_size,
                uratio=self.uratio,
                lr=self.lr,
                weight_decay=self.weight_decay,
                device=self.device,
                precision=self.precision,
                seed=self._seed(),
                progress=bool(self.verbose),
                **settings,
            )
        except ConfigError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None

    def _dataset(
        self, X: np.ndarray, labels: np.ndarray, names: list[str]
    ) -> tuple[SSLDataset, str | nn.Module]:
        """The training data (a feature dataset for ``(N, D)`` ``X``, else images) and the
        backbone to train on it (``"auto"`` resolved to ``"mlp"`` for features)."""
        backbone = self.backbone
        if not isinstance(backbone, (str, nn.Module)):
            raise ValueError(
                f"backbone must be a model name or an nn.Module; got {type(backbone).__name__}"
            )
        if X.ndim == 2:
            if backbone == "auto":
                backbone = "mlp"
            if isinstance(backbone, str) and backbone != "mlp":
                raise ValueError(
                    f"backbone={backbone!r} takes images; for (N, D) feature vectors "
                    "use 'auto'/'mlp' or an nn.Module, or reshape X to (N, H, W[, C])"
                )
            return from_features(
                X,
                labels,
                name="sklearn",
                class_names=names,
                weak_noise=self.weak_noise,
                strong_noise=self.strong_noise,
                strong_dropout=self.strong_dropout,
            ), backbone
        try:
            data = from_arrays(X, labels, name="sklearn", class_names=names, hflip=bool(self.hflip))
        except ValueError as e:
            raise ValueError(f"X: {e}") from None
        return data, backbone

    def _text_dataset(
        self, texts: list[str], labels: np.ndarray, names: list[str]
    ) -> tuple[SSLDataset, str]:
        """Texts as a text dataset (tokenized by ``fit`` with the ``hf:`` backbone's tokenizer)."""
        from semimatch.data.text_datasets import from_texts

        if not (isinstance(self.backbone, str) and self.backbone.startswith("hf:")):
            raise ValueError(
                f"backbone={self.backbone!r} cannot read texts; pass backbone='hf:<model name or "
                "local folder>' (a Hugging Face encoder, e.g. 'hf:bert-base-uncased')"
            )
        # The labels are indices into classes_ (np.unique of y), whatever y's values were.
        data = from_texts(texts, labels, name="sklearn", class_names=names, label_kind="index")
        return data, self.backbone

    # -- fit -------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> SemiSupervisedClassifier:
        """Train on ``X`` with labels ``y`` (``unlabeled_label`` marks unlabeled rows).

        Returns ``self``.
        """
        from semimatch.api import train

        self._check_params()
        texts = self._texts(X, reset=True)
        if texts is not None:
            y = np.asarray(y)
            if y.ndim == 2 and y.shape[1] == 1:
                y = y.ravel()
            if y.shape != (len(texts),):
                raise ValueError(f"y: {y.shape} labels for {len(texts)} texts")
            for attr in ("n_features_in_", "feature_names_in_"):  # a refit on texts
                self.__dict__.pop(attr, None)
        else:
            X, y = self._validate_X(X, reset=True, y=y)
            y = np.asarray(y)
        classes, labels = self._encode_labels(y)

        names = [str(c) for c in classes]
        input_shape = (None,) if texts is not None else X.shape[1:]
        features = texts is None and X.ndim == 2
        if texts is not None:
            data, backbone = self._text_dataset(texts, labels, names)
        else:
            data, backbone = self._dataset(X, labels, names)

        model: nn.Module | None = None
        if isinstance(backbone, nn.Module):
            model = copy.deepcopy(backbone)  # fit must not change the parameter's weights
            backbone = f"custom:{type(backbone).__name__}"
        cfg = self._make_config(backbone, features=features)
        if backbone == "mlp":
            model = self._build_mlp(cfg.seed, len(classes), input_shape)

        with contextlib.nullcontext() if self.verbose else quiet():
            run = train(cfg, data=data, model=model)
        run.data = None  # keep the fitted estimator small (it is pickled by GridSearchCV etc.)
        if features:  # the standardisation from_features applied (and predict applies)
            self.feature_mean_ = np.asarray(run.info.spec.mean, dtype=np.float32)
            self.feature_scale_ = np.asarray(run.info.spec.std, dtype=np.float32)
        self.input_kind_ = "texts" if texts is not None else "features" if features else "images"
        self.input_shape_ = input_shape
        self.classes_ = classes
        self.run_ = run
        self.config_ = run.config
        self.model_ = run.eval_model("ema")
        self.n_iter_ = int(run.summary["iterations_done"])
        return self

    def _encode_labels(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the classes, int64 labels: the class index, -1 for unlabeled rows) of ``y``."""
        unlabeled = self._unlabeled_mask(y)
        y_lab = y[~unlabeled]
        if y_lab.size == 0:
            raise ValueError(
                f"y: every row is unlabeled (== {self.unlabeled_label!r}); label at "
                "least one sample of each class"
            )
        check_classification_targets(y_lab)
        try:
            classes, y_idx = np.unique(y_lab, return_inverse=True)
        except TypeError:
            raise ValueError(
                "y: labels mix types (e.g. strings and numbers); use one type and "
                "mark unlabeled rows with unlabeled_label"
            ) from None
        if len(classes) < 2:
            raise ValueError(
                f"y: the labeled rows hold only one class ({classes[0]!r}); a "
                "classifier needs labeled samples of at least 2 classes"
            )
        labels = np.full(len(y), -1, dtype=np.int64)
        labels[~unlabeled] = y_idx.reshape(-1)
        return classes, labels

    def _build_mlp(self, seed: int, num_classes: int, input_shape: tuple) -> nn.Module:
        """The ``"mlp"`` backbone: built here (fit cannot: it needs in_features), seeded like
        fit seeds its models."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            in_features = int(np.prod(input_shape))
            return build_model(
                "mlp",
                num_classes,
                in_features=in_features,
                hidden=tuple(self.hidden_layer_sizes),
            )

    # -- predict ---------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape ``(n_samples, n_classes)``, columns in ``classes_`` order."""
        check_is_fitted(self)
        texts = self._texts(X, reset=False)
        if texts is not None:
            return self.run_.predict_proba(texts).astype(np.float64)
        X, _ = self._validate_X(X, reset=False)
        # Images as uint8; feature vectors as they are (the run standardises them, as in fit).
        inputs = to_uint8_images(X, "X") if self.input_kind_ == "images" else X
        return self.run_.predict_proba(inputs).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (values of ``classes_``)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Accuracy on the labeled rows of ``(X, y)``; rows with ``unlabeled_label`` are ignored."""
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        labeled = ~self._unlabeled_mask(y)
        if not labeled.any():
            raise ValueError(
                f"y: every row is unlabeled (== {self.unlabeled_label!r}); score needs labeled rows"
            )
        pred = self.predict(X)
        sw = None if sample_weight is None else np.asarray(sample_weight)[labeled]
        return float(accuracy_score(y[labeled], pred[labeled], sample_weight=sw))
