#!/bin/sh
# First start of the PostgreSQL volume only (docker-entrypoint-initdb.d): the audit
# database and its own role, so workers never use Temporal's database credentials.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v audit_password="$AUDIT_DB_PASSWORD" <<'SQL'
CREATE ROLE mailprov_audit LOGIN PASSWORD :'audit_password';
CREATE DATABASE mailprov_audit OWNER mailprov_audit;
SQL
