"""Database: ORM models, engine/session factories and migrations."""
