"""Optimizers: fused Adam for dense parameters, a row-wise lazy Adam for the embedding table.

Dense Adam over a 1M-row embedding table touches all 17M values every step, although a batch looks up a few tens
of thousands of rows; that full pass is the largest avoidable cost of a CTR training step. :class:`RowwiseAdam`
updates only the rows a batch touched ("lazy Adam", as TensorFlow's ``LazyAdamOptimizer`` and
``torch.optim.SparseAdam``), in a handful of vectorised ops on those rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mtlrec.errors import UserError, unknown_name
from mtlrec.models.capabilities import GROUP_OPTIMIZERS


class RowwiseAdam(torch.optim.Optimizer):
    """Lazy Adam for embedding tables with sparse (or dense) gradients: only touched rows are updated.

    For the set ``U`` of rows with a gradient in this step (duplicates summed), with ``t`` the optimizer's step
    count::

        m[U] = β1 m[U] + (1-β1) g[U]          v[U] = β2 v[U] + (1-β2) g[U]²
        p[U] -= lr · (m[U] / (1-β1^t)) / (sqrt(v[U] / (1-β2^t)) + eps)

    Rows outside ``U`` keep their parameters and moments unchanged (their moments do not decay), exactly as
    ``torch.optim.SparseAdam``. Bias correction uses the global step count ``t`` (incremented on every ``step``
    that sees a gradient). ``weight_decay`` adds ``wd · p[U]`` to the gradient of the touched rows only (L2 on what
    the batch uses). The two moments of a row are stored side by side in one ``(rows, 2·dim)`` buffer
    (``state["moments"]``) so each step is one gather and one scatter of moments. A dense gradient is treated as
    touching every row (plain Adam). Works with ``state_dict``/``load_state_dict`` for exact resume.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"invalid betas {betas}")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"invalid eps {eps} or weight_decay {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's Optimizer.step signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["moments"] = torch.zeros(p.shape[0], 2 * p[0].numel(), dtype=p.dtype, device=p.device)
                state["step"] += 1
                t = float(state["step"])
                rows, g = _touched_rows(p.grad)
                self._update_rows(p, state["moments"], rows, g, group, beta1, beta2, t)
        return loss

    @staticmethod
    def _update_rows(
        p: torch.Tensor,
        moments: torch.Tensor,
        rows: torch.Tensor | None,
        g: torch.Tensor,
        group: dict,
        beta1: float,
        beta2: float,
        t: float,
    ) -> None:
        flat = p.view(p.shape[0], -1)
        g = g.reshape(g.shape[0], -1).to(p.dtype)
        d = flat.shape[1]
        if group["weight_decay"]:
            cur = flat if rows is None else flat.index_select(0, rows)
            g = g.add(cur, alpha=group["weight_decay"])
        mv = moments if rows is None else moments.index_select(0, rows)
        # elementwise ops on the (U, d) halves run several times faster on contiguous copies than on strided views
        m, v = mv[:, :d].contiguous(), mv[:, d:].contiguous()
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        if rows is None:
            moments.copy_(torch.cat([m, v], 1))
        else:
            moments.index_copy_(0, rows, torch.cat([m, v], 1))
        bc1 = 1.0 - beta1**t
        bc2 = 1.0 - beta2**t
        # update = -lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps), computed into a fresh (U, d) buffer
        denom = v.sqrt().div_(bc2**0.5).add_(group["eps"])
        upd = torch.div(m, denom).mul_(-group["lr"] / bc1)
        if rows is None:
            flat.add_(upd)
        else:
            flat.index_add_(0, rows, upd)


#: torch 2.13's CPU sort of 1-D integers is a (stable) radix sort from this size on (ATen's GRAIN_SIZE); tested
STABLE_SORT_MIN = 32768


