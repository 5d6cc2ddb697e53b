"""cocon.models.losses against brute-force loops, and the distributed (2-process gloo) global-batch semantics."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cocon.models.losses import (
    cocon_loss,
    coop_features,
    coop_loss,
    cpc_loss,
    gather_batch,
    nce_mask,
    pool_blocks,
    sim_loss,
    sync_loss,
)
from cocon.models.networks import DPCOutput, l2_normalize

DT = torch.float64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _unit(v):
    return v / v.norm()


# --------------------------------------------------------------------------------------------------
# brute-force references (explicit Python loops)
# --------------------------------------------------------------------------------------------------


def _bf_cpc(pred, target, tau, groups=None):
    B, P, D, S, _ = pred.shape
    items = [(b, p, y, x) for b in range(B) for p in range(P) for y in range(S) for x in range(S)]
    losses, hits = [], 0
    for i, (b, p, y, x) in enumerate(items):
        q = _unit(pred[b, p, :, y, x])
        logits, keep = [], []
        for j, (b2, p2, y2, x2) in enumerate(items):
            if groups is not None and b2 != b and groups[b2] == groups[b]:
                continue
            logits.append(float(q @ _unit(target[b2, p2, :, y2, x2])) / tau)
            keep.append(j)
        m = max(logits)
        lse = m + math.log(sum(math.exp(l - m) for l in logits))
        pos = keep.index(i)
        losses.append(lse - logits[pos])
        hits += int(max(range(len(logits)), key=logits.__getitem__) == pos)
    return sum(losses) / len(losses), hits / len(items)


def _flat_items(h):
    h = h[:, None] if h.dim() == 2 else h
    B, N, _ = h.shape
    return [(b, _unit(h[b, n])) for b in range(B) for n in range(N)]


def _bf_sync(ha, hb, variant):
    A, Bv = _flat_items(ha), _flat_items(hb)
    total, count = 0.0, 0
    for i in range(len(A)):
        for j in range(len(A)):
            da = 1 - float(A[i][1] @ A[j][1])
            db = 1 - float(Bv[i][1] @ Bv[j][1])
            total += abs(da - db) if variant == "code" else (da - db) ** 2
            count += 1
    return total / count


def _bf_sim(ha, hb, variant, margin=1.0, same_video_negatives=True, groups=None):
    A, Bv = _flat_items(ha), _flat_items(hb)
    pos, neg = [], []
    for i in range(len(A)):
        for j in range(len(A)):
            d = 1 - float(A[i][1] @ Bv[j][1])
            vi, vj = A[i][0], A[j][0]
            if i == j:
                pos.append(d)
            elif vi == vj and not same_video_negatives:
                continue
            elif groups is not None and vi != vj and groups[vi] == groups[vj]:
                continue
            else:
                neg.append(max(0.0, margin - d))
    val = sum(pos) / len(pos) + (sum(neg) / len(neg) if neg else 0.0)
    return 0.5 * val if variant == "code" else val


# --------------------------------------------------------------------------------------------------
# nce_mask, cpc_loss
# --------------------------------------------------------------------------------------------------


def test_nce_mask_semantics_brute_force():
    B, P, S = 3, 2, 2
    mask = nce_mask(B, P, S)
    assert mask.dtype == torch.int8 and mask.shape == (B * P * S * S,) * 2
    items = [(b, p, s) for b in range(B) for p in range(P) for s in range(S * S)]
    for i, (b, p, s) in enumerate(items):
        for j, (b2, p2, s2) in enumerate(items):
            if b != b2:
                want = 0
            elif s != s2:
                want = -3
            elif p != p2:
                want = -1
            else:
                want = 1
            assert mask[i, j] == want, (items[i], items[j])
    assert (mask == 1).sum() == B * P * S * S


@pytest.mark.parametrize("tau", [0.005, 0.07, 1.0])
def test_cpc_loss_matches_brute_force(tau):
    pred, target = _rand(3, 2, 8, 2, 2, seed=1), _rand(3, 2, 8, 2, 2, seed=2)
    target[1] = pred[1] + 0.3 * target[1]  # some rows are easy, some are not
    loss, top1 = cpc_loss(pred, target, temperature=tau)
    want, want_top1 = _bf_cpc(pred, target, tau)
    torch.testing.assert_close(loss, torch.tensor(want, dtype=DT))
    assert top1.item() == pytest.approx(want_top1)
    assert 0.0 < want_top1 < 1.0


def test_cpc_loss_groups_remove_sibling_negatives():
    pred, target = _rand(4, 2, 6, 2, 2, seed=3), _rand(4, 2, 6, 2, 2, seed=4)
    groups = torch.tensor([7, 1, 7, 1])
    loss, top1 = cpc_loss(pred, target, temperature=0.1, groups=groups)
    want, want_top1 = _bf_cpc(pred, target, 0.1, groups=groups.tolist())
    torch.testing.assert_close(loss, torch.tensor(want, dtype=DT))
    assert top1.item() == pytest.approx(want_top1)
    # all-distinct groups = no masking
    torch.testing.assert_close(cpc_loss(pred, target, 0.1, groups=torch.arange(4))[0], cpc_loss(pred, target, 0.1)[0])


def test_cpc_loss_normalises_and_validates():
    pred, target = _rand(2, 2, 4, 1, 1, seed=5), _rand(2, 2, 4, 1, 1, seed=6)
    torch.testing.assert_close(cpc_loss(3.0 * pred, 0.5 * target)[0], cpc_loss(pred, target)[0])
    raw = cpc_loss(pred, target, temperature=1.0, normalize=False)[0]
    logits = pred.reshape(4, 4) @ target.reshape(4, 4).t()
    torch.testing.assert_close(raw, torch.nn.functional.cross_entropy(logits, torch.arange(4)))
    with pytest.raises(ValueError):
        cpc_loss(pred, target[:, :1])


# --------------------------------------------------------------------------------------------------
# pooling and cooperative losses
# --------------------------------------------------------------------------------------------------


def test_pool_blocks_rules():
    z = _rand(2, 3, 5, 4, 4, seed=7)
    h = pool_blocks(z, "code")
    want = torch.empty(2, 3, 5, dtype=DT)
    for b, n, d in itertools.product(range(2), range(3), range(5)):
        m = z[b, n, d]
        quads = [m[y : y + 2, x : x + 2].max() for y in (0, 2) for x in (0, 2)]
        want[b, n, d] = sum(quads) / 4
    want = want / want.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(h, want)
    z2 = _rand(2, 3, 5, 2, 2, seed=8)
    a = z2.mean(dim=(-2, -1))
    torch.testing.assert_close(pool_blocks(z2, "code"), a / a.norm(dim=-1, keepdim=True))
    m = z.amax(dim=(-2, -1))
    torch.testing.assert_close(pool_blocks(z, "max"), m / m.norm(dim=-1, keepdim=True))
    # S = 7 (224 px): max (pad 1) -> 4x4 -> max -> 2x2 -> avg, as CoCon
    z7 = _rand(1, 1, 3, 7, 7, seed=9)
    x = torch.nn.functional.max_pool2d(z7[0], 2, 2, padding=1)
    x = torch.nn.functional.max_pool2d(x, 2, 2).mean(dim=(-2, -1))
    torch.testing.assert_close(pool_blocks(z7, "code")[0], x / x.norm(dim=-1, keepdim=True))
    z1 = _rand(2, 2, 3, 1, 1, seed=10)
    torch.testing.assert_close(pool_blocks(z1, "code"), pool_blocks(z1, "max"))


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("shape", [(3, 4, 6), (5, 6)])
def test_sync_loss_matches_brute_force(variant, shape):
    ha, hb = _rand(*shape, seed=11), _rand(*shape, seed=12)
    torch.testing.assert_close(sync_loss(ha, hb, variant), torch.tensor(_bf_sync(ha, hb, variant), dtype=DT))
    assert sync_loss(ha, ha, variant).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("same_video_negatives", [True, False])
@pytest.mark.parametrize("margin", [1.0, 0.8])
def test_sim_loss_matches_brute_force(variant, same_video_negatives, margin):
    ha, hb = _rand(4, 3, 6, seed=13), _rand(4, 3, 6, seed=14)
    hb[0] = ha[0] + 0.1 * hb[0]
    got = sim_loss(ha, hb, variant, margin=margin, same_video_negatives=same_video_negatives)
    want = _bf_sim(ha, hb, variant, margin, same_video_negatives)
    torch.testing.assert_close(got, torch.tensor(want, dtype=DT))
    groups = torch.tensor([0, 5, 0, 5])
    got = sim_loss(ha, hb, variant, margin=margin, same_video_negatives=same_video_negatives, groups=groups)
    want_g = _bf_sim(ha, hb, variant, margin, same_video_negatives, groups.tolist())
    torch.testing.assert_close(got, torch.tensor(want_g, dtype=DT))
    assert want_g != pytest.approx(want)


def test_sim_variants_differ_by_half_and_per_instance_inputs():
    ha, hb = _rand(3, 4, 5, seed=15), _rand(3, 4, 5, seed=16)
    torch.testing.assert_close(2 * sim_loss(ha, hb, "code"), sim_loss(ha, hb, "paper"))
    hv_a, hv_b = _rand(6, 5, seed=17), _rand(6, 5, seed=18)
    torch.testing.assert_close(sim_loss(hv_a, hv_b, "paper"), torch.tensor(_bf_sim(hv_a, hv_b, "paper"), dtype=DT))
    # a single item has no negatives
    assert sim_loss(hv_a[:1], hv_b[:1], "paper").item() == pytest.approx(1 - float(_unit(hv_a[0]) @ _unit(hv_b[0])))
    torch.testing.assert_close(
        coop_loss(ha, hb, alpha=3.0, variant="paper"), sync_loss(ha, hb, "paper") + 3.0 * sim_loss(ha, hb, "paper")
    )
    with pytest.raises(ValueError):
        sync_loss(ha, hb, "bogus")


# --------------------------------------------------------------------------------------------------
# cocon_loss
# --------------------------------------------------------------------------------------------------


def _outputs(B=3, N=4, P=2, D=8, S=2, views=("rgb", "flow", "seg"), seed=20, grad=False):
    outs, leaves = {}, {}
    for k, v in enumerate(views):
        z = _rand(B, N, D, S, S, seed=seed + 3 * k).requires_grad_(grad)
        pred = _rand(B, P, D, S, S, seed=seed + 3 * k + 1).requires_grad_(grad)
        ctx = _rand(B, D, S, S, seed=seed + 3 * k + 2).requires_grad_(grad)
        outs[v] = DPCOutput(z=z, pred=pred, target=z[:, N - P :], context=ctx)
        leaves[v] = (z, pred, ctx)
    return outs, leaves


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_cocon_loss_total_is_weighted_sum_of_terms(variant):
    outs, _ = _outputs()
    lam, alpha, tau = 7.0, 0.5, 0.01
    t = cocon_loss(outs, lam=lam, alpha=alpha, variant=variant, temperature=tau)
    views = ["flow", "rgb", "seg"]
    pairs = [("flow", "rgb"), ("flow", "seg"), ("rgb", "seg")]
    assert set(t) == (
        {f"cpc/{v}" for v in views}
        | {f"top1/{v}" for v in views}
        | {f"{k}/{a}-{b}" for k in ("sync", "sim", "coop") for a, b in pairs}
        | {"cpc", "coop", "total"}
    )
    cpc = sum(t[f"cpc/{v}"] for v in views)
    coop = sum(t[f"sync/{a}-{b}"] + alpha * t[f"sim/{a}-{b}"] for a, b in pairs)
    torch.testing.assert_close(t["cpc"], cpc)
    torch.testing.assert_close(t["coop"], coop)
    torch.testing.assert_close(t["total"], cpc + lam * coop)
    for v in views:
        o = outs[v]
        torch.testing.assert_close(t[f"cpc/{v}"], cpc_loss(o.pred, o.target, tau)[0])
    ha, hb = coop_features(outs["flow"], variant), coop_features(outs["seg"], variant)
    torch.testing.assert_close(t["sync/flow-seg"], torch.tensor(_bf_sync(ha, hb, variant), dtype=DT))
    torch.testing.assert_close(t["sim/flow-seg"], torch.tensor(_bf_sim(ha, hb, variant), dtype=DT))
    # CoCon's weights: dot_wt = 10 on L_sync, msync_wt = 10 on L_sim -> lam = 10, alpha = 1
    d = cocon_loss(outs)
    want = d["cpc"] + sum(10 * d[f"sync/{a}-{b}"] + 10 * d[f"sim/{a}-{b}"] for a, b in pairs)
    torch.testing.assert_close(d["total"], want)


def test_cocon_loss_single_view_and_instances():
    outs, _ = _outputs(views=("rgb",))
    t = cocon_loss(outs)
    assert t["coop"].item() == 0.0
    torch.testing.assert_close(t["total"], t["cpc/rgb"])
    outs, _ = _outputs(views=("rgb", "flow"))
    for inst in ("video", "context"):
        t = cocon_loss(outs, variant="paper", instance=inst)
        ha, hb = coop_features(outs["flow"], "paper", inst), coop_features(outs["rgb"], "paper", inst)
        assert ha.shape == (3, 8)
        torch.testing.assert_close(t["sim/flow-rgb"], torch.tensor(_bf_sim(ha, hb, "paper"), dtype=DT))
    with pytest.raises(ValueError):
        cocon_loss(outs, instance="frame")
    with pytest.raises(ValueError):
        cocon_loss(outs, mask_group_negatives=True)


def test_cocon_loss_gradients_reach_every_view():
    outs, leaves = _outputs(grad=True)
    cocon_loss(outs)["total"].backward()
    for v, (z, pred, ctx) in leaves.items():
        assert z.grad is not None and z.grad[:, :2].abs().sum() > 0  # context blocks: via L_sync/L_sim
        assert pred.grad is not None and pred.grad.abs().sum() > 0
        assert ctx.grad is None  # context is not used with instance="block"
    # the cooperative terms alone also reach both views of a pair
    outs, leaves = _outputs(views=("rgb", "flow"), grad=True)
    t = cocon_loss(outs)
    t["coop"].backward()
    assert all(leaves[v][0].grad.abs().sum() > 0 for v in ("rgb", "flow"))


def test_cocon_loss_groups_flag():
    outs, _ = _outputs(B=4)
    groups = torch.tensor([3, 3, 1, 2])
    faithful = cocon_loss(outs, groups=groups)  # flag off: groups ignored
    plain = cocon_loss(outs)
    for k in plain:
        torch.testing.assert_close(faithful[k], plain[k])
    masked = cocon_loss(outs, groups=groups, mask_group_negatives=True, temperature=0.05)
    o = outs["rgb"]
    torch.testing.assert_close(
        masked["cpc/rgb"], torch.tensor(_bf_cpc(o.pred, o.target, 0.05, groups.tolist())[0], dtype=DT)
    )
    ha, hb = coop_features(outs["flow"], "code"), coop_features(outs["rgb"], "code")
    torch.testing.assert_close(
        masked["sim/flow-rgb"], torch.tensor(_bf_sim(ha, hb, "code", groups=groups.tolist()), dtype=DT)
    )
    torch.testing.assert_close(masked["sync/flow-rgb"], plain["sync/flow-rgb"])  # no negatives in L_sync


def test_gather_batch_without_process_group_is_identity():
    x = _rand(3, 2)
    y, off = gather_batch(x)
    assert y is x and off == 0


# --------------------------------------------------------------------------------------------------
# distributed: 2 gloo processes == 1 process on the global batch
# --------------------------------------------------------------------------------------------------

WORLD = 2
GLOBAL_B = 4
CONFIGS = {
    "faithful": dict(),
    "paper_groups": dict(variant="paper", groups=True, mask_group_negatives=True, same_video_negatives=False),
    "code_video": dict(instance="video", lam=3.0, alpha=2.0),
    "paper_context": dict(variant="paper", instance="context"),
}
GROUPS = torch.tensor([0, 1, 0, 2])  # video 0 (rank 0) and video 2 (rank 1) are siblings


def _run_config(outs, groups, cfg):
    cfg = dict(cfg)
    use_groups = cfg.pop("groups", False)
    return cocon_loss(outs, temperature=0.05, groups=groups if use_groups else None, **cfg)


def _ddp_worker(rank, world, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = {}
        per = GLOBAL_B // world
        sl = slice(rank * per, (rank + 1) * per)
        for name, cfg in CONFIGS.items():
            full, _ = _outputs(B=GLOBAL_B)
            outs, leaves = {}, {}
            for v, o in full.items():
                z = o.z[sl].detach().clone().requires_grad_()
                pred = o.pred[sl].detach().clone().requires_grad_()
                ctx = o.context[sl].detach().clone().requires_grad_()
                outs[v] = DPCOutput(z, pred, z[:, -pred.shape[1] :], ctx)
                leaves[v] = (z, pred, ctx)
            t = _run_config(outs, GROUPS[sl], cfg)
            t["total"].backward()
            result[name] = {
                "terms": {k: v.detach() for k, v in t.items()},
                "grads": {v: [None if x.grad is None else x.grad.clone() for x in leaves[v]] for v in leaves},
            }
        # gather_batch with unequal sizes (3 + 2 rows) and a replicated loss
        full = _rand(5, 3, seed=99)
        mine = (full[:3] if rank == 0 else full[3:]).clone().requires_grad_()
        g, off = gather_batch(mine)
        w = _rand(5, 3, seed=98)
        (g * w).sum().backward()
        result["uneven"] = {"gathered": g.detach(), "offset": off, "grad": mine.grad.clone()}
        # cpc_loss with unequal sizes: row-weighted mean over ranks = global loss
        pred, target = _rand(5, 2, 4, 2, 2, seed=97), _rand(5, 2, 4, 2, 2, seed=96)
        part = slice(0, 3) if rank == 0 else slice(3, 5)
        loss, top1 = cpc_loss(pred[part], target[part], temperature=0.1)
        result["uneven_cpc"] = {"loss": loss.detach(), "rows": pred[part].shape[0]}
        torch.save(result, out_file.format(rank=rank))
    finally:
        dist.destroy_process_group()


def test_distributed_matches_single_process(tmp_path):
    init_file = tmp_path / "pg_init"
    out_file = str(tmp_path / "rank{rank}.pt")
    mp.spawn(_ddp_worker, args=(WORLD, str(init_file), out_file), nprocs=WORLD, join=True)
    res = [torch.load(out_file.format(rank=r), weights_only=False) for r in range(WORLD)]
    per = GLOBAL_B // WORLD
    for name, cfg in CONFIGS.items():
        outs, leaves = _outputs(B=GLOBAL_B, grad=True)
        ref = _run_config(outs, GROUPS, cfg)
        ref["total"].backward()
        for k, v in ref.items():
            if k.startswith("top1/"):
                continue
            # the mean over ranks of every term is the single-process value (cpc: local rows, equal
            # sizes; sync/sim: global on every rank)
            got = sum(r[name]["terms"][k] for r in res) / WORLD
            torch.testing.assert_close(got, v.detach(), msg=f"{name} {k}")
            if k.split("/")[0] in ("sync", "sim", "coop"):
                for r in res:
                    torch.testing.assert_close(r[name]["terms"][k], v.detach(), msg=f"{name} {k} replicated")
        for v, lv in leaves.items():
            for idx, leaf in enumerate(lv):
                for r in range(WORLD):
                    g_r = res[r][name]["grads"][v][idx]
                    if leaf.grad is None:
                        assert g_r is None or g_r.abs().sum() == 0
                        continue
                    # local grad / world_size (what DDP's averaging applies) == global gradient slice
                    torch.testing.assert_close(
                        g_r / WORLD, leaf.grad[r * per : (r + 1) * per], msg=f"{name} {v} leaf {idx} rank {r}"
                    )
    full = _rand(5, 3, seed=99)
    w = _rand(5, 3, seed=98)
    for r, (sl, off) in enumerate(((slice(0, 3), 0), (slice(3, 5), 3))):
        torch.testing.assert_close(res[r]["uneven"]["gathered"], full)
        assert res[r]["uneven"]["offset"] == off
        torch.testing.assert_close(res[r]["uneven"]["grad"], WORLD * w[sl])
    pred, target = _rand(5, 2, 4, 2, 2, seed=97), _rand(5, 2, 4, 2, 2, seed=96)
    want = cpc_loss(pred, target, temperature=0.1)[0]
    got = sum(r["uneven_cpc"]["loss"] * r["uneven_cpc"]["rows"] for r in res) / 5
    torch.testing.assert_close(got, want)


def test_centred_option_leaves_the_flat_point_of_the_coded_l_sim():
    """Block features sharing a large common direction (mean pairwise cosine ~0.98, as after a short CPC
    stage): the coded L_sim sits at 0.5 whatever the per-block differences, with a gradient more than 10x
    smaller than on centred features; `centre=True` (a named option, not the faithful loss) compares the
    differences from the batch mean, where the gradient is that of well-spread features."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(1, 1, 32, generator=g) * 6.0
    ha = (common + torch.randn(4, 3, 32, generator=g)).requires_grad_(True)
    hb = common + torch.randn(4, 3, 32, generator=g)
    x = l2_normalize(ha.detach().reshape(12, 32), 1)
    assert float((x @ x.t()).sum() - 12) / (12 * 11) > 0.95  # nearly collapsed
    flat = sim_loss(ha, hb, distributed=False)
    assert flat.item() == pytest.approx(0.5, abs=0.02)
    (grad_flat,) = torch.autograd.grad(flat, ha)
    centred = sim_loss(ha, hb, distributed=False, centre=True)
    (grad_centred,) = torch.autograd.grad(centred, ha)
    assert grad_centred.norm() > 10 * grad_flat.norm()
    # the faithful loss is unchanged by the option's default
    torch.testing.assert_close(sim_loss(ha, hb, distributed=False, centre=False), flat)
