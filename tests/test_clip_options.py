"""MultiViewClips' grouped arguments (ClipGeometry, Partition) against the flat keywords they replace, on
the shards of tests/clip_shards.py: the same videos and the same bytes; mixing or misspelling them is an error."""

from __future__ import annotations

import pytest
import torch

from cocon.data.clips import Augmentation, ClipGeometry, DenseClips, MultiViewClips, Partition

from clip_shards import VIEWS, clip_root, clip_shard_paths  # noqa: F401  (the root and shards fixtures)


def test_grouped_arguments_give_the_same_samples_as_the_flat_keywords(shards):
    flat = MultiViewClips(
        shards, VIEWS, role="val", split=2, holdout_fraction=0.3, holdout_seed=4, num_blocks=4, block_len=3,
        stride=2, sizes={"rgb": 32, "flow": 24}, seed=3, augment=True,
    )  # fmt: skip
    grouped = MultiViewClips(
        shards,
        VIEWS,
        role="val",
        partition=Partition(split=2, fraction=0.3, seed=4),
        clip=ClipGeometry(4, 3, 2, sizes={"flow": 24, "rgb": 32}),
        seed=3,
    )
    assert grouped.clip == flat.clip and grouped.partition == flat.partition
    assert (grouped.num_blocks, grouped.block_len, grouped.stride, grouped.split) == (4, 3, 2, "2")
    assert grouped.sizes == {"rgb": 32, "flow_tvl1": 24}
    assert [v.video_id for v in grouped.videos] == [v.video_id for v in flat.videos] and len(flat) > 0
    for i in range(len(flat)):
        a, b = flat.sample(i), grouped.sample(i)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    dense = DenseClips(shards, VIEWS, role="test", partition=Partition(split=2, fraction=0), clip=flat.clip)
    assert len(dense) and dense.windows(0).shape[1] == 12


def test_shared_crop_is_an_augmentation_parameter_only(shards):
    kw = dict(role="train", partition=Partition(split=1, fraction=0), clip=ClipGeometry(4, 3, 2), seed=1)
    ds = MultiViewClips(shards, VIEWS, augmentation=Augmentation(shared_crop=True), **kw)
    assert ds.augmentation.shared_crop
    with pytest.raises(TypeError, match="shared_crop"):
        MultiViewClips(shards, VIEWS, shared_crop=True, **kw)


def test_a_group_and_its_flat_keywords_are_not_mixed(shards):
    with pytest.raises(TypeError, match="clip= or num_blocks"):
        MultiViewClips(shards, VIEWS, clip=ClipGeometry(), num_blocks=4)
    with pytest.raises(TypeError, match="partition= or holdout_seed, split"):
        MultiViewClips(shards, VIEWS, partition=Partition(), split=2, holdout_seed=1)
    with pytest.raises(TypeError, match="numblocks"):
        MultiViewClips(shards, VIEWS, numblocks=4)
    with pytest.raises(ValueError, match="must be >= 1"):
        ClipGeometry(stride=0)
    assert hash(ClipGeometry(sizes={"rgb": 32})) == hash(ClipGeometry(sizes={"rgb": 32}))
