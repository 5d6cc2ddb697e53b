"""CoCon losses: the dense predictive NCE (L_cpc) and the cooperative losses (L_sync, L_sim).

Paper (Rai et al., Sec. 3)::

    L_cocon = L_cpc + lam * L_coop,   L_coop = L_sync + alpha * L_sim,   L_cpc = sum_v L_cpc^v

implemented by :func:`cocon_loss` as ``sum_views L_cpc + lam * sum_{view pairs} (L_sync + alpha * L_sim)``.

Two variants of the cooperative losses, chosen by ``variant``:

* ``"code"`` (**default**): what the public CoCon code computes (docs/model.md, reference study §4):
  per-block features h (B, N, D) pooled from z (2x2 max then 2x2 average at S = 4);
  ``L_sync = mean_{i,j} |cos_a(i,j) - cos_b(i,j)|`` over all (B*N)^2 block pairs and
  ``L_sim = 1/2 mean_pos (1 - cos) + 1/2 mean_neg max(0, cos)``.
* ``"paper"``: Eq. 2 and 3 read literally, with D = 1 - cos and h = z' = Pool(z) (Sec. 3: "we use
  h = z' giving us block level features"; A.4: Pool = stacked max pools, i.e. a global spatial max):
  ``L_sync = mean_{a,b} (D_a(a,b) - D_b(a,b))^2`` (the paper's sum divided by the number of pairs, so
  it does not grow with the batch) and ``L_sim = mean_pos D + mean_neg max(0, m - D)`` (the paper's
  ``sum_a D + mu * sum_{a!=b} max(0, 1 - D)`` divided by the number of instances, with mu = #pos/#neg,
  the value that makes both terms contribute equally, and margin m = 1).

Why ``"code"`` is the default: it is what produced the paper's reported numbers (the weights
``dot_wt = msync_wt = 10`` map to lam = 10, alpha = 1). Reading the paper closely, the two variants are
closer than they first look: both are per block (the paper itself says h = z'), both class-balance
L_sim, and with margin 1 the paper's hinge is max(0, cos) as in the code, so the paper's L_sim is exactly
2 x the code's (for the same features). What really differs: squared vs absolute differences in L_sync,
the factor 1/2 in L_sim (an effective alpha of 2 for the paper) and the pooling (max vs max-then-avg).

Distributed training: when ``torch.distributed`` is initialised and ``distributed=True`` every loss sees
the **global** batch. :func:`gather_batch` (the one helper all losses use) concatenates a tensor over all
ranks with the autograd-aware ``torch.distributed.nn.functional.all_gather``, so gradients flow back to
the rank that owns each sample. Convention (checked by tests/test_losses.py with 2 gloo processes):

* L_cpc: rows are the local predictions, columns every target of the global batch; the value on each
  rank is the mean over its own rows, so the mean over ranks equals the single-process loss on the
  global batch when every rank holds the same number of clips (DistributedSampler, drop_last=True).
* L_sync, L_sim: computed on the gathered global features; every rank gets the same (global) value.
* Gradients: after ``loss.backward()`` on every rank, each rank's local inputs hold ``world_size`` x the
  gradient of the global loss; DDP's gradient averaging (divide by world_size) makes the parameter
  gradients exactly those of one process on the global batch.

The public DPC code contrasts only the clips on the same GPU (DataParallel, DPC issue #17); CoCon's
trainer scores the DataParallel-gathered batch. Our gather reproduces CoCon's global negatives under DDP.

Sibling clips: UCF101 clips cut from the same source video ("groups" g01..g25 per class) are treated as
negatives by CoCon (false negatives). ``groups`` (B,) int64 ids with ``mask_group_negatives=True`` drop
other videos of the same group from the negatives of L_cpc and L_sim (default off = faithful).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cocon.models.networks import DPCOutput, l2_normalize

__all__ = [
    "VARIANTS",
    "DEFAULT_VARIANT",
    "DEFAULT_TEMPERATURE",
    "distributed_active",
    "gather_batch",
    "nce_mask",
    "cpc_loss",
    "pool_blocks",
    "coop_features",
    "sync_loss",
    "sim_loss",
    "coop_loss",
    "cocon_loss",
    "CoconLoss",
]

VARIANTS = ("code", "paper")
DEFAULT_VARIANT = "code"
DEFAULT_TEMPERATURE = 0.005  # paper's tau; CoCon's code divides both sides by 0.07, i.e. tau = 0.07**2 = 0.0049

# nce_mask codes (DPC)
POSITIVE, TEMPORAL_NEG, SPATIAL_NEG, EASY_NEG = 1, -1, -3, 0


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


# --------------------------------------------------------------------------------------------------
# distributed gather
# --------------------------------------------------------------------------------------------------


def distributed_active(distributed: bool = True) -> bool:
    """True when ``distributed`` and a torch.distributed process group with > 1 rank is initialised."""
    return bool(distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def _all_gather_autograd(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a functional-collectives op; same semantics
        warnings.simplefilter("ignore", FutureWarning)
        return all_gather(x)


def gather_batch(x: torch.Tensor, distributed: bool = True) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` (n_r, ...) along dim 0 over all ranks, keeping autograd.

    Returns ``(x_global, offset)``: x_global (sum_r n_r, ...) in rank order and ``offset`` = the index
    of this rank's first row in x_global. Ranks may hold different n_r (rows are padded for the
    collective and the padding dropped). The backward pass sums, on the owning rank, the gradients that
    every rank's loss sends to that rank's rows. Without an initialised multi-rank process group (or
    with ``distributed=False``) returns ``(x, 0)``. Works for integer tensors (no gradient) too."""
    if not distributed_active(distributed):
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes_t = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes_t, n)
    sizes = [int(s.item()) for s in sizes_t]
    nmax = max(sizes)
    xp = x if x.shape[0] == nmax else torch.cat([x, x.new_zeros((nmax - x.shape[0], *x.shape[1:]))])
    parts = _all_gather_autograd(xp.contiguous())
    out = torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)
    return out, sum(sizes[:rank])


