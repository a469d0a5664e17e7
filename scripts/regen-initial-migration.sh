#!/usr/bin/env bash
# Until the first release, the initial migration is regenerated from the ORM models.
# After a release, schema changes must be new migration files instead.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
current=alembic/versions/0001_initial_schema.py
# Autogenerate compares against an empty database, so the old initial migration must be out of the way.
[ -f "$current" ] && mv "$current" "$tmp/backup.py"
if ! FACEFLEET_DATABASE_URL="sqlite:///$tmp/gen.db" .venv/bin/alembic revision --autogenerate \
     -m "initial schema" --rev-id 0001 >"$tmp/log" 2>&1; then
  cat "$tmp/log" >&2
  [ -f "$tmp/backup.py" ] && mv "$tmp/backup.py" "$current"
  echo "regeneration failed; the old migration is restored" >&2
  exit 1
fi
.venv/bin/ruff format -q "$current" || true
echo "regenerated $current"
