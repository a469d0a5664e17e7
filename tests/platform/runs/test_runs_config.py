"""TrainingConfig defaults and the checks that reject configs which cannot run, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from sqlalchemy.orm import Session

from facefleet.platform.errors import InvalidInputError
from facefleet.platform.runs import service
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.platform.store import ObjectStore
from tests.workers.train_helpers import register_tiny_datasets, tiny_config


def test_defaults_follow_the_seeds() -> None:
    config = TrainingConfig.model_validate({})
    # s and m from the real-face benchmark's validation pairs (stop 29), not the seed's 64 / 0.5
    assert (config.head.kind, config.head.s, config.head.m2) == ("arcface", 16.0, 0.2)
    assert config.reversal.lambda_ == 0.1
    bio = config.biometric
    assert (bio.mu_match, bio.mu_nonmatch, bio.sigma, bio.output_dim) == (0.0, 40.0, 1.0, 1)
    assert config.switch_step(240_000) == 80_000
    dumped = config.model_dump(mode="json", by_alias=True)
    assert dumped["reversal"]["lambda"] == 0.1
    assert TrainingConfig.model_validate(dumped) == config


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"biometric": {"enabled": True, "images_per_identity": 1}}, "biometric"),
        ({"biometric": {"enabled": True, "images_per_identity": 4}, "batch_size": 6}, "batch_size"),
        ({"head": {"kind": "triplet"}}, "head.kind"),
        ({"scaling": {"num_workers": 0, "gpus_per_worker": 1}}, "scaling"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_schema_rejects_configs_that_cannot_run(change: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        service.parse_config(tiny_config(**change))
    assert field.split(".")[0] in caught.value.message


def test_unknown_backbone_is_rejected_with_the_known_names() -> None:
    config = service.parse_config(tiny_config(backbone="resnet9000"))
    with pytest.raises(InvalidInputError, match="unknown backbone 'resnet9000'.*tiny"):
        service.check_runnable(config, train_dataset_count=2, local_machine=True)


def test_input_size_the_backbone_cannot_take_is_rejected() -> None:
    config = service.parse_config(tiny_config(backbone="iresnet18", input_size=40))
    with pytest.raises(InvalidInputError, match="multiple of 16"):
        service.check_runnable(config, train_dataset_count=2, local_machine=True)


def test_reversal_needs_two_datasets() -> None:
    config = service.parse_config(tiny_config())
    with pytest.raises(InvalidInputError, match="at least two training datasets"):
        service.check_runnable(config, train_dataset_count=1, local_machine=True)
    single = service.parse_config(tiny_config(reversal={"enabled": False}))
    service.check_runnable(single, train_dataset_count=1, local_machine=True)


def test_more_gpus_than_the_machine_has_is_rejected() -> None:
    wanted = torch.cuda.device_count() + 1
    config = service.parse_config(tiny_config(scaling={"num_workers": 1, "gpus_per_worker": wanted}))
    with pytest.raises(InvalidInputError, match=f"asks for {wanted} GPUs but this machine has"):
        service.check_runnable(config, train_dataset_count=2, local_machine=True)
    service.check_runnable(config, train_dataset_count=2, local_machine=False)  # a cluster may have them


def test_create_run_rejects_a_pair_batch_no_dataset_can_fill(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    names, _ = register_tiny_datasets(session, local_store, tmp_path / "synth")
    too_many = tiny_config(batch_size=40, scaling={"num_workers": 2})  # 10 identities x 2 workers > 8
    with pytest.raises(
        InvalidInputError, match="need a dataset with at least 20 identities; the largest has 8"
    ):
        service.create_run(session, dataset_names_or_version_ids=names, config=too_many)
    with pytest.raises(InvalidInputError, match="at least two training datasets"):
        service.create_run(session, dataset_names_or_version_ids=names[:1], config=tiny_config())


def test_pairs_from_a_memory_need_no_identity_balanced_batches(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    names, _ = register_tiny_datasets(session, local_store, tmp_path / "synth")
    memory = {"enabled": True, "pair_source": "memory", "images_per_identity": 1, "memory_size": 64}
    config = tiny_config(batch_size=41, scaling={"num_workers": 2}, biometric=memory)
    run = service.create_run(session, dataset_names_or_version_ids=names, config=config)
    assert run.config["biometric"]["pair_source"] == "memory"
    with pytest.raises(InvalidInputError, match="memory_size"):
        service.parse_config(tiny_config(biometric={**memory, "memory_size": 1}))


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"head": {"sharded": True}, "scaling": {"num_workers": 1}}, "scaling.num_workers >= 2"),
        ({"head": {"sharded": True}, "scaling": {"num_workers": 0}}, "scaling.num_workers >= 2"),
        ({"head": {"sharded": True, "sample_rate": 0.0}, "scaling": {"num_workers": 2}}, "sample_rate"),
        ({"head": {"sharded": True, "sample_rate": 1.5}, "scaling": {"num_workers": 2}}, "sample_rate"),
        ({"head": {"sample_rate": 0.1}, "scaling": {"num_workers": 2}}, "head.sharded=true"),
    ],
)
def test_sharded_head_configs_that_cannot_run_are_refused(change: dict, text: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        service.parse_config(tiny_config(**change))
    assert text in caught.value.message


def test_a_sharded_head_needs_a_class_per_worker() -> None:
    config = service.parse_config(
        tiny_config(head={"sharded": True, "sample_rate": 0.1}, scaling={"num_workers": 4})
    )
    service.check_head_shards(config, 4)  # one class each: fine
    with pytest.raises(InvalidInputError, match="every shard needs at least one class") as caught:
        service.check_head_shards(config, 3)
    assert caught.value.field == "head.sharded"


def test_the_readmes_training_config_example_is_a_valid_config() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    start = readme.index("backbone: iresnet50")
    example = yaml.safe_load(readme[start : readme.index("```", start)])
    config = TrainingConfig.model_validate(example)
    assert config.backbone == "iresnet50" and config.biometric.pair_source == "batch"
