#!/bin/sh
# Start PostgreSQL on $PGDATA (making the cluster first when the directory is empty), after
# bringing its roles to this environment on every start:
# - POSTGRES_USER (default voicetrack) logs in with POSTGRES_PASSWORD and owns POSTGRES_DB
#   (default voicetrack): no superuser, no CREATEDB/CREATEROLE; made when missing, its
#   password set each start (a new or rotated Secret on a kept data directory works);
# - POSTGRES_READONLY_USER, when set, logs in with POSTGRES_READONLY_PASSWORD and may only
#   read POSTGRES_DB's public tables (those POSTGRES_USER makes later too); its sessions
#   default to read-only transactions;
# - the superuser `postgres` has no password and pg_hba.conf (rewritten each start) rejects
#   it over TCP: it is reachable only on the local socket in /tmp (this container).
# Passwords travel in the environment and psql's standard input only: never in a process's
# arguments nor in the log. Listens on POSTGRES_LISTEN (default *) port POSTGRES_PORT.
set -eu
: "${PGDATA:?}" "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
user=${POSTGRES_USER:-voicetrack}
db=${POSTGRES_DB:-voicetrack}
ro=${POSTGRES_READONLY_USER:-}
port=${POSTGRES_PORT:-5432}
if [ "$user" = postgres ] || [ "$ro" = postgres ] || { [ -n "$ro" ] && [ "$ro" = "$user" ]; }; then
  echo "voicetrack-postgresql: POSTGRES_USER and POSTGRES_READONLY_USER must differ and not be postgres (the superuser)" >&2
  exit 2
fi
if [ -n "$ro" ]; then
  : "${POSTGRES_READONLY_PASSWORD:?POSTGRES_READONLY_PASSWORD is required with POSTGRES_READONLY_USER}"
fi
made=""
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  initdb --username=postgres --auth-local=trust --auth-host=reject \
         --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
  made=1
fi
cat > "$PGDATA/pg_hba.conf" <<'HBA'
# Written by voicetrack-postgresql on every start (edits here are replaced).
local all      all                trust
host  all      postgres 0.0.0.0/0 reject
host  all      postgres ::/0      reject
host  all      all      0.0.0.0/0 scram-sha-256
host  all      all      ::/0      scram-sha-256
HBA
# The set-up server listens on a private socket only: no client (nor a readiness check)
# reaches it before the roles are right. No statement is logged (ALTER ROLE … PASSWORD).
# Its server log goes to a file in that directory, shown when it fails to start (a data
# directory with wrong permissions, a crash recovery that fails) so the reason reaches the
# pod's log; the wait allows a long crash recovery (PGCTLTIMEOUT, default 1 h).
sock=$(mktemp -d)
if ! pg_ctl -D "$PGDATA" -w -t "${PGCTLTIMEOUT:-3600}" -l "$sock/setup.log" start -o \
  "-c listen_addresses='' -c unix_socket_directories=$sock -p $port -c log_statement=none \
  -c log_min_error_statement=panic" >/dev/null; then
  echo "voicetrack-postgresql: the set-up server did not start; its log:" >&2
  cat "$sock/setup.log" >&2
  exit 1
fi
psql -X -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres -q \
     -v user="$user" -v db="$db" -v ro="$ro" <<'SQL'
\getenv pw POSTGRES_PASSWORD
SELECT format('CREATE ROLE %I', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  PASSWORD :'pw';
\unset pw
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
ALTER ROLE postgres PASSWORD NULL;
SELECT :'ro' <> '' AS has_ro \gset
\if :has_ro
\getenv ropw POSTGRES_READONLY_PASSWORD
SELECT format('CREATE ROLE %I', :'ro')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'ro') \gexec
ALTER ROLE :"ro" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  PASSWORD :'ropw';
\unset ropw
ALTER ROLE :"ro" SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE :"db" TO :"ro";
\connect :"db"
GRANT USAGE ON SCHEMA public TO :"ro";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"ro";
ALTER DEFAULT PRIVILEGES FOR ROLE :"user" IN SCHEMA public GRANT SELECT ON TABLES TO :"ro";
\endif
SQL
pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
rm -f "$sock/setup.log"
rmdir "$sock"
if [ -n "$made" ]; then
  echo "voicetrack-postgresql: made the cluster in $PGDATA (role $user, database $db)"
fi
exec postgres -D "$PGDATA" -c listen_addresses="${POSTGRES_LISTEN-*}" -p "$port" \
     -c unix_socket_directories=/tmp -c jit=off
