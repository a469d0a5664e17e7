from tests.platform.test_scheduler_replicas import *  # noqa
from facefleet.platform import scheduler as sched_mod

def test_probe(pg_engine, local_store, tmp_path, monkeypatch):
    monkeypatch.setattr(sched_mod.Scheduler, "_claim", lambda self, stmt: stmt)
    test_two_replicas_on_postgres_never_double_start(pg_engine, local_store, tmp_path)
