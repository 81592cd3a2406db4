#!/bin/bash
# The standby bootstraps itself: on an empty data directory it takes a base backup of the
# primary (pg_basebackup -R writes the streaming configuration), then starts as a hot
# standby. In the container it runs as root before docker-entrypoint.sh; outside one (the
# test in tests/deploy.rs) set PRIMARY_HOST/PRIMARY_PORT and run it without arguments: it
# bootstraps and exits.
set -euo pipefail
PRIMARY_HOST="${PRIMARY_HOST:-pg-primary}"
PRIMARY_PORT="${PRIMARY_PORT:-5432}"

# Run as the postgres user: gosu in the image, runuser elsewhere, nothing if we are it.
as_postgres() {
  if [ "$(id -u)" != 0 ]; then "$@"
  elif command -v gosu >/dev/null; then gosu postgres "$@"
  else runuser -u postgres -- "$@"
  fi
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U postgres -q; do sleep 1; done
  mkdir -p "$PGDATA"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PGDATA"; fi
  chmod 700 "$PGDATA"
  as_postgres env PGPASSWORD="$REPLICATION_PASSWORD" \
    pg_basebackup -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U replicator -D "$PGDATA" -R -X stream -S standby_slot --checkpoint=fast
fi
if [ $# -gt 0 ]; then
  exec docker-entrypoint.sh "$@"
fi
