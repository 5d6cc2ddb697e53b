"""Scarce labels (finetune.labeled_fraction): fine-tuning and the probes use a share of the training role's
source groups, whole groups only, drawn with the seed; the validation subset is drawn among them; the
test role and pretraining's partition are untouched."""

from __future__ import annotations

from cocon.data.index import Partition, Video
from cocon.sources.records import VideoRecord

ROWS = [
    VideoRecord(f"c{c}/v{g}_{k}", f"v{g}_{k}.avi", f"c{c}", c, f"c{c}_g{g}", {"1": "test" if g >= 18 else "train"})
    for c in range(3)
    for g in range(20)
    for k in range(2)
]
VIDEOS = [Video(r.video_id, r.label, r.label_index, r.group, r.splits) for r in ROWS]


def ids(partition: Partition, role: str) -> set[str]:
    return {v.video_id for v in partition.select(role, VIDEOS, ROWS)}


def test_a_labeled_share_of_whole_groups_with_the_validation_subset_among_them():
    full = Partition(split=1, fraction=0.2, seed=5)
    part = Partition(split=1, fraction=0.2, seed=5, labeled=0.25)
    train_role = {r.video_id for r in ROWS if r.splits["1"] == "train"}
    labeled = {r.video_id for r in part.training_rows(ROWS)}
    assert labeled < train_role and abs(len(labeled) - 0.25 * len(train_role)) <= 2
    group = {r.video_id: r.group for r in ROWS}
    assert not {group[v] for v in labeled} & {group[v] for v in train_role - labeled}  # whole groups
    assert ids(part, "train") | ids(part, "val") == labeled and not ids(part, "train") & ids(part, "val")
    assert 0 < len(ids(part, "val")) < len(labeled) / 2
    assert ids(part, "test") == ids(full, "test")  # the test role is never cut
    assert ids(Partition(split=1, fraction=0.2, seed=5, labeled=1.0), "train") == ids(full, "train")
    assert ids(Partition(split=1, fraction=0.2, seed=6, labeled=0.25), "train") != ids(part, "train")
