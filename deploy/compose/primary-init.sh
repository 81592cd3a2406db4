#!/bin/bash
# Runs once on the primary's empty volume (docker-entrypoint-initdb.d): the replication role,
# the standby's slot, and the pg_hba line that lets the standby stream. psql reaches the
# server through the usual PG* variables (the image's entrypoint sets them; so does the test
# in tests/deploy.rs, which then reloads the configuration as the entrypoint's restart does).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '${REPLICATION_PASSWORD}';
SELECT pg_create_physical_replication_slot('standby_slot');
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
