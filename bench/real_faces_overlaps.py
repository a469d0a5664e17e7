"""Why the overlap finder finds little on real faces: the runs of one `bench/real_faces.py` tag, re-scored.

For every run of the tag: class centres as the run computed them (``facefleet.workers.overlaps``), then
against the people the bench put in both A and B: what the product's rule lists (and at looser
false-match rates), and how many shared people are mutual nearest neighbours across A and B with no cut at
all (an upper bound for any cut), raw and with the mean centre subtracted first.

With --montage, the pairs of each run's stored list that the bench's truth calls wrong are drawn for a
person to judge (up to 6 aligned crops per side, a row per pair): CelebA itself has people under two
identity numbers, so a "wrong" pair can be a real overlap the split did not know about.

Run: .venv/bin/python bench/real_faces_overlaps.py --tag s25-shard-r1 [--montage]   (after that tag's run)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_faces  # noqa: E402

RATES = (1e-3, 0.02, 0.05, 0.1)
FOLDERS = {"rf-a": "train_a", "rf-b": "train_b", "rf-orl": "orl"}  # the bench's dataset -> data folder
SIDE = 64


def unexpected_montage(run_id: int, workdir: Path, out: Path) -> int:
    """Draw the pairs of the run's stored overlap list that are not one shared person of the split; returns
    how many were drawn (no file when none)."""
    from PIL import Image

    from facefleet.platform.db.session import session_scope
    from facefleet.platform.runs.overlaps import load_run_overlaps
    from facefleet.platform.store import get_store

    with session_scope() as session:
        document = load_run_overlaps(session, get_store(), run_id)
    wrong = [
        pair
        for pair in document.pairs
        if not (
            (pair.first.dataset, pair.second.dataset) == ("rf-a", "rf-b")
            and pair.first.identity[1:] == pair.second.identity[1:]
        )
    ]
    if not wrong:
        return 0
    canvas = Image.new("RGB", (SIDE * 12 + 8, SIDE * len(wrong)), "white")
    for row, pair in enumerate(wrong):
        for side, who in enumerate((pair.first, pair.second)):
            crops = sorted((workdir / "data" / FOLDERS[who.dataset] / who.identity).glob("*.png"))[:6]
            for k, crop in enumerate(crops):
                with Image.open(crop) as image:
                    canvas.paste(
                        image.convert("RGB").resize((SIDE, SIDE)),
                        (side * (6 * SIDE + 8) + k * SIDE, row * SIDE),
                    )
    canvas.save(out)
    for pair in wrong:
        print(
            f"  run {run_id}: {pair.first.dataset}/{pair.first.identity} ~ {pair.second.dataset}/"
            f"{pair.second.identity} {pair.score:.3f} (not shared in the split)"
        )
    return len(wrong)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True)
    parser.add_argument("--montage", action="store_true", help="draw each run's pairs the truth calls wrong")
    parser.add_argument(
        "--workdir", type=Path, default=real_faces.ROOT / "bench" / "results" / "real_faces_work"
    )
    args = parser.parse_args()
    real_faces.setup_platform(args.workdir)

    from sqlalchemy import select

    from facefleet.nn.overlaps import find_overlaps
    from facefleet.platform.db.models import Run, RunDataset
    from facefleet.platform.db.session import session_scope
    from facefleet.platform.store import get_store
    from facefleet.workers.label_space import label_space_for_versions
    from facefleet.workers.overlaps import embedding_centres

    results = json.loads((real_faces.OUT / f"{args.tag}.json").read_text())["runs"]
    print("| run | variant, seed | centres | rate | cut | found | correct | mutual NN A-B, no cut |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, runs in results.items():
        for result in runs:
            run_id, config = result["run_id"], result["config"]
            with session_scope() as session:
                rows = session.scalars(
                    select(RunDataset)
                    .where(RunDataset.run_id == run_id, RunDataset.role == "train")
                    .order_by(RunDataset.position)
                )
                entries = label_space_for_versions(session, [row.dataset_version_id for row in rows])
                model = dict(session.get(Run, run_id).summary["model"])  # type: ignore[union-attr]
            backbone = real_faces.load_backbone(model, config)
            centres, names = embedding_centres(backbone, get_store(), entries, config["input_size"], seed=0)
            sizes = [entry.num_classes for entry in entries]
            truth = {
                (names[0].index("a" + name[1:]), sizes[0] + j)
                for j, name in enumerate(names[1])
                if "a" + name[1:] in names[0]
            }
            for label, vectors in (("raw", centres), ("centred", centres - centres.mean(0, keepdim=True))):
                loose = find_overlaps(vectors, sizes, false_match_rate=0.999)  # every mutual pair
                upper = sum((p.first, p.second) in truth for p in loose.pairs)
                for rate in RATES:
                    found = find_overlaps(vectors, sizes, false_match_rate=rate)
                    pairs = {(p.first, p.second) for p in found.pairs}
                    print(
                        f"| {run_id} | {variant} {result['seed']} | {label} | {rate:g} | "
                        f"{found.threshold:.4f} | {len(pairs)} | {len(pairs & truth)} | "
                        f"{upper} / {len(truth)} |"
                    )
            if args.montage:
                out = real_faces.OUT / f"overlaps_{args.tag}_run{run_id}_unexpected.png"
                if unexpected_montage(run_id, args.workdir, out):
                    print(f"  run {run_id}: drawn in {out}")


if __name__ == "__main__":
    main()
