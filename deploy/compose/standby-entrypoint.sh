#!/bin/bash
# The standby bootstraps itself: on an empty volume it takes a base backup of the primary
# (pg_basebackup -R writes the streaming configuration), then starts as a hot standby.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h pg-primary -p 5432 -U postgres -q; do sleep 1; done
  mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
  gosu postgres env PGPASSWORD="$REPLICATION_PASSWORD" \
    pg_basebackup -h pg-primary -p 5432 -U replicator -D "$PGDATA" -R -X stream -S standby_slot --checkpoint=fast
fi
exec docker-entrypoint.sh "$@"
