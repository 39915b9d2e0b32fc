"""Hugging Face transformer backbones (``build_model("hf:<name or folder>", ...)``).

``HFClassifier`` is USB's text classifier (``semilearn/nets/bert/bert.py``) on any
``transformers.AutoModel`` encoder: the last hidden states, dropout 0.1 on them, the mean over
the **non-padding** tokens, then the head.  Two deliberate differences from USB's code: USB
takes ``torch.mean`` over every position of the dynamically padded batch (so a text's features
depend on the longest text it is batched with); here the mean is masked, so appending padding
never changes a text's logits.  And the encoder's own pooler (unused by mean pooling) is
removed, so every parameter receives a gradient (DDP needs no ``find_unused_parameters``).

Length-sorted chunks (on by default; ``HFClassifier(..., length_chunks=False)`` or
``build_model("hf:...", length_chunks=False)`` turns them off).  A batch is padded to its
longest text (the training step pads all three views to the longest of the step), so most of
its tokens can be padding.  The forward sorts the rows by their extent (the last position whose
mask is 1), splits them into a few chunks (``chunk_plan``: the split that minimises the sum
over chunks of rows x longest row + a per-call overhead), trims every chunk's padding to its own
longest row, runs the encoder per chunk and puts the pooled features back in the input's row
order.  In a BERT-style encoder a row's output does not depend on its batch-mates (masked
attention, per-token LayerNorm, no BatchNorm) nor on trailing padding, so the logits are those
of the single padded forward up to float rounding: exact math, hence the default.  What
changes: the rounding, and dropout draws its masks chunk by chunk (a different draw from the
same distribution, deterministic under the seed).  Image backbones are not affected.

Input format (what the training step passes as ``x``), recommended first:

* an integer tensor ``(N, 2, L)``: ``x[:, 0]`` the token ids, ``x[:, 1]`` the attention mask
  (1 = token, 0 = padding).  It is one tensor, so the step's ``torch.cat`` of the labeled and
  unlabeled batches, ``.to(device)``, DDP and evaluation's zero-row padding work unchanged
  (an all-zero row is all padding: its logits are finite and ignored).  ``pack_text`` builds it.
* a pair ``(input_ids, attention_mask)`` of ``(N, L)`` integer tensors;
* a mapping with keys ``"input_ids"`` and ``"attention_mask"`` (a tokenizer's output;
  ``"token_type_ids"`` is passed on when present).

``transformers`` is imported inside the functions only: ``import semimatch`` stays light.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHUNK_OVERHEAD",
    "HFClassifier",
    "build_hf",
    "chunk_plan",
    "sort_into_chunks",
    "max_positions",
    "load_tokenizer",
    "pack_text",
    "resolve_hf_source",
    "save_for_reload",
]

HEADS = ("mlp", "linear")

#: The cost of one more encoder call in token equivalents (``chunk_plan``): measured on
#: MiniLM-L6 (``benchmarks/chunk_overhead.py``: 1 thread, bf16 autocast, forward + backward,
#: 24 rows of 32 tokens in 1, 4 or 8 calls): 43-46 ms per extra call against 0.565 ms per
#: token (76-81 tokens), mostly the dense gradient of the word embedding (30,522 x 384) that
#: every call's backward builds.  See BENCHMARKS.md section 9b.
CHUNK_OVERHEAD = 80.0


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - the extra is installed in the test env
        raise ImportError(
            "'hf:' backbones need the optional packages transformers, tokenizers and "
            "safetensors: `pip install 'semimatch[text]'`"
        ) from e
    return transformers


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.endswith(("/", os.sep))


def resolve_hf_source(name: str, local_files_only: bool | None = None) -> tuple[str, bool]:
    """Where ``name`` (``"hf:"`` prefix optional) loads from: ``(source, local_files_only)``.

    An existing directory is a local folder: it is loaded with ``local_files_only=True`` and
    never touches the network.  A string that looks like a path (``/``, ``./``, ``~``...) but is
    not a directory is an error naming the absolute path looked at.  Anything else is a Hub
    model name, loaded from the Hugging Face cache (and downloaded unless
    ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``).
    """
    if not isinstance(name, str):
        raise ValueError(f"hf: the model must be a name or a folder (str), got {type(name)}")
    name = name.removeprefix("hf:")
    if not name:
        raise ValueError("hf: empty model name; use 'hf:<model name or local folder>'")
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), True
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"hf: no model folder at {path.resolve()} (looked for a directory holding "
            "config.json and the weights, e.g. made by save_pretrained)"
        )
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    return name, bool(local_files_only)


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub is a dependency of transformers
        return "the Hugging Face cache"


def _not_found(name: str, source: str, local: bool, what: str, err: Exception) -> OSError:
    folder = Path(source).expanduser().resolve()
    where = [f"a local folder {folder} (not a directory)"]
    if Path(source).is_dir():
        where = [f"the local folder {folder}"]
    else:
        where.append(f"the Hugging Face cache {_hub_cache()}")
        where.append(
            "not the Hub (offline: local_files_only / HF_HUB_OFFLINE=1)"
            if local
            else "the Hub (huggingface.co)"
        )
    # One line: transformers' own message runs over several lines and, offline, blames a
    # connection it never tried; the fix is ours.
    first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
    cause = "" if local and not Path(source).is_dir() else f" ({type(err).__name__}: {first})"
    fix = (
        ""
        if Path(source).is_dir()
        else f"; pass backbone='hf:<local folder>' (e.g. one written by save_pretrained), or "
        "download the model once where the Hub is reachable "
        f"(`hf download {name.removeprefix('hf:')}`), then it loads from the cache"
    )
    return OSError(
        f"hf: cannot load the {what} of {name!r}; looked in {'; '.join(where)}{cause}{fix}"
    )


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No "Loading weights" progress bar in a training log (restored afterwards)."""
    hf_logging = transformers.utils.logging
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def max_positions(name_or_folder: str, *, local_files_only: bool | None = None) -> int | None:
    """The longest sequence the encoder takes (its config's ``max_position_embeddings``; None
    if unset), read without loading the weights."""
    transformers = _import_transformers()
    source, local = resolve_hf_source(name_or_folder, local_files_only)
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as e:
        raise _not_found(name_or_folder, source, local, "config", e) from e
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def load_tokenizer(name_or_folder: str, *, local_files_only: bool | None = None) -> Any:
    """The ``transformers.AutoTokenizer`` of a model name or folder (``"hf:"`` prefix optional).

    A local folder is read with ``local_files_only=True`` (no network); a missing model raises
    ``OSError`` naming where it looked (see ``resolve_hf_source``).
    """
    transformers = _import_transformers()
    source, local = resolve_hf_source(name_or_folder, local_files_only)
    try:
        return transformers.AutoTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as e:
        raise _not_found(name_or_folder, source, local, "tokenizer", e) from e