# --------------------------------------------------------------------------------------------------
# L_cpc
# --------------------------------------------------------------------------------------------------


def nce_mask(B: int, P: int, S: int, device: torch.device | str | None = None) -> torch.Tensor:
    """DPC's mask over the dense NCE score matrix, int8 (B*P*S*S, B*P*S*S).

    Rows index predictions and columns targets, both flattened in (b, p, s) order with
    s = y * S + x, i.e. index = (b * P + p) * S*S + s. Codes:

    *  1 positive: same video b, same step p, same position s (the diagonal);
    * -1 temporal negative: same video and position, another step;
    * -3 spatial negative: same video, another position (any step);
    *  0 easy negative: another video.

    :func:`cpc_loss` treats every non-positive column as a negative with equal weight (as DPC/CoCon);
    the mask is for analysis (e.g. accuracy per negative type)."""
    b = torch.arange(B, device=device).repeat_interleave(P * S * S)
    p = torch.arange(P, device=device).repeat_interleave(S * S).repeat(B)
    s = torch.arange(S * S, device=device).repeat(B * P)
    same_b = b[:, None] == b[None, :]
    same_p = p[:, None] == p[None, :]
    same_s = s[:, None] == s[None, :]
    mask = torch.zeros(b.numel(), b.numel(), dtype=torch.int8, device=device)
    mask[same_b & ~same_s] = SPATIAL_NEG
    mask[same_b & same_s & ~same_p] = TEMPORAL_NEG
    mask[same_b & same_s & same_p] = POSITIVE
    return mask


