"""The pre-flight memory check: will one training step fit in memory?  Asked before the run
directory is touched, so a batch that cannot fit costs nothing (``engine._set_up`` calls
``preflight`` once, on rank 0).

The peak of a step, per process, at ``b`` labeled rows (``B / world_size``), is

    resident (parameters + buffers, the EMA copy: already allocated when the check runs)
  + gradients (one copy of the trainable parameters)
  + optimiser state (SGD momentum: one copy; AdamW: two moments)
  + transient (one more copy: the fused ``foreach`` updates of the optimiser and the EMA;
    DDP's gradient buckets add another; the probe's copy of the model, below)
  + activations(rows) = a0 + a1 * rows, rows = the rows the backward runs over (``step_rows``,
    from the method's ``needs``, S strong views): b (1 + mu (1 + S)) for the joint forward,
    b (1 + mu S) for two-pass/split (the weak view runs without grad), b (1 + mu) for a
    weak-view student, b when supervised; a method that forwards every view itself (MixMatch)
    b (1 + mu (1 + S)), and one that forwards the model again with grad (VAT) b mu more (b mu
    per ``Needs.extra_forwards``: ReMixMatch's unmixed and rotated first strong view); plus the
    rows a method's own forward adds (``Needs.extra_rows``: CRMatch's rotations, b 4)
  + the data batch: b (1 + mu (1 + S)) rows, the one training and those prefetched.

Activations are *measured*, not guessed: a forward on 2 and on 4 rows of the data's own
samples, under the run's precision, with ``torch.autograd.graph.saved_tensors_hooks`` counting
the bytes of every distinct storage autograd keeps for the backward (parameters excluded);
the difference is the cost of two rows, the rest ``a0`` (e.g. bf16 copies of the weights).
Texts are probed at the longest sampled text; the ``hf:`` models' length-sorted chunks trim
every encoder call to its rows, so a step costs about rows x the mean length, and a padded
model rows x the longest (the attention's L^2 part makes per-token cost at the longest an
upper bound).  The backward frees those activations as it makes the gradients but holds a
layer's output and input gradients at once: two of the largest activation are added per row.
Estimate vs the measured high-water mark of a real step: ``docs/benchmarks/memory.md``,
"The pre-flight memory estimate" (0.76-1.19x on the standard image and MiniLM steps).  The probe
runs on a copy of the model (BatchNorm statistics, a model's own state) with the random
streams put back: the run is the one it would have been without the check.

The sum minus what is resident is compared with the memory available now: on CUDA
``torch.cuda.mem_get_info`` (plus what torch's allocator holds unused), elsewhere
``MemAvailable`` of ``/proc/meminfo`` or the cgroup's limit minus its usage, whichever is
lower, shared by the processes of this host under torchrun.  More than available: refused
(``ConfigError``, naming ``batch_size`` and the largest batch that fits with the margin);
within ``MARGIN`` of it: a warning.  ``memory_check=False`` skips the check.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semimatch.config import Config, ConfigError
from semimatch.log import logger
from semimatch.methods.consistency import Needs

__all__ = [
    "MARGIN",
    "StepMemory",
    "available_bytes",
    "check_step_memory",
    "estimate_step",
    "format_bytes",
    "is_out_of_memory",
    "step_rows",
]

#: An estimate within this factor of the available memory is uncertain: warn, do not refuse.
MARGIN = 1.5
_PROBE_ROWS = (2, 4)  # two batch sizes: their difference is the per-row cost
_LENGTH_SAMPLE = 256  # texts sampled for their token lengths


@dataclass(frozen=True)
class StepMemory:
    """The bytes of one training step per process (module docstring), at ``b`` labeled rows.

    ``rows_per_b`` rows with activations and ``data_rows_per_b`` rows of data per labeled row;
    ``act_per_row``/``data_per_row`` their bytes; ``world_size`` processes share the global
    batch ``B = b * world_size``.
    """

    resident: int  # parameters, buffers and the EMA copy (allocated before the check)
    grads: int
    optimizer: int
    transient: int
    act_fixed: int
    act_per_row: float
    rows_per_b: float
    data_per_row: float
    data_rows_per_b: float
    world_size: int = 1

    def extra(self, batch_size: int) -> int:
        """Bytes the step adds to the process at the *global* labeled batch ``batch_size``."""
        b = batch_size / self.world_size
        act = self.act_fixed + self.act_per_row * self.rows_per_b * b
        data = self.data_per_row * self.data_rows_per_b * b
        return int(self.grads + self.optimizer + self.transient + act + data)

    def peak(self, batch_size: int) -> int:
        """The step's peak: what it adds plus the model, buffers and EMA already held."""
        return self.resident + self.extra(batch_size)

    def largest_batch(self, available: float) -> int:
        """The largest global labeled batch (a multiple of ``world_size``) whose step adds at
        most ``available`` bytes; 0 if none does."""
        fixed = self.extra(0)
        per_b = self.act_per_row * self.rows_per_b + self.data_per_row * self.data_rows_per_b
        if available < fixed or per_b <= 0:
            return 0
        b = int((available - fixed) // per_b)
        return b * self.world_size


# ----------------------------------------------------------------------------------------------
# The estimate
# ----------------------------------------------------------------------------------------------
def estimate_step(
    net: nn.Module,
    cfg: Config,
    samples: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    ema: nn.Module | None = None,
    needs: Needs | None = None,
    device: torch.device | None = None,
    world_size: int = 1,
    tokens_per_row: float | None = None,
) -> StepMemory:
    """The memory of one step of ``net`` at ``cfg``'s batch (module docstring).

    ``samples``: a few rows of the data as the model takes them (a batch tensor; text: the
    ``(n, 2, L)`` token ids and masks of the longest sampled text, see ``probe_samples``);
    ``needs``: what the method's step forwards (``step_rows``; None: FixMatch's);
    ``tokens_per_row``: for text, the tokens a row costs in a step (a padded model: ``L``,
    length-sorted chunks: the mean length); ``None``: the probe's shape.
    """
    device = device or next(net.parameters()).device
    trainable = [p for p in net.parameters() if p.requires_grad]
    p_bytes = _nbytes(trainable)
    resident = _nbytes(net.parameters()) + _nbytes(net.buffers())
    if ema is not None:
        resident += _nbytes(ema.parameters()) + _nbytes(ema.buffers())
    n1, n2 = _PROBE_ROWS
    # A copy runs the probe: a forward changes BatchNorm statistics, and a model may count
    # its calls or keep other state that the run must not see.
    probe = copy.deepcopy(net).train()
    s1, _ = saved_bytes(probe, _rows(samples, n1).to(device), cfg, device)
    s2, largest = saved_bytes(probe, _rows(samples, n2).to(device), cfg, device)
    del probe
    per_row = max(s2 - s1, 0) / (n2 - n1)
    # The backward frees activations as it goes but holds the gradients of a layer's output
    # and input at once: two of the largest activation.
    per_row += 2 * largest / n2
    act_fixed = max(s1 - per_row * n1, 0)
    data_row = samples[0].numel() * samples.element_size()
    if tokens_per_row is not None and samples.dim() == 3:  # text: (n, 2, L)
        scale = tokens_per_row / max(samples.shape[-1], 1)
        per_row, data_row = per_row * scale, data_row * scale
    rows, data_rows = step_rows(needs or Needs(), cfg.uratio, cfg.forward_mode)
    # The batch in training, the next one prepared, and each worker's prefetched ones.
    data_copies = 2 + 2 * max(cfg.num_workers or 0, 0)
    # foreach updates (optimiser, EMA): one more copy of the parameters; DDP's buckets another;
    # the probe's model copy, freed before the step but often kept by the C allocator.
    model_bytes = _nbytes(net.parameters()) + _nbytes(net.buffers())
    transient = p_bytes * (2 if world_size > 1 else 1) + model_bytes
    return StepMemory(
        resident=resident,
        grads=p_bytes,
        optimizer=p_bytes * _state_copies(optimizer),
        transient=transient,
        act_fixed=int(act_fixed),
        act_per_row=per_row,
        rows_per_b=rows,
        data_per_row=data_row * data_copies,
        data_rows_per_b=data_rows,
        world_size=world_size,
    )


def step_rows(needs: Needs, mu: int, forward_mode: str) -> tuple[float, float]:
    """``(rows whose activations the backward keeps, rows of data)`` per labeled row of a step
    of a method with ``needs`` at ``mu`` unlabeled rows per labeled row (module docstring)."""
    if not needs.unlabeled:
        return 1.0, 1.0
    views = needs.strong_views
    data_rows = 1.0 + mu * (1 + views)
    if not needs.forward or (views and forward_mode == "joint"):
        rows = data_rows  # every view forwarded with grad (its own forward, or the joint one)
    else:  # two-pass/split: the weak view without grad; no strong view: the weak is the student
        rows = 1.0 + mu * max(views, 1)
    if needs.model and needs.forward:  # the method forwards the unlabeled rows again (VAT)
        rows += mu
    rows += mu * needs.extra_forwards  # more forwards of its own (ReMixMatch)
    return rows + needs.extra_rows, data_rows  # rows of its own per labeled row (CRMatch)


def saved_bytes(
    net: nn.Module, x: torch.Tensor, cfg: Config, device: torch.device
) -> tuple[int, int]:
    """Bytes autograd keeps for the backward of ``net(x)`` under ``cfg``'s precision (distinct
    storages, the parameters' own excluded), and the largest of them that has a row per row of
    ``x`` (an activation, not e.g. a cast copy of a weight).  The random streams are
    left as they were; ``net`` runs as it is (``estimate_step`` hands it a copy in train mode)."""
    from semimatch.training.recipe import autocast  # recipe builds models: imported where used

    own = {t.untyped_storage().data_ptr() for t in (*net.parameters(), *net.buffers())}
    seen: dict[int, int] = {}
    rows = x.shape[0]
    largest = 0  # the largest saved tensor with a row per input row (an activation)

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal largest
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # no plain storage (sparse, nested)
            return t
        ptr = storage.data_ptr()
        if ptr and ptr not in own:
            seen[ptr] = storage.nbytes()
            if t.dim() > 1 and t.shape[0] == rows:
                largest = max(largest, t.numel() * t.element_size())
        return t

    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch.enable_grad():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(cfg, device):
            out = net(x)
        seen.setdefault(-1, out.numel() * out.element_size())  # the logits themselves
        del out
    return sum(seen.values()), largest


def probe_samples(data: Any) -> tuple[torch.Tensor, float | None, float | None]:
    """A few rows of ``data``'s training samples as the model takes them, and for text the
    tokens per row (mean, longest) of a sample of the texts.

    Images and feature vectors: the first rows.  Text: the longest of a seeded sample of
    ``_LENGTH_SAMPLE`` texts, repeated (every probe row at that length).  The sample is drawn
    with its own generator: the run's random streams are untouched.
    """
    from semimatch.data.modalities import modality

    train, info = data.train, data.info
    mod = modality(info)
    stack = mod.stack
    n = len(train)
    if not mod.ragged:  # one shape: the first rows
        idx = np.arange(min(n, max(_PROBE_ROWS)))
        x = stack(train.gather(idx), getattr(train, "encoding", None))
        return _rows(x, max(_PROBE_ROWS)), None, None
    rng = np.random.default_rng(0)
    idx = rng.choice(n, size=min(n, _LENGTH_SAMPLE), replace=False)
    x = stack(train.gather(np.sort(idx)), train.encoding)  # (n, 2, L): ids, mask
    lengths = x[:, 1].sum(dim=1)
    longest = int(lengths.argmax())
    width = max(int(lengths[longest]), 1)
    row = x[longest : longest + 1, :, :width]
    return row.expand(max(_PROBE_ROWS), -1, -1).contiguous(), float(lengths.float().mean()), width


def _rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``x`` (repeated if it has fewer)."""
    reps = math.ceil(n / max(x.shape[0], 1))
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n] if reps > 1 else x[:n]


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _state_copies(optimizer: torch.optim.Optimizer | None) -> int:
    """Copies of the parameters the optimiser keeps (SGD momentum: 1, Adam(W): 2, AMSGrad 3)."""
    if optimizer is None:
        return 0
    if isinstance(optimizer, torch.optim.SGD):
        return int(any(g.get("momentum", 0) for g in optimizer.param_groups))
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return 3 if any(g.get("amsgrad") for g in optimizer.param_groups) else 2
    return 2  # an optimiser we do not know: assume Adam's two moments


# ----------------------------------------------------------------------------------------------
# What is available
# ----------------------------------------------------------------------------------------------
def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can get now: on CUDA the device's free memory plus what torch's
    allocator holds unused; on CPU the lower of ``MemAvailable`` and the cgroup's headroom.
    ``None`` where it cannot be known (then nothing is checked)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    found = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    return min(found) if found else None


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other Unix systems: free pages (an underestimate: page cache is not counted)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_headroom(root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit of this process's cgroup minus its usage (v2, else v1); None: no limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(root, limit_file).read_text().strip()
            usage = int(Path(root, usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
            return None
        return max(int(limit) - usage, 0)
    return None


def local_processes() -> int:
    """Processes of this job on this host (torchrun's ``LOCAL_WORLD_SIZE``; 1 outside it)."""
    try:
        return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


# ----------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------
def check_step_memory(
    est: StepMemory,
    cfg: Config,
    available: int | None,
    *,
    processes: int = 1,
    resuming: bool = False,
) -> None:
    """Refuse (``ConfigError``) a step that needs more than ``available`` bytes, warn within
    ``MARGIN`` of it.  ``processes`` on this host share ``available``; ``resuming``: the batch
    is the saved run's, so the fix is a new run."""
    if available is None:
        return
    share = available / max(processes, 1)
    need = est.extra(cfg.batch_size)
    if need <= share / MARGIN:
        return
    where = f"per process ({processes} on this host) " if processes > 1 else ""
    rows = f"{cfg.batch_size} labeled"
    if est.data_rows_per_b > 1:
        rows += f" + {round((est.data_rows_per_b - 1) * cfg.batch_size)} unlabeled rows"
    what = (
        f"one training step at batch_size={cfg.batch_size} ({rows}) needs about "
        f"{format_bytes(need)} more memory {where}but {format_bytes(share)} is available"
    )
    fits = est.largest_batch(share / MARGIN)
    if fits >= est.world_size:
        fix = f"use batch_size={fits} or less"
        if est.data_rows_per_b > 1:
            fix += f" (or a smaller uratio=, now {cfg.uratio})"
    else:
        fix = "even the smallest batch does not fit: free memory, use a smaller backbone" + (
            " or max_length" if est.data_per_row and cfg.max_length else ""
        )
    if resuming:
        fix = f"free memory, or start a new run ({fix})"
    if need > share:
        raise ConfigError(f"{what}; {fix} (memory_check=False skips this check)")
    logger.warning(f"{what}, close to the limit (the estimate may be off); if it fails, {fix}")


def preflight(
    cfg: Config,
    data: Any,
    net: nn.Module,
    algorithm: Any,
    optimizer: torch.optim.Optimizer,
    ema: nn.Module | None,
    device: torch.device,
    world_size: int = 1,
    resuming: bool = False,
) -> StepMemory | None:
    """The check ``fit`` runs before it writes anything (``cfg.memory_check``): the estimate of
    the configured step against the memory available; returns the estimate (None: skipped)."""
    if not cfg.memory_check:
        return None
    available = available_bytes(device)
    if available is None:
        return None
    chunked = getattr(net, "length_chunks", False)
    try:
        samples, mean_tokens, longest = probe_samples(data)
        est = estimate_step(
            net,
            cfg,
            samples,
            optimizer=optimizer,
            ema=ema,
            needs=algorithm.needs,
            device=device,
            world_size=world_size,
            tokens_per_row=mean_tokens if chunked else longest,
        )
    except Exception as e:  # a model the probe cannot run: the first step says why, in full
        logger.debug(f"memory check skipped: the probe failed ({type(e).__name__}: {e})")
        return None
    check_step_memory(est, cfg, available, processes=local_processes(), resuming=resuming)
    return est


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocator's out-of-memory error (CPU or accelerator)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(e, oom_type):
        return True
    text = str(e)
    # torch's CPU allocator: "DefaultCPUAllocator: can't allocate memory" (newer: "not enough
    # memory"); other backends say "out of memory".
    return isinstance(e, RuntimeError) and (
        "DefaultCPUAllocator" in text or "out of memory" in text.lower()
    )