def pack_text(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Stack ``(N, L)`` ids and mask into the recommended ``(N, 2, L)`` int64 model input."""
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            "pack_text: input_ids and attention_mask must both be (N, L), got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    return torch.stack([input_ids, attention_mask], dim=1).long()


def _unpack(x: Any) -> dict[str, torch.Tensor]:
    """The keyword arguments of the encoder from any accepted input format."""
    if isinstance(x, torch.Tensor):
        if x.dim() != 3 or x.shape[1] != 2:
            raise ValueError(
                "HFClassifier: a tensor input must be (N, 2, L) (token ids and attention mask "
                f"stacked; see pack_text), got shape {tuple(x.shape)}"
            )
        out = {"input_ids": x[:, 0], "attention_mask": x[:, 1]}
    elif isinstance(x, Mapping):
        missing = {"input_ids", "attention_mask"} - set(x)
        if missing:
            raise ValueError(f"HFClassifier: a mapping input needs the keys {sorted(missing)}")
        keys = ("input_ids", "attention_mask", "token_type_ids")
        out = {k: x[k] for k in keys if k in x}
    elif isinstance(x, (tuple, list)) and len(x) == 2:
        out = {"input_ids": x[0], "attention_mask": x[1]}
    else:
        raise ValueError(
            "HFClassifier: input must be an (N, 2, L) integer tensor, an (input_ids, "
            f"attention_mask) pair or a mapping with those keys, got {type(x).__name__}"
        )
    for k, v in out.items():
        if not isinstance(v, torch.Tensor) or v.dim() != 2 or v.is_floating_point():
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"HFClassifier: {k} must be an (N, L) integer tensor, got {got}")
    if out["input_ids"].shape != out["attention_mask"].shape:
        raise ValueError(
            f"HFClassifier: input_ids {tuple(out['input_ids'].shape)} and attention_mask "
            f"{tuple(out['attention_mask'].shape)} differ in shape"
        )
    return {k: v.long() for k, v in out.items()}


def _layer_stack(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's stack of blocks: the longest ``nn.ModuleList`` (``encoder.layer`` in BERT)."""
    best: tuple[str, nn.ModuleList] | None = None
    for qualname, m in backbone.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and (best is None or len(m) > len(best[1])):
            best = (qualname, m)
    if best is None:
        raise ValueError(f"{type(backbone).__name__} has no stack of layers (nn.ModuleList)")
    return best


def chunk_plan(lengths: list[int], overhead: float = CHUNK_OVERHEAD) -> list[tuple[int, int]]:
    """The chunks ``[(start, end), ...]`` of ascending ``lengths`` that minimise
    ``sum over chunks of (end - start) * lengths[end - 1] + overhead``.

    The cost model counts the tokens an encoder call processes (rows x its longest row: the
    linear layers, ``24 H^2`` FLOPs per token and layer, dominate the attention scores'
    ``4 L H``, a ratio ``L / 6H``: <= 6% for MiniLM at L = 128) plus a fixed cost per call.
    Chunks only break between different lengths (a break inside a run of equal lengths only
    adds an overhead); a dynamic program over the runs, O(runs^2), ties going to fewer and
    earlier breaks, so the plan is deterministic.
    """
    if any(b < a for a, b in zip(lengths, lengths[1:])):
        raise ValueError("chunk_plan: lengths must be sorted in ascending order")
    if not lengths:
        return []
    ends = [
        i + 1 for i in range(len(lengths)) if i + 1 == len(lengths) or lengths[i + 1] != lengths[i]
    ]
    starts = [0] + ends[:-1]
    best = [0.0] + [float("inf")] * len(ends)  # best[j]: the cheapest plan of runs 0..j-1
    back = [0] * (len(ends) + 1)
    for j in range(1, len(ends) + 1):
        longest = lengths[ends[j - 1] - 1]
        for i in range(j):
            cost = best[i] + (ends[j - 1] - starts[i]) * longest + overhead
            if cost < best[j]:
                best[j], back[j] = cost, i
    plan, j = [], len(ends)
    while j:
        i = back[j]
        plan.append((starts[i], ends[j - 1]))
        j = i
    return plan[::-1]


def sort_into_chunks(
    attention_mask: torch.Tensor, overhead: float = CHUNK_OVERHEAD
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, int]]]:
    """The length-sorted chunks of a batch: ``(rows, chunks)``.

    ``rows`` are the indices of the rows with at least one token (an all-padding row pools to
    zeros and needs no encoder call), sorted by extent (the last position whose mask is 1, so
    left padding is handled, without gain); ``chunks`` are ``(row indices, length)`` per
    encoder call, ``length`` the chunk's longest extent, as ``chunk_plan`` splits them.
    """
    width = attention_mask.shape[1]
    positions = torch.arange(1, width + 1, device=attention_mask.device)
    if width:
        extent = (positions * (attention_mask != 0)).amax(dim=1)
    else:  # no column: every row is empty
        extent = attention_mask.new_zeros(attention_mask.shape[0])
    order = torch.sort(extent, stable=True).indices
    lengths = extent[order].tolist()
    empty = sum(1 for n in lengths if n == 0)
    rows, lengths = order[empty:], lengths[empty:]
    plan = chunk_plan(lengths, overhead)
    return rows, [(rows[a:b], lengths[b - 1]) for a, b in plan]


