"""Settings: embedded defaults, environment overrides, masking of secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from facefleet.platform.settings import Settings, get_settings


def test_embedded_defaults_live_under_the_data_dir(tmp_path: Path) -> None:
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    assert settings.effective_database_url == f"sqlite:///{data_dir / 'facefleet.db'}"
    assert settings.effective_store_url == (data_dir / "store").as_uri()
    assert settings.ray_address is None
    assert settings.launcher == "local"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFLEET_DATABASE_URL", "postgresql+psycopg://u:secret@db:5432/ff")
    monkeypatch.setenv("FACEFLEET_STORE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("FACEFLEET_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("FACEFLEET_RAY_ADDRESS", "http://ray-head:8265")
    monkeypatch.setenv("FACEFLEET_LOG_LEVEL", "debug")
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.effective_database_url.endswith("@db:5432/ff")
    assert settings.effective_store_url == "s3://bucket/prefix"
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.ray_address == "http://ray-head:8265"
    assert settings.log_level == "DEBUG"


def test_settings_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_settings()
    monkeypatch.setenv("FACEFLEET_LOG_LEVEL", "ERROR")
    assert get_settings() is first


def test_masked_hides_passwords_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFLEET_DATABASE_URL", "postgresql+psycopg://u:hunter2@db/ff")
    monkeypatch.setenv("FACEFLEET_WEBHOOK_SECRET", "topsecret")
    masked = Settings().masked()
    assert "hunter2" not in masked["database_url"]
    assert masked["webhook_secret"] == "********"
    assert "topsecret" not in str(masked)


def test_invalid_launcher_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFLEET_LAUNCHER", "slurm")
    with pytest.raises(ValueError, match="launcher"):
        Settings()