def _dense_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, P, D, S, S) -> (B*P*S*S, D) in (b, p, s) row order."""
    B, P, D = x.shape[:3]
    return x.reshape(B, P, D, -1).permute(0, 1, 3, 2).reshape(-1, D)


def cpc_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    distributed: bool = True,
    groups: torch.Tensor | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense predictive NCE (paper Eq. 1, mean instead of sum).

    Args:
        pred: (B, P, D, S, S) predicted features z~ (local batch).
        target: (B, P, D, S, S) true features z of the same blocks.
        temperature: tau (0.005 as in the paper).
        distributed: gather the targets of all ranks (see module docstring).
        groups: optional (B,) int ids; columns of *other* videos with the same id as the row's video are
            removed from the softmax (sibling clips are not negatives). None = every column counts.
        normalize: L2-normalise pred and target over D per position (True; DPC's original loss is
            ``normalize=False, temperature=1``).

    Rows are every local (b, p, s) prediction, columns every (b', p', s') target of the global batch:
    ``logits = pred . target / tau`` and the loss is the cross-entropy against the row's own target,

        L = -1/R sum_rows log( exp(z~_i . z_i / tau) / sum_j exp(z~_i . z_j / tau) ),

    R = B*P*S*S local rows. Returns (loss, top1): scalar mean CE and the (detached) fraction of rows
    whose highest logit is their positive."""
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(
            f"pred and target must both be (B, P, D, S, S); got {tuple(pred.shape)}, {tuple(target.shape)}"
        )
    B, P, D, Hs, Ws = pred.shape
    L = P * Hs * Ws
    tgt_g, off = gather_batch(target, distributed)
    rows, cols = _dense_rows(pred), _dense_rows(tgt_g)
    if normalize:
        rows, cols = l2_normalize(rows, dim=1), l2_normalize(cols, dim=1)
    logits = rows @ cols.t() / temperature
    pos = torch.arange(off * L, (off + B) * L, device=pred.device)
    if groups is not None:
        g_all, _ = gather_batch(groups.reshape(-1).to(pred.device), distributed)
        Bg = tgt_g.shape[0]
        row_vid = torch.arange(off, off + B, device=pred.device)
        col_vid = torch.arange(Bg, device=pred.device)
        sib = (g_all[row_vid][:, None] == g_all[None, :]) & (row_vid[:, None] != col_vid[None, :])  # (B, Bg)
        sib = sib.repeat_interleave(L, dim=0).repeat_interleave(L, dim=1)
        logits = logits.masked_fill(sib, float("-inf"))
    loss = F.cross_entropy(logits, pos)
    top1 = (logits.detach().argmax(dim=1) == pos).float().mean()
    return loss, top1


# --------------------------------------------------------------------------------------------------
# features for the cooperative losses
# --------------------------------------------------------------------------------------------------


def pool_blocks(z: torch.Tensor, mode: str = "code") -> torch.Tensor:
    """Pool each block's S x S map to one vector: (B, N, D, S, S) -> h (B, N, D), L2-normalised.

    mode ``"code"`` (CoCon's ImageFetCombiner, generalised): while the side is > 2, a 2x2 stride-2 max
    pool (with padding 1 when the side is odd, as CoCon does at S = 7); then the mean over the remaining
    1x1 or 2x2. S = 4: max 2x2 -> avg 2x2; S = 2: avg only; S = 7: max (pad 1) -> max -> avg; S = 1: identity.
    mode ``"max"``: global spatial max (the paper's "stacked max pool layers", A.4).
    mode ``"avg"``: global spatial mean."""
    if z.dim() != 5:
        raise ValueError(f"expected (B, N, D, S, S), got {tuple(z.shape)}")
    B, N, D, Hs, Ws = z.shape
    x = z.reshape(B * N, D, Hs, Ws)
    if mode == "code":
        if Hs != Ws:
            raise ValueError(f"mode 'code' needs a square map, got {Hs}x{Ws}")
        while x.shape[-1] > 2:
            x = F.max_pool2d(x, kernel_size=2, stride=2, padding=x.shape[-1] % 2)
        h = x.mean(dim=(-2, -1))
    elif mode == "max":
        h = x.amax(dim=(-2, -1))
    elif mode == "avg":
        h = x.mean(dim=(-2, -1))
    else:
        raise ValueError(f"unknown pooling mode {mode!r}")
    return l2_normalize(h.reshape(B, N, D), dim=-1)