class HFClassifier(nn.Module):
    """A transformer encoder, masked mean pooling, dropout and a classification head.

    ``forward(x)`` returns logits ``(N, num_classes)``; ``x`` is described in the module
    docstring (recommended: an ``(N, 2, L)`` integer tensor, ids then mask).  Dropout (USB: 0.1)
    acts on the last hidden states before pooling, as in USB.

    By default the encoder runs on length-sorted chunks, each trimmed to its own longest row
    (module docstring, ``chunk_plan``): the same logits as one padded forward up to float
    rounding, fewer padding FLOPs; dropout draws its masks chunk by chunk.

    Args:
        backbone: a ``transformers`` encoder (``AutoModel``) returning ``last_hidden_state``.
        num_classes: number of classes.
        dropout: dropout probability on the last hidden states.
        head: ``"mlp"`` (USB's: Linear(H, H), GELU, Linear(H, C)) or ``"linear"``
            (Linear(H, C)).
        length_chunks: run the encoder on length-sorted chunks trimmed to their longest row
            (default); False: one forward over the batch as padded (the previous behaviour,
            e.g. to reproduce its dropout draws).
        chunk_overhead: the cost of one more encoder call in tokens (``chunk_plan``); larger
            values give fewer chunks.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        dropout: float = 0.1,
        head: str = "mlp",
        *,
        length_chunks: bool = True,
        chunk_overhead: float = CHUNK_OVERHEAD,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"HFClassifier: head must be one of {HEADS}, got {head!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"HFClassifier: dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(length_chunks, bool):
            raise ValueError(
                f"HFClassifier: length_chunks must be True or False, got {length_chunks!r}"
            )
        if not (isinstance(chunk_overhead, (int, float)) and 0 <= chunk_overhead < float("inf")):
            raise ValueError(
                "HFClassifier: chunk_overhead must be a finite number of tokens >= 0 (the cost "
                f"of one more encoder call), got {chunk_overhead!r}"
            )
        self.length_chunks = length_chunks
        self.chunk_overhead = float(chunk_overhead)
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # unused by mean pooling: no parameter without a gradient
        self.backbone = backbone
        hidden = int(backbone.config.hidden_size)
        self.num_features = hidden
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        if head == "mlp":
            self.head: nn.Module = nn.Sequential(
                nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, num_classes)
            )
        else:
            self.head = nn.Linear(hidden, num_classes)
        self.head_kind = head

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the encoder takes (``max_position_embeddings``; None if unset):
        the cap of ``--max-length`` (BERT and MiniLM: 512)."""
        value = getattr(self.backbone.config, "max_position_embeddings", None)
        return int(value) if value else None

    def features(self, x: Any) -> torch.Tensor:
        """The pooled features ``(N, H)``: mean of the dropped-out last hidden states over the
        tokens whose mask is 1 (a row with no token gives zeros), by length-sorted chunks
        unless ``length_chunks=False``."""
        kwargs = _unpack(x)
        if not self.length_chunks:
            return self._pool(kwargs)
        rows, chunks = sort_into_chunks(kwargs["attention_mask"], self.chunk_overhead)
        n = kwargs["attention_mask"].shape[0]
        if not chunks:  # no token in the batch (or no row): the plain forward gives zeros
            return self._pool(kwargs)
        if len(chunks) == 1 and len(rows) == n:  # one chunk of every row: trim, keep the order
            return self._pool({k: v[:, : chunks[0][1]] for k, v in kwargs.items()})
        pooled = torch.cat(
            [self._pool({k: v[r, :L] for k, v in kwargs.items()}) for r, L in chunks]
        )
        return pooled.new_zeros(n, pooled.shape[1]).index_copy(0, rows, pooled)

    def _pool(self, kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One encoder call on the batch as given, dropout, masked mean."""
        hidden = self.backbone(**kwargs).last_hidden_state
        hidden = self.dropout(hidden)
        mask = kwargs["attention_mask"].to(hidden.dtype).unsqueeze(-1)
        total = (hidden * mask).sum(dim=1)
        return total / mask.sum(dim=1).clamp(min=1.0)

    def forward(self, x: Any) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.head(self.features(x))

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """Depth of every parameter for layer-wise learning-rate decay: ``(ids, num_layers)``.

        As USB's BERT ``group_matcher``: the embeddings (every encoder parameter before the
        layer stack) are layer 0, block ``i`` of the stack is layer ``i + 1``, and everything
        after it (a final norm, the head) is the top layer ``num_layers - 1 = L + 1``.  Names
        are those of ``self.named_parameters()``.
        """
        stack_name, stack = _layer_stack(self.backbone)
        prefix = f"backbone.{stack_name}."
        top = len(stack) + 1
        ids: dict[str, int] = {}
        seen_stack = False
        for name, _ in self.named_parameters():
            if name.startswith(prefix):
                ids[name] = int(name[len(prefix) :].split(".", 1)[0]) + 1
                seen_stack = True
            elif name.startswith("backbone.") and not seen_stack:
                ids[name] = 0
            else:
                ids[name] = top
        return ids, top + 1

    def extra_repr(self) -> str:
        chunks = f"{self.chunk_overhead:g}" if self.length_chunks else "off"
        return (
            f"pooling=masked-mean, head={self.head_kind}, num_classes={self.num_classes}, "
            f"length_chunks={chunks}"
        )


def build_hf(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    dropout: float = 0.1,
    head: str = "mlp",
    local_files_only: bool | None = None,
    length_chunks: bool = True,
    chunk_overhead: float = CHUNK_OVERHEAD,
) -> HFClassifier:
    """``HFClassifier`` on ``AutoModel`` of a model name or local folder (``"hf:"`` optional).

    Args:
        name: a Hub model name or a local folder (``save_pretrained`` layout: ``config.json``
            and ``model.safetensors``/``pytorch_model.bin``).  A folder never touches the
            network; a missing model raises ``OSError`` saying where it looked.
        num_classes: number of classes.
        pretrained: True loads the weights of the folder (or Hub model); False builds the
            encoder from its ``config.json`` with random weights (drawn from the global torch
            generator).  The head is always freshly initialised.
        dropout: dropout on the last hidden states (USB: 0.1).
        head: ``"mlp"`` (USB) or ``"linear"``.
        local_files_only: for Hub names, None follows ``HF_HUB_OFFLINE``; folders are always
            local.
        length_chunks, chunk_overhead: the length-sorted chunked forward (``HFClassifier``).
    """
    transformers = _import_transformers()
    source, local = resolve_hf_source(name, local_files_only)
    what = "weights" if pretrained else "config"
    try:
        with _quiet(transformers):
            if pretrained:
                backbone = transformers.AutoModel.from_pretrained(
                    source, local_files_only=local, dtype=torch.float32
                )
            else:
                config = transformers.AutoConfig.from_pretrained(source, local_files_only=local)
                backbone = transformers.AutoModel.from_config(config)
    except (OSError, ValueError) as e:
        raise _not_found(name, source, local, what, e) from e
    backbone = backbone.float()
    return HFClassifier(
        backbone,
        num_classes,
        dropout=dropout,
        head=head,
        length_chunks=length_chunks,
        chunk_overhead=chunk_overhead,
    )


def save_for_reload(folder: str | os.PathLike, tokenizer: Any, model: nn.Module) -> None:
    """Write ``tokenizer`` and the ``config.json`` of ``model``'s ``transformers`` encoder (if
    it has one) into ``folder``: with the checkpoint's weights, all a reload needs, so a run
    predicts after its source model folder is gone (``build_hf(folder, pretrained=False)``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(folder))
    encoder = getattr(model, "backbone", None)
    config = getattr(encoder, "config", None)
    if isinstance(model, HFClassifier) and hasattr(config, "save_pretrained"):
        config.save_pretrained(str(folder))
