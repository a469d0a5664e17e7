"""The terminal's local template DB (SQLite): enrolled images, per-model templates + middle features, and a
short ring of recent accepted captures' middle features (the adaptation guard's drifted impostor probe)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (id INTEGER PRIMARY KEY, user TEXT NOT NULL, image BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS ix_samples_user ON samples(user);
CREATE TABLE IF NOT EXISTS templates (
    model_key TEXT NOT NULL, sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL, middle BLOB, middle_shape TEXT,
    PRIMARY KEY (model_key, sample_id)
);
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model_key TEXT NOT NULL, user TEXT NOT NULL,
    middle BLOB NOT NULL, middle_shape TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_captures_model ON captures(model_key, id);
"""


@dataclass
class Template:
    sample_id: int
    user: str
    embedding: np.ndarray  # unit vector
    middle: np.ndarray | None  # the frozen lower part's output for this enrolled image


@dataclass
class Capture:
    id: int  # increasing: newer captures have larger ids
    user: str  # the user the capture was accepted as
    middle: np.ndarray


@dataclass
class Sample:
    id: int
    user: str
    image: bytes  # PNG, re-encoded on enrollment


class TemplateDB:
    """Templates of different models are never compared: each row belongs to one ``model_key``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path)
        connection.execute("PRAGMA foreign_keys=ON")
        try:
            with connection:  # one transaction: commit or roll back
                yield connection
        finally:
            connection.close()

    def add_samples(self, user: str, images: list[bytes]) -> list[int]:
        with self._connect() as db:
            return [
                int(db.execute("INSERT INTO samples(user, image) VALUES (?, ?)", (user, png)).lastrowid or 0)
                for png in images
            ]

    def samples(self) -> list[Sample]:
        with self._connect() as db:
            rows = db.execute("SELECT id, user, image FROM samples ORDER BY id").fetchall()
        return [Sample(int(i), str(u), bytes(b)) for i, u, b in rows]

    def sample(self, sample_id: int) -> Sample | None:
        with self._connect() as db:
            row = db.execute("SELECT id, user, image FROM samples WHERE id = ?", (sample_id,)).fetchone()
        return None if row is None else Sample(int(row[0]), str(row[1]), bytes(row[2]))

    def users(self) -> list[str]:
        with self._connect() as db:
            return [str(u) for (u,) in db.execute("SELECT DISTINCT user FROM samples ORDER BY user")]

    def delete_user(self, user: str) -> int:
        """The user's enrolled images, templates and recent captures."""
        with self._connect() as db:
            db.execute("DELETE FROM captures WHERE user = ?", (user,))
            return db.execute("DELETE FROM samples WHERE user = ?", (user,)).rowcount

    def add_capture(self, model_key: str, user: str, middle: np.ndarray, keep: int) -> None:
        """Remember an accepted capture's middle feature; only the newest ``keep`` of ``model_key`` stay."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO captures(model_key, user, middle, middle_shape) VALUES (?, ?, ?, ?)",
                (model_key, user, _blob(middle), _shape(middle)),
            )
            db.execute(
                "DELETE FROM captures WHERE model_key = ? AND id NOT IN "
                "(SELECT id FROM captures WHERE model_key = ? ORDER BY id DESC LIMIT ?)",
                (model_key, model_key, max(keep, 0)),
            )

    def captures(self, model_key: str) -> list[Capture]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, user, middle, middle_shape FROM captures WHERE model_key = ? ORDER BY id",
                (model_key,),
            ).fetchall()
        return [Capture(int(i), str(u), _array(m, shape)) for i, u, m, shape in rows]

    def replace_templates(
        self, model_key: str, rows: list[tuple[int, np.ndarray, np.ndarray | None]]
    ) -> None:
        """All templates of ``model_key`` at once, in one transaction."""
        with self._connect() as db:
            db.execute("DELETE FROM templates WHERE model_key = ?", (model_key,))
            db.executemany(
                "INSERT INTO templates(model_key, sample_id, embedding, middle, middle_shape)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        model_key,
                        sample_id,
                        _blob(embedding),
                        None if middle is None else _blob(middle),
                        None if middle is None else _shape(middle),
                    )
                    for sample_id, embedding, middle in rows
                ],
            )

    def add_templates(self, model_key: str, rows: list[tuple[int, np.ndarray, np.ndarray | None]]) -> None:
        existing = [(t.sample_id, t.embedding, t.middle) for t in self.templates(model_key)]
        self.replace_templates(model_key, existing + rows)

    def templates(self, model_key: str, user: str | None = None) -> list[Template]:
        query = (
            "SELECT t.sample_id, s.user, t.embedding, t.middle, t.middle_shape FROM templates t "
            "JOIN samples s ON s.id = t.sample_id WHERE t.model_key = ?"
        )
        params: tuple[str, ...] = (model_key,)
        if user is not None:
            query += " AND s.user = ?"
            params = (model_key, user)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY t.sample_id", params).fetchall()
        return [
            Template(
                int(sid),
                str(u),
                np.frombuffer(emb, dtype=np.float32).copy(),
                None if mid is None else _array(mid, shape),
            )
            for sid, u, emb, mid, shape in rows
        ]

    def drop_model(self, model_key: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM templates WHERE model_key = ?", (model_key,))
            db.execute("DELETE FROM captures WHERE model_key = ?", (model_key,))


def _blob(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=np.float32).tobytes()


def _shape(array: np.ndarray) -> str:
    return ",".join(map(str, array.shape))


def _array(blob: bytes, shape: str) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32).reshape(tuple(int(d) for d in shape.split(","))).copy()