def coop_features(out: DPCOutput, variant: str = DEFAULT_VARIANT, instance: str = "block") -> torch.Tensor:
    """Features h compared by L_sync / L_sim for one view.

    instance ``"block"`` (default, both variants; the paper: "we use h = z'"): h = pool_blocks(z)
    (B, N, D), with CoCon's max-then-avg pooling for ``variant="code"`` and the global max for "paper".
    ``"video"``: the mean of those block vectors over N, renormalised, (B, D): one instance per clip.
    ``"context"``: the spatial mean of the context c (GRU state after the N-P context blocks), (B, D).
    All unit-norm."""
    _check_variant(variant)
    if instance == "context":
        return l2_normalize(out.context.mean(dim=(-2, -1)), dim=-1)
    h = pool_blocks(out.z, "code" if variant == "code" else "max")
    if instance == "block":
        return h
    if instance == "video":
        return l2_normalize(h.mean(dim=1), dim=-1)
    raise ValueError(f"instance must be 'block', 'video' or 'context', got {instance!r}")


def _items(h: torch.Tensor, centre: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D) or (B, D) -> unit vectors (B*N, D) in (b, n) order and their video index (B*N,).
    centre: subtract the mean over the B*N items before normalising (the `centred` option, not the
    paper's: cosines then compare how items differ from the batch, not their shared direction)."""
    if h.dim() == 2:
        h = h[:, None]
    if h.dim() != 3:
        raise ValueError(f"features must be (B, N, D) or (B, D), got {tuple(h.shape)}")
    B, N, D = h.shape
    vid = torch.arange(B, device=h.device).repeat_interleave(N)
    x = h.reshape(B * N, D)
    if centre:
        x = x - x.mean(dim=0, keepdim=True)
    return l2_normalize(x, dim=1), vid


def _check_pair(ha: torch.Tensor, hb: torch.Tensor) -> None:
    if ha.shape != hb.shape:
        raise ValueError(f"the two views' features must have the same shape, got {tuple(ha.shape)}, {tuple(hb.shape)}")


# --------------------------------------------------------------------------------------------------
# L_sync, L_sim
# --------------------------------------------------------------------------------------------------


def sync_loss(
    ha: torch.Tensor, hb: torch.Tensor, variant: str = DEFAULT_VARIANT, distributed: bool = True, centre: bool = False
) -> torch.Tensor:
    """L_sync for one pair of views (a, b): agreement of the within-view similarity structures.

    ha, hb: (B, N, D) per-block or (B, D) per-instance features of the same clips in views a and b
    (any norm; they are L2-normalised here). Items i, j run over all M = B*N (global) blocks, including
    i = j and other blocks of the same video. cos_v(i, j) = <h_v^i, h_v^j>, D_v = 1 - cos_v.

    * ``"code"``:  L_sync = 1/M^2 sum_{i,j} |cos_a(i,j) - cos_b(i,j)|      (CoCon: L1Loss, dot_wt)
    * ``"paper"``: L_sync = 1/M^2 sum_{i,j} (D_a(i,j) - D_b(i,j))^2         (Eq. 2 / number of pairs)

    ``centre``: the features are centred by their (global) batch mean first (a named option, not the
    paper's or the code's; docs/claim.md). Returns a scalar."""
    _check_variant(variant)
    _check_pair(ha, hb)
    xa, _ = _items(gather_batch(ha, distributed)[0], centre)
    xb, _ = _items(gather_batch(hb, distributed)[0], centre)
    diff = (1.0 - xa @ xa.t()) - (1.0 - xb @ xb.t())
    return diff.abs().mean() if variant == "code" else diff.pow(2).mean()


def sim_loss(
    ha: torch.Tensor,
    hb: torch.Tensor,
    variant: str = DEFAULT_VARIANT,
    margin: float = 1.0,
    same_video_negatives: bool = True,
    groups: torch.Tensor | None = None,
    distributed: bool = True,
    centre: bool = False,
) -> torch.Tensor:
    """L_sim for one pair of views: same item close across views, other items at least ``margin`` apart.

    ha, hb: (B, N, D) or (B, D) as in :func:`sync_loss`. X(i, j) = cos(h_a^i, h_b^j) over the M x M
    cross-view pairs, D = 1 - X.

    * positives: i = j (the same block of the same video, or the same video for (B, D) inputs);
    * negatives: every i != j, except that ``same_video_negatives=False`` drops other blocks of the same
      video (CoCon counts them as negatives, True = faithful) and ``groups`` (B,) drops items of other
      videos with the same group id (sibling clips);
    * ``"paper"``: L_sim = mean_pos D + mean_neg max(0, margin - D)
      (= [sum_pos D + mu * sum_neg max(0, 1 - D)] / #pos with mu = #pos / #neg, Eq. 3);
    * ``"code"``:  L_sim = 1/2 mean_pos (1 - X) + 1/2 mean_neg max(0, margin - D); with margin 1 the
      hinge is max(0, X) (CoCon's WeightNormalizedMarginLoss with f = 0.5 in closed form).

    ``centre``: as in :func:`sync_loss`. Returns a scalar (the negative term is 0 if there are no negatives)."""
    _check_variant(variant)
    _check_pair(ha, hb)
    xa, vid = _items(gather_batch(ha, distributed)[0], centre)
    xb, _ = _items(gather_batch(hb, distributed)[0], centre)
    dist_ab = 1.0 - xa @ xb.t()
    M = xa.shape[0]
    pos = torch.eye(M, dtype=torch.bool, device=xa.device)
    neg = ~pos
    other_video = vid[:, None] != vid[None, :]
    if not same_video_negatives:
        neg &= other_video
    if groups is not None:
        g_all, _ = gather_batch(groups.reshape(-1).to(xa.device), distributed)
        gi = g_all[vid]
        neg &= ~((gi[:, None] == gi[None, :]) & other_video)
    pos_term = dist_ab[pos].mean()
    hinge = torch.clamp(margin - dist_ab[neg], min=0.0)
    neg_term = hinge.mean() if hinge.numel() else dist_ab.new_zeros(())
    total = pos_term + neg_term
    return 0.5 * total if variant == "code" else total


def coop_loss(
    ha: torch.Tensor, hb: torch.Tensor, alpha: float = 1.0, variant: str = DEFAULT_VARIANT, **sim_kwargs
) -> torch.Tensor:
    """L_coop = L_sync + alpha * L_sim for one pair of views (scalar). ``sim_kwargs`` go to
    :func:`sim_loss` (margin, same_video_negatives, groups, distributed; distributed also to sync)."""
    distributed, centre = sim_kwargs.get("distributed", True), sim_kwargs.get("centre", False)
    return sync_loss(ha, hb, variant, distributed, centre) + alpha * sim_loss(ha, hb, variant, **sim_kwargs)


# --------------------------------------------------------------------------------------------------
# total
# --------------------------------------------------------------------------------------------------


def cocon_loss(
    outputs: Mapping[str, DPCOutput],
    lam: float = 10.0,
    alpha: float = 1.0,
    variant: str = DEFAULT_VARIANT,
    temperature: float = DEFAULT_TEMPERATURE,
    *,
    instance: str = "block",
    same_video_negatives: bool = True,
    margin: float = 1.0,
    groups: torch.Tensor | None = None,
    mask_group_negatives: bool = False,
    distributed: bool = True,
    normalize: bool = True,
    centre: bool = False,
    sync_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """L_cocon = sum_v L_cpc^v + lam * sum_{(a,b)} (L_sync^{ab} + alpha * L_sim^{ab}).

    Args:
        outputs: view name -> DPCOutput of the same clips (same B, N, aligned order).
        lam: lambda (10; CoCon's ``dot_wt`` weights L_sync, so lam = dot_wt).
        alpha: alpha (1; CoCon's ``msync_wt`` weights L_sim, so lam * alpha = msync_wt = 10).
        variant: "code" (default) or "paper" cooperative losses (module docstring).
        temperature: tau of L_cpc (0.005).
        instance: what an "instance" of L_sync/L_sim is (:func:`coop_features`; "block" = h = z').
        same_video_negatives, margin: see :func:`sim_loss`.
        groups: (B,) int source-group id per clip; used only when ``mask_group_negatives`` (default off =
            faithful to CoCon): sibling clips are then not negatives in L_cpc and L_sim.
        distributed: use the global batch under torch.distributed (module docstring).
        normalize: L2-normalise in L_cpc (True; False with temperature 1 = DPC's original dot product).
        centre: L_sync and L_sim on block features centred by their batch mean (False = faithful; the
            `centred` option of docs/claim.md, a deviation from the paper and the code).
        sync_weight: weight of L_sync inside L_coop (1 = the paper; 0 with lam 10 is the paper's Table 1
            ablation L_cpc + lam L_sim; alpha = 0 the ablation L_cpc + lam L_sync).

    Pairs are the unordered pairs of views in sorted name order (all terms are symmetric in a, b).
    Returns a dict of scalars: ``cpc/<v>``, ``top1/<v>`` (detached), ``sync/<a>-<b>``, ``sim/<a>-<b>``,
    ``coop/<a>-<b>`` (= sync + alpha * sim), ``cpc`` (sum over views), ``coop`` (sum over pairs, 0 for a
    single view) and ``total`` (= cpc + lam * coop; call backward on this)."""
    _check_variant(variant)
    if not outputs:
        raise ValueError("outputs is empty")
    views = sorted(outputs)
    g = groups if mask_group_negatives else None
    if mask_group_negatives and groups is None:
        raise ValueError("mask_group_negatives=True needs groups")
    terms: dict[str, torch.Tensor] = {}
    cpc_total = None
    for v in views:
        out = outputs[v]
        loss, top1 = cpc_loss(out.pred, out.target, temperature, distributed, groups=g, normalize=normalize)
        terms[f"cpc/{v}"], terms[f"top1/{v}"] = loss, top1
        cpc_total = loss if cpc_total is None else cpc_total + loss
    feats = {v: coop_features(outputs[v], variant, instance) for v in views}
    coop_total = cpc_total.new_zeros(())
    for a, b in itertools.combinations(views, 2):
        s = sync_loss(feats[a], feats[b], variant, distributed, centre)
        m = sim_loss(feats[a], feats[b], variant, margin, same_video_negatives, g, distributed, centre)
        terms[f"sync/{a}-{b}"], terms[f"sim/{a}-{b}"] = s, m
        terms[f"coop/{a}-{b}"] = sync_weight * s + alpha * m
        coop_total = coop_total + terms[f"coop/{a}-{b}"]
    terms["cpc"], terms["coop"] = cpc_total, coop_total
    terms["total"] = cpc_total + lam * coop_total
    return terms


# --------------------------------------------------------------------------------------------------
# the loss as a module holding its hyper-parameters
# --------------------------------------------------------------------------------------------------


class CoconLoss(torch.nn.Module):
    """L_cocon = sum_v L_cpc^v + lam * sum_pairs (L_sync + alpha * L_sim) (:func:`cocon_loss`); with
    one view it is L_cpc, with lam = 0 the views do not interact (the control run).

    Args: as :func:`cocon_loss` (lam 10, alpha 1, variant "code", temperature 0.005, instance "block",
    same_video_negatives, margin 1, mask_group_negatives False, normalize True, distributed True).

    forward(outputs {view: DPCOutput}, groups (B,) or None) -> dict of scalar terms ("total" to minimise).

    Examples:
        >>> terms = CoconLoss(lam=10.0)({"rgb": out_rgb, "flow_tvl1": out_flow})
        >>> terms["total"].backward()
    """

    def __init__(
        self,
        lam: float = 10.0,
        alpha: float = 1.0,
        variant: str = DEFAULT_VARIANT,
        temperature: float = DEFAULT_TEMPERATURE,
        instance: str = "block",
        same_video_negatives: bool = True,
        margin: float = 1.0,
        mask_group_negatives: bool = False,
        normalize: bool = True,
        distributed: bool = True,
        centre: bool = False,
        sync_weight: float = 1.0,
    ):
        super().__init__()
        _check_variant(variant)
        self.kwargs = dict(
            lam=lam,
            alpha=alpha,
            variant=variant,
            temperature=temperature,
            instance=instance,
            same_video_negatives=same_video_negatives,
            margin=margin,
            mask_group_negatives=mask_group_negatives,
            normalize=normalize,
            distributed=distributed,
            centre=centre,
            sync_weight=sync_weight,
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())

    def forward(self, outputs, groups=None):
        return cocon_loss(outputs, groups=groups if self.kwargs["mask_group_negatives"] else None, **self.kwargs)