def _touched_rows(grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(rows, per-row gradient)`` with duplicate rows summed; ``rows`` is None for a dense gradient.

    Bit for bit what ``grad.coalesce()`` gives: the rows in increasing order, each row's duplicates added in the
    order of coalesce's sort. Two ways to get there, chosen by size:

    * by default, sort the row ids and sum each run of equal ids with one ``index_add_`` (coalesce adds row by
      row: 1.4-2x slower for 53k lookups into 1M rows);
    * with at least as many lookups as table rows (MemoNet's codebook: 2.7M lookups into 200k rows), add every
      lookup into a zeroed table-sized buffer in lookup order and read back the rows that have a lookup: no
      sort and no permuted copy of the values (3x faster there). Lookup order is the sorted order only where
      torch's CPU sort is stable, i.e. its radix sort of at least :data:`STABLE_SORT_MIN` integers (below that it
      is not, so smaller gradients take the sort).
    """
    if not grad.is_sparse:
        return None, grad
    if grad.is_coalesced():
        return grad.indices()[0], grad.values()
    ids = grad._indices()[0]
    values = grad._values().reshape(ids.numel(), -1)
    num_rows = grad.shape[0]
    if ids.numel() >= max(num_rows, STABLE_SORT_MIN):
        summed = values.new_zeros(num_rows, values.shape[1]).index_add_(0, ids, values)
        rows = torch.bincount(ids, minlength=num_rows).nonzero().squeeze(1)  # the touched rows, in order
        return rows, summed.index_select(0, rows).view(rows.numel(), *grad.shape[1:])
    sorted_ids, order = ids.sort()
    rows, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    segment = torch.repeat_interleave(torch.arange(rows.numel(), device=ids.device), counts)
    summed = values.new_zeros(rows.numel(), values.shape[1]).index_add_(0, segment, values.index_select(0, order))
    return rows, summed.view(rows.numel(), *grad.shape[1:])


EMBEDDING_OPTIMIZERS = ("adam", "adagrad")
#: the eps of each embedding optimizer; TorchRec's fused optimizer of the sharded tables is given the same one
EMBEDDING_EPS = {"adam": 1e-8, "adagrad": 1e-10}


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(dense, embedding tables): the tables are the weights of ``nn.Embedding(sparse=True)`` modules and what a
    module's ``table_parameters()`` names (the TorchRec backend's unsharded tables). Parameters an optimizer
    updates inside the backward pass (TorchRec's sharded tables, marked ``_in_backward_optimizers``) are in
    neither group."""
    sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
    sparse_ids |= {id(p) for m in model.modules() if hasattr(m, "table_parameters") for p in m.table_parameters()}
    dense, sparse = [], []
    for p in model.parameters():
        if p.requires_grad and not hasattr(p, "_in_backward_optimizers"):
            (sparse if id(p) in sparse_ids else dense).append(p)
    return dense, sparse


def embedding_optimizer(params: list[nn.Parameter], kind: str, lr: float) -> torch.optim.Optimizer:
    """The optimizer of the embedding tables: ``adam`` is :class:`RowwiseAdam` (lazy Adam), ``adagrad`` is
    ``torch.optim.Adagrad`` (lazy by nature: a row without gradient keeps its weights and accumulator)."""
    if kind == "adam":
        return RowwiseAdam(params, lr=lr, eps=EMBEDDING_EPS["adam"])
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=EMBEDDING_EPS["adagrad"])
    raise ValueError(f"embedding optimizer must be one of {EMBEDDING_OPTIMIZERS}, got {kind!r}")


def build_optimizers(
    model: nn.Module,
    lr: float,
    *,
    embedding_lr: float | None = None,
    weight_decay: float = 0.0,
    groups: list[dict] | None = None,
    embedding_kind: str = "adam",
) -> list[torch.optim.Optimizer]:
    """Adam (``fused=True`` where the build supports it) on dense parameters; :func:`embedding_optimizer`
    (``embedding_kind``: ``adam``, lazy Adam, or ``adagrad``) on the embedding tables. ``groups``
    (:class:`~mtlrec.models.capabilities.OptimizerGroups`): parameters with their own optimizer (``adam`` or
    ``sgd``, ``lr`` None = ``lr``), left out of the default groups; their optimizers come last."""
    groups = [g for g in groups or [] if g["params"]]
    own = [id(p) for g in groups for p in g["params"]]
    if len(own) != len(set(own)):
        raise UserError("optimizer groups: a parameter is claimed by two groups (" + ", ".join(_names(groups)) + ")")
    claimed = set(own)
    dense, sparse = split_parameters(model)
    dense = [p for p in dense if id(p) not in claimed]
    sparse = [p for p in sparse if id(p) not in claimed]
    opts: list[torch.optim.Optimizer] = []
    if dense:
        opts.append(_adam(dense, lr, weight_decay))
    if sparse:
        opts.append(embedding_optimizer(sparse, embedding_kind, embedding_lr or lr))
    for g in groups:
        kind, glr = g.get("optimizer", "adam"), g.get("lr") or lr
        if kind == "adam":
            opts.append(_adam(g["params"], glr, weight_decay))
        elif kind == "sgd":
            opts.append(
                torch.optim.SGD(g["params"], lr=glr, momentum=g.get("momentum", 0.0), weight_decay=weight_decay)
            )
        else:
            raise unknown_name("optimizer", kind, GROUP_OPTIMIZERS, where=f"optimizer group {g.get('name')!r}")
    return opts


def _names(groups: list[dict]) -> list[str]:
    return [str(g.get("name")) for g in groups]


def _adam(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
