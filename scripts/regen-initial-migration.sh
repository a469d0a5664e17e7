#!/usr/bin/env bash
# Until the first release, the initial migration is regenerated from the ORM models.
# After a release, schema changes must be new migration files instead.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
FACEFLEET_DATABASE_URL="sqlite:///$tmp/gen.db" .venv/bin/alembic revision --autogenerate -m "initial schema" --rev-id 0001_tmp >/dev/null
mv alembic/versions/0001_tmp_initial_schema.py alembic/versions/0001_initial_schema.py.new
rm -f alembic/versions/0001_initial_schema.py
sed -e "s/^revision = '0001_tmp'/revision = '0001'/" -e "s/Revision ID: 0001_tmp/Revision ID: 0001/" \
  alembic/versions/0001_initial_schema.py.new > alembic/versions/0001_initial_schema.py
rm -f alembic/versions/0001_initial_schema.py.new
rm -rf "$tmp"
echo "regenerated alembic/versions/0001_initial_schema.py"
