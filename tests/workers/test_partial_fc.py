"""The sharded dataset-aware head (Partial FC) on 2 real gloo ranks: equality with the unsharded head,
negative sampling, and checkpoints that re-shard (2 -> 1 -> 2 workers)."""

from __future__ import annotations

from pathlib import Path

import ray.train
import torch
import torch.multiprocessing as mp

from tests.workers import partial_fc_helpers as helpers


def _spawn(function: object, *args: object) -> None:
    mp.spawn(function, args=(2, helpers.free_port(), *args), nprocs=2, join=True)  # type: ignore[arg-type]


def test_sharded_loss_and_every_gradient_equal_the_unsharded_head() -> None:
    # float64, r = 1, 3 datasets (one spanning both shards), crossing p in {0, 0.25, 0.3, 1} with the
    # draw fixed by (seed, step); backbone gradients after real DDP averaging; tolerance 1e-5
    _spawn(helpers.equality_worker)


def test_sampled_sharded_head_equals_one_shard_with_the_same_draws() -> None:
    _spawn(helpers.sampling_worker)


def test_checkpoint_reshards_two_to_one_to_two(tmp_path: Path) -> None:
    from facefleet.workers.train_state import STATE_FILE, restore_state, save_checkpoint

    _spawn(helpers.train_and_save_worker, str(tmp_path))
    # one worker, unsharded head: the checkpoint's full matrix is the two shards stacked
    state = helpers.build_state(1, sharded=False)
    assert restore_state(ray.train.Checkpoint.from_directory(str(tmp_path / "two")), state, "cpu") == 2
    shards = [torch.load(tmp_path / f"shard{r}.pt", weights_only=True) for r in range(2)]
    head = state.model.head
    assert torch.equal(head.weight.detach(), torch.cat([s["weight"] for s in shards]))
    momentum = state.optimizer.state[head.weight]["momentum_buffer"]
    assert torch.equal(momentum, torch.cat([s["momentum"] for s in shards]))
    checkpoint = save_checkpoint(state, 2)
    assert checkpoint is not None
    with checkpoint.as_directory() as path:
        (tmp_path / "one").mkdir()
        (Path(path) / STATE_FILE).rename(tmp_path / "one" / STATE_FILE)
    # back to two sharded workers: each holds exactly its old rows and momentum
    _spawn(helpers.load_and_compare_worker, str(tmp_path))
