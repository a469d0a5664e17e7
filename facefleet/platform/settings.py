"""The one settings object: environment variables with the FACEFLEET_ prefix, embedded defaults when unset."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LauncherName = Literal["local", "ray", "kuberay"]


class Settings(BaseSettings):
    """Effective configuration. Every field maps to ``FACEFLEET_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FACEFLEET_", extra="ignore")

    data_dir: Path = Field(
        default=Path(".facefleet"), description="Where embedded defaults keep their files."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file <data_dir>/facefleet.db."
    )
    store_url: str | None = Field(
        default=None, description="file:///path or s3://bucket/prefix; default: <data_dir>/store."
    )
    s3_endpoint_url: str | None = Field(default=None, description="Custom S3 endpoint (MinIO, moto).")
    s3_region: str = Field(default="us-east-1", description="S3 region name.")
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster address (http://head:8265 for the Jobs API); unset = local Ray.",
    )
    ray_runtime_env: dict[str, Any] | None = Field(
        default=None,
        description="JSON runtime_env merged into each Ray job (pip, py_modules/working_dir URIs, env_vars).",
    )
    ray_preflight: bool = Field(
        default=True,
        description="Check before each ray-launcher run that the cluster's Python imports this facefleet.",
    )
    ray_auth_token: SecretStr | None = Field(
        default=None, description="Token for a Ray head with token auth (`ray get-auth-token` on the head)."
    )
    launcher: LauncherName = Field(default="local", description="How runs start: local | ray | kuberay.")
    kuberay_namespace: str = Field(
        default="facefleet", description="Namespace for RayJobs (kuberay launcher)."
    )
    kuberay_image: str = Field(default="facefleet:latest", description="Image for RayJob pods.")
    kuberay_gpu_image: str | None = Field(
        default=None, description="Image (CUDA torch) for RayJob GPU workers; default: kuberay_image."
    )
    log_level: str = Field(default="INFO", description="Python logging level.")
    signing_key_path: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM); default <data_dir>/signing_key.pem, made on first use.",
    )
    api_key: SecretStr | None = Field(default=None, description="Key the CLI sends with --server.")
    server_url: str | None = Field(default=None, description="facefleet API the CLI talks to (remote mode).")
    public_url: str = Field(
        default="http://127.0.0.1:8000", description="URL terminals use to reach the API."
    )
    smtp_host: str | None = Field(default=None, description="SMTP server for e-mail notifications.")
    smtp_port: int = Field(default=25, description="SMTP port.")
    smtp_from: str = Field(default="facefleet@localhost", description="Sender of notification e-mails.")
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key for webhook signatures."
    )
    notify_webhooks: list[str] = Field(
        default_factory=list,
        description="Webhook URLs told about every event (JSON list), besides policy targets.",
    )
    notify_emails: list[str] = Field(
        default_factory=list,
        description="Addresses told about every event (JSON list), besides policy targets.",
    )
    upload_max_bytes: int = Field(
        default=10 << 30, ge=1, description="Largest dataset archive the API accepts."
    )
    dataset_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Folders and s3:// prefixes the API may register datasets from (JSON list or "
        "comma-separated); empty: the API registers uploads only. The CLI without --server reads any "
        "path its user can.",
    )
    attempt_max_bytes: int = Field(
        default=1 << 20,
        ge=1,
        description="Largest attempt a terminal may upload (request body, both face crops, base64).",
    )
    attempt_rate_per_hour: int = Field(
        default=120, ge=1, description="Most attempts one terminal may upload in any hour."
    )
    archive_max_bytes: int = Field(
        default=32 << 30, ge=1, description="Most bytes a dataset archive may expand to (all entries)."
    )
    archive_max_entry_bytes: int = Field(
        default=1 << 30, ge=1, description="Most bytes one archive entry may expand to."
    )
    archive_max_entries: int = Field(default=200_000, ge=1, description="Most entries in a dataset archive.")
    archive_max_ratio: float = Field(
        default=100.0,
        ge=1.0,
        allow_inf_nan=False,
        description="Most an archive (or one entry over 1 MiB) may expand, as expanded / compressed size.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key for web-console session cookies; default: derived from the signing key.",
    )
    session_hours: float = Field(
        default=8.0, gt=0, le=24 * 30, description="Web-console sign-in lifetime in hours."
    )
    api_workers: int = Field(
        default=1, ge=1, le=64, description="API server processes `facefleet serve` starts (uvicorn workers)."
    )
    db_pool_size: int = Field(
        default=8, ge=1, le=200, description="PostgreSQL connections each API/scheduler process keeps open."
    )
    db_max_overflow: int = Field(
        default=4, ge=0, le=200, description="Extra PostgreSQL connections a process may open under load."
    )
    db_pool_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="Longest wait for a pooled database connection."
    )
    api_max_queue: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="Requests a worker holds waiting for a database slot; more get 503 + Retry-After.",
    )
    api_max_wait_seconds: float = Field(
        default=0.5, gt=0, le=60, description="Longest a request waits for a slot before 503 + Retry-After."
    )

    @field_validator("dataset_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'facefleet.db').resolve()}"

    @property
    def effective_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return (self.data_dir / "store").resolve().as_uri()

    @property
    def effective_signing_key_path(self) -> Path:
        return self.signing_key_path or self.data_dir / "signing_key.pem"

    def masked(self) -> dict[str, str]:
        """Settings as strings, secrets and URL passwords masked, for `facefleet config`."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "********" if value.get_secret_value() else ""
            elif value is None:
                text = ""
            else:
                text = str(value)
            if name == "database_url":
                text = mask_url_password(self.effective_database_url)
            if name == "ray_runtime_env" and value:
                env_vars = {key: "********" for key in value.get("env_vars") or {}}
                text = json.dumps({**value, **({"env_vars": env_vars} if env_vars else {})})
            if name == "store_url":
                text = self.effective_store_url
            out[name] = text
        return out


def mask_url_password(url: str) -> str:
    """Replace the password of ``scheme://user:pass@host`` with asterisks."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: show unchanged
        return url
    if parsed.password:
        return parsed.render_as_string(hide_password=True)
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the environment once per process."""
    return Settings()
