"""DTN: Deep Multiple Task-specific Feature Interactions Network (Bi et al., arXiv 2408.11611; MODELS.md Part C).

Follows the authors' TF code ``rec-dtn/dtn-model/code/aliccp/DTN.py`` (MODELS.md C.1), with the paper figure's
reading available as options:

* Input ``x = Norm(flatten(E))``. [A] ``input_norm="affine"`` (default): the code calls batch normalisation with
  ``training=False``, which acts as a learnable per-dimension affine map; ``"batchnorm"`` and ``"none"`` also exist.
* Multiple-feature-interaction (MFI) blocks: ``T`` task-specific branches plus ``num_shared`` shared branches, each
  with its own FI modules (``fi_modules``, default MaskNet, MemoNet, GDCN; separate parameters), every one mapping to
  ``fi_dim`` (256):

  - MaskNet: parallel, 2 MaskBlocks, aggregation width 256 (``masknet_agg_dim``), block FFN 128, no embedding LN,
    then MLP [256, 256] (:class:`~mtlrec.layers.interactions.MaskNet`);
  - GDCN: 2 gated cross layers on ``x`` then a linear ``Dense(fi_dim)`` (:class:`GatedCrossNetwork`);
  - MemoNet: HCNet (2 hashes, shared codebook, linear restoring) over the second-order crosses of the sparse fields,
    concatenated with ``x`` then a linear ``Dense(fi_dim)`` (:class:`HashCodebook`). [A] the code does not shrink the
    crosses; here they are sum-shrunk to one vector per field (``memonet_shrink="sum"``; ``"global_attentive"`` is
    GAS) because the module offers no unshrunk output; ``num_buckets`` defaults to 100 000 as in the code;
    ``memonet_fields="sparse"`` crosses the categorical and multi-valued fields (``"all"`` adds numeric ones; a
    list of field names crosses only those, as MemoNet's key-interaction-field variant does).

* Task ``i``: the self set ``S_i`` is branch ``i``'s FI outputs; the other set ``O_i`` is every other task branch's
  outputs plus the shared branches'. Task-sensitive network (TSN): for each listed edge ``(i : j)`` every ``F`` of
  branch ``j`` in ``O_i`` is replaced by ``F · sg(p̂_j)`` (``p̂_j`` the prediction of task ``j``, gradient stopped).
  The mapping uses the tasks' original indices, so it is right for any number of tasks (the official code re-indexes
  after removing task ``i``, which is only correct for two tasks; MODELS.md C.1 note 4). ``tsn``: ``"cascade"``
  (default [A]: each task uses every earlier task of the task list, which is the code's ``"cvr:ctr"`` for
  (ctr, cvr)), ``"none"``, or a list of ``"task_i:task_j"`` edges; it must be acyclic, and task predictions are
  computed in a topological order. [A] ``p̂_j`` is recomputed from task ``j``'s tower without gradient (the sigmoid
  for binary tasks, the raw value for regression), so with tower dropout it is a different dropout sample.
* Gating network (GN): ``gate_from="fi_output"`` (default, the code): one scalar logit per FI vector,
  ``s(F) = ReLU(w_F^T F + b_F)``, with separate weights per task and vector; ``"input"`` (the figure): the logits are
  a linear map of ``x``. Two separate softmaxes, over ``S_i`` and over ``O_i``.
* Combination: ``combine="sum"`` (default, the code): ``z_i = Σ_{O_i} b_F F + Σ_{S_i} a_F F``; ``"concat"`` (the
  figure): ``[Σ_{S_i} a_F F ; Σ_{O_i} b_F F]``.
* Towers FC128-ReLU → FC64-ReLU → FC1 (``tower_hidden=(128, 64)`` by default).

Not reproduced (trainer/data matters, not the model): the weighted BCE with ``pos_weight`` (200, 3000), L2 1e-4 on the
FC weights (use the optimiser's weight decay; ``embedding_l2`` covers the embeddings), the serving score
``0.995·p̂_ctr + 0.005·p̂_cvr``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.data.batches import Batch
from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.interactions import GatedCrossNetwork, HashCodebook, MaskNet
from mtlrec.layers.interactions.stacked import (
    CrossLookup,
    StackedGatedCross,
    StackedHashCodebook,
    StackedLinear,
    StackedParallelMaskNet,
)
from mtlrec.models.base import EmbeddedInputs, MultiTaskModel
from mtlrec.models.ctr.base import field_ids
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec

FI_MODULES = ("masknet", "memonet", "gdcn")


@dataclasses.dataclass
class DTNInputs(EmbeddedInputs):
    """:class:`EmbeddedInputs` plus the per-field raw values ``ids (B, F)`` that MemoNet hashes."""

    ids: torch.Tensor | None = None


class _GDCNBranch(nn.Module):
    def __init__(self, input_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        self.cross = GatedCrossNetwork(input_dim, num_layers)
        self.proj = nn.Linear(input_dim, out_dim)

    def forward(self, x: torch.Tensor, E: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        return self.proj(self.cross(x))


class _MaskNetBranch(nn.Module):
    def __init__(self, num_fields: int, dim: int, out_dim: int, agg_dim: int, block_dim: int, hidden: Sequence[int]):
        super().__init__()
        m = num_fields * dim
        self.net = MaskNet(
            num_fields,
            dim,
            mode="parallel",
            num_blocks=2,
            block_dim=block_dim,
            reduction_ratio=agg_dim / m,
            hidden=list(hidden),
            emb_layer_norm=False,
        )
        self.proj = nn.Linear(self.net.out_dim, out_dim) if self.net.out_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, E: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        return self.proj(self.net(E))


class _MemoNetBranch(nn.Module):
    def __init__(self, cross_fields: list[int], dim: int, input_dim: int, out_dim: int, **hc_kw) -> None:
        super().__init__()
        self.register_buffer("cross_fields", torch.tensor(cross_fields, dtype=torch.long), persistent=False)
        self.hc = HashCodebook(len(cross_fields), dim, **hc_kw)
        self.proj = nn.Linear(self.hc.out_dim + input_dim, out_dim)

    def forward(self, x: torch.Tensor, E: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        assert ids is not None
        k = self.cross_fields
        return self.proj(torch.cat([self.hc(ids[:, k], E[:, k]), x], 1))


class StackedBranches(nn.Module):
    """The FI modules of ``n`` branches evaluated together (:mod:`mtlrec.layers.interactions.stacked`): one batched
    product per layer for all branches, one codebook lookup. Built from the per-branch modules above, so the
    initialisation is theirs; ``forward(h, E, lookup)`` (``lookup``: :meth:`cross_lookup` of the field values)
    returns one ``(n, B, fi_dim)`` per module, in ``kinds`` order (the per-branch modules' outputs up to float
    rounding; tested)."""

    def __init__(self, branches: Sequence[nn.ModuleList], kinds: Sequence[str]) -> None:
        super().__init__()
        self.kinds, self.num_branches = list(kinds), len(branches)
        self.nets, self.projs = nn.ModuleDict(), nn.ModuleDict()
        for k, kind in enumerate(self.kinds):
            mods = [branch[k] for branch in branches]
            if kind == "gdcn":
                self.nets[kind] = StackedGatedCross.from_modules([m.cross for m in mods])
            elif kind == "masknet":
                self.nets[kind] = StackedParallelMaskNet.from_modules([m.net for m in mods])
            else:
                self.nets[kind] = StackedHashCodebook.from_modules([m.hc for m in mods])
                self.register_buffer("cross_fields", mods[0].cross_fields.clone(), persistent=False)
            proj = [m.proj for m in mods]
            self.projs[kind] = nn.Identity() if isinstance(proj[0], nn.Identity) else StackedLinear.from_modules(proj)

    def cross_lookup(self, ids: torch.Tensor) -> CrossLookup:
        """Where ``ids (B, F)``'s cross tokens address the codebooks (the same for every group built with the
        same hash seed, so DTN computes it once for its task and shared branches)."""
        return self.nets["memonet"].lookup(ids[:, self.cross_fields])

    def forward(self, h: torch.Tensor, E: torch.Tensor, lookup: CrossLookup | None) -> list[torch.Tensor]:
        outs = []
        for kind in self.kinds:
            if kind == "gdcn":
                y = self.nets[kind](h)
            elif kind == "masknet":
                y = self.nets[kind](E)
            else:
                assert lookup is not None
                z = self.nets[kind](lookup, E[:, self.cross_fields])
                y = torch.cat([z, h.expand(self.num_branches, *h.shape)], -1)
            outs.append(self.projs[kind](y))
        return outs


def parse_tsn(spec: str | Sequence[str] | Sequence[tuple[int, int]], task_names: list[str]) -> list[tuple[int, int]]:
    """TSN edges ``(i, j)``: task ``i`` scales task branch ``j`` by ``sg(p̂_j)``; original task indices."""
    T = len(task_names)
    if isinstance(spec, str):
        if spec == "cascade":
            return [(i, j) for i in range(T) for j in range(i)]
        if spec == "none":
            return []
        spec = [s for s in spec.split(",") if s]
    edges = []
    for e in spec:
        if isinstance(e, str):
            a, sep, b = e.partition(":")
            if not sep or a not in task_names or b not in task_names:
                raise ValueError(f"TSN edge {e!r} must be 'task:other_task' with tasks in {task_names}")
            i, j = task_names.index(a), task_names.index(b)
        else:
            i, j = int(e[0]), int(e[1])
        if i == j:
            raise ValueError(f"TSN edge {e!r} links a task to itself")
        edges.append((i, j))
    return sorted(set(edges))


def topological_order(num_tasks: int, edges: list[tuple[int, int]]) -> list[int]:
    """Tasks ordered so that every source ``j`` of an edge ``(i, j)`` comes before ``i``; raises on cycles."""
    deps = {i: {j for a, j in edges if a == i} for i in range(num_tasks)}
    order: list[int] = []
    while len(order) < num_tasks:
        ready = [i for i in range(num_tasks) if i not in order and deps[i] <= set(order)]
        if not ready:
            raise ValueError(f"TSN edges {edges} contain a cycle")
        order.append(ready[0])
    return order


@register_model("dtn", family="multi_task", paper="Bi et al., arXiv 2408.11611 (DTN); code rec-dtn/dtn-model")
class DTN(MultiTaskModel):
    """DTN: task-specific and shared MFI blocks (MaskNet, MemoNet, GDCN), gating network and task-sensitive network.

    See the module docstring for the structure and every [A] choice (``input_norm``, ``gate_from``, ``combine``,
    ``tsn``, MemoNet shrinking and fields).
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        fi_modules: Sequence[str] = FI_MODULES,
        fi_dim: int = 256,
        num_shared: int = 1,
        tsn: str | Sequence[str] = "cascade",
        gate_from: str = "fi_output",
        combine: str = "sum",
        input_norm: str = "affine",
        gdcn_layers: int = 2,
        masknet_agg_dim: int = 256,
        masknet_block_dim: int = 128,
        masknet_hidden: Sequence[int] = (256, 256),
        num_buckets: int = 100_000,
        num_hashes: int = 2,
        memonet_shrink: str = "sum",
        memonet_fields: str | Sequence[str] = "sparse",
        hash_seed: int = 0,
        tower_hidden: Sequence[int] | dict[str, Sequence[int]] = (128, 64),
        **kw,
    ) -> None:
        super().__init__(layout, tasks, tower_hidden=tower_hidden, **kw)
        unknown = set(fi_modules) - set(FI_MODULES)
        if unknown or not fi_modules:
            raise ValueError(f"fi_modules must be a non-empty subset of {FI_MODULES}, got {list(fi_modules)}")
        if gate_from not in ("fi_output", "input"):
            raise ValueError(f"gate_from must be 'fi_output' or 'input', got {gate_from!r}")
        if combine not in ("sum", "concat"):
            raise ValueError(f"combine must be 'sum' or 'concat', got {combine!r}")
        if input_norm not in ("affine", "batchnorm", "none"):
            raise ValueError(f"input_norm must be 'affine', 'batchnorm' or 'none', got {input_norm!r}")
        if num_shared < 0 or (num_shared == 0 and len(self.tasks) == 1):
            raise ValueError("DTN needs at least one other branch (a shared one or another task)")
        T, D, Fn = len(self.tasks), self.embedding_dim, self.num_fields
        self.fi_modules, self.fi_dim, self.num_shared = list(fi_modules), fi_dim, num_shared
        self.gate_from, self.combine = gate_from, combine
        self.edges = parse_tsn(tsn, self.task_names)
        self.order = topological_order(T, self.edges)
        self.sources = sorted({j for _, j in self.edges})
        d = self.input_dim
        if input_norm == "affine":
            self.input_norm: nn.Module = _Affine(d)
        elif input_norm == "batchnorm":
            self.input_norm = nn.BatchNorm1d(d)
        else:
            self.input_norm = nn.Identity()
        self.cross_fields = self._cross_fields(memonet_fields)
        if "memonet" in self.fi_modules and len(self.cross_fields) < 2:
            raise ValueError(f"MemoNet needs at least two fields to cross, got {len(self.cross_fields)}")
        sparse = self.embedding.table.sparse

        def make(kind: str) -> nn.Module:
            if kind == "gdcn":
                return _GDCNBranch(d, fi_dim, gdcn_layers)
            if kind == "masknet":
                return _MaskNetBranch(Fn, D, fi_dim, masknet_agg_dim, masknet_block_dim, masknet_hidden)
            return _MemoNetBranch(
                self.cross_fields,
                D,
                d,
                fi_dim,
                num_buckets=num_buckets,
                num_hashes=num_hashes,
                shrink=memonet_shrink,
                sparse=sparse,
                seed=hash_seed,
            )

        n_branches = T + num_shared
        # built per branch (the initialisation of the paper's structure), evaluated stacked: the task branches
        # and the shared ones apart, so that the shared parameters stay separate tensors (gradient weighting)
        branches = [nn.ModuleList(make(k) for k in self.fi_modules) for _ in range(n_branches)]
        self.task_branches = StackedBranches(branches[:T], self.fi_modules)
        self.shared_branches = StackedBranches(branches[T:], self.fi_modules) if num_shared else None
        if "memonet" in self.fi_modules and self.shared_branches is not None:  # one cross lookup serves both
            assert self.task_branches.nets["memonet"].same_hashes(self.shared_branches.nets["memonet"])
        M = len(self.fi_modules)
        self.num_vectors = N = n_branches * M
        # vector n belongs to branch n // M; branches 0..T-1 are the tasks', the rest shared
        branch_of = torch.arange(N) // M
        self_mask = branch_of.unsqueeze(0) == torch.arange(T).unsqueeze(1)  # (T, N)
        self.register_buffer("self_mask", self_mask, persistent=False)
        self.register_buffer("branch_of", branch_of, persistent=False)
        if gate_from == "fi_output":
            self.gate_weight = nn.Parameter(torch.empty(T, N, fi_dim).uniform_(-(fi_dim**-0.5), fi_dim**-0.5))
            self.gate_bias = nn.Parameter(torch.zeros(T, N))
        else:
            self.gate_input = nn.Linear(d, T * N)
        self.last_gates: dict[str, torch.Tensor] = {}  # task → (B, N) gate weights of the last forward
        self.last_tsn: dict[str, torch.Tensor] = {}
        self.build_towers(fi_dim * (2 if combine == "concat" else 1))

    def _cross_fields(self, spec: str | Sequence[str]) -> list[int]:
        """Indices (in the embedding's field order) of the fields whose pairs MemoNet memorises."""
        names = self.layout.field_names[: self.num_fields]
        if spec == "all":
            return list(range(self.num_fields))
        if spec == "sparse":
            return list(range(len(self.layout.categorical) + len(self.layout.multi_valued)))
        if isinstance(spec, str):
            raise ValueError(f"memonet_fields must be 'sparse', 'all' or a list of field names, got {spec!r}")
        unknown = [f for f in spec if f not in names]
        if unknown:
            raise ValueError(f"memonet_fields: unknown fields {unknown}; the model's fields are {names}")
        return [names.index(f) for f in spec]

    # ---- inputs --------------------------------------------------------------------------------------------
    def embed(self, batch: Batch) -> DTNInputs:
        base = super().embed(batch)
        ids = field_ids(batch, self.layout, self.numeric_mode == "embed") if "memonet" in self.fi_modules else None
        return DTNInputs(base.fields, base.dense, ids=ids)

    def fi_outputs(self, x: DTNInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, V)``: the normalised flat input and all FI outputs stacked ``(B, N, fi_dim)``, branch-major."""
        h = self.input_norm(x.flat())
        groups = [g for g in (self.task_branches, self.shared_branches) if g is not None]
        lookup = self.task_branches.cross_lookup(x.ids) if x.ids is not None else None
        # every (B, fi_dim) output stacked straight into (B, N, fi_dim) order, branch-major: one copy, after which
        # every task's gating products read contiguous (N, fi_dim) blocks
        vectors = []
        for group in groups:
            per_kind = [y.unbind(0) for y in group(h, x.fields, lookup)]
            vectors += [v for branch in zip(*per_kind, strict=True) for v in branch]
        return h, torch.stack(vectors, 1)

    def task_input(self, t: int, h: torch.Tensor, V: torch.Tensor, coef_t: torch.Tensor) -> torch.Tensor:
        """Tower input of task ``t`` from ``V`` and the TSN scales ``coef_t (B, N)``."""
        if self.gate_from == "fi_output":
            w, b = self.gate_weight[t], self.gate_bias[t]
            # a broadcast product and a sum: as a batched product (an einsum) its backward is rank-1 GEMMs, 3x slower
            logits = torch.relu((V * w.to(V.dtype)).sum(-1) * coef_t + b)
        else:
            n = self.num_vectors
            logits = torch.nn.functional.linear(h, self.gate_input.weight[t * n : (t + 1) * n])
            logits = logits + self.gate_input.bias[t * n : (t + 1) * n]
        own = self.self_mask[t]
        a = torch.softmax(logits.masked_fill(~own, float("-inf")), -1)  # over S_t
        b = torch.softmax(logits.masked_fill(own, float("-inf")), -1)  # over O_t
        # z_self = Σ_n a_n (c_n V_n) and z_other = Σ_n b_n (c_n V_n) as one batched product (B, rows, N) @ (B, N, d)
        # with the TSN scales folded into the gate rows instead of scaling every (N, d) block of V; "sum" is the one
        # row (a + b) c (S_t and O_t are disjoint), "concat" the two rows [a c; b c]
        gates = (a + b).unsqueeze(1) if self.combine == "sum" else torch.stack([a, b], 1)
        self.last_gates[self.task_names[t]] = (a + b).detach()
        return torch.bmm(gates * coef_t.unsqueeze(1), V).flatten(1)  # (B, fi_dim) or (B, 2 · fi_dim)

    def _prediction(self, t: int, z: torch.Tensor) -> torch.Tensor:
        """``sg(p̂_t)`` from task ``t``'s tower input (sigmoid for binary tasks, the value for regression)."""
        name = self.task_names[t]
        with torch.no_grad():
            out = self.heads[name](self.towers[name](z)).squeeze(-1)
        return torch.sigmoid(out) if self.tasks[t].type == "binary" else out

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        h, V = self.fi_outputs(x)  # type: ignore[arg-type]
        B = V.shape[0]
        self.last_gates = {}
        self.last_tsn = {}
        inputs: list[torch.Tensor | None] = [None] * len(self.tasks)
        preds: dict[int, torch.Tensor] = {}
        for t in self.order:
            coef = V.new_ones(B, self.num_vectors)
            for i, j in self.edges:
                if i == t:
                    coef = coef * torch.where(self.branch_of == j, preds[j].unsqueeze(-1), 1.0)
            inputs[t] = self.task_input(t, h, V, coef)
            if t in self.sources:
                preds[t] = self._prediction(t, inputs[t])
                self.last_tsn[self.task_names[t]] = preds[t]
        return [z for z in inputs if z is not None]

    def gate_summary(self) -> dict[str, torch.Tensor]:
        """Mean gate weight per (task, vector) over the last batch, with vectors named ``branch/module``."""
        return {t: g.mean(0) for t, g in self.last_gates.items()}

    def vector_names(self) -> list[str]:
        names = [*self.task_names, *(f"shared{k}" for k in range(self.num_shared))]
        return [f"{b}/{m}" for b in names for m in self.fi_modules]

    def shared_parameters(self) -> list[nn.Parameter]:
        """The input normalisation and the shared branches' dense parameters (hashed codebooks excluded)."""
        skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        mods = [self.input_norm] + ([self.shared_branches] if self.shared_branches is not None else [])
        return [p for m in mods for p in m.parameters() if id(p) not in skip and p.requires_grad]


class _Affine(nn.Module):
    """Learnable per-dimension ``γ ⊙ x + β`` (what the code's inference-mode batch normalisation computes)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain + self.bias
