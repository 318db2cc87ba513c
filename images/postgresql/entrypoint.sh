#!/bin/sh
# Start PostgreSQL on $PGDATA, making the cluster first when the directory is empty:
# superuser `postgres` and an owner role and database (POSTGRES_USER, POSTGRES_DB) with the
# password in POSTGRES_PASSWORD (scram-sha-256 over TCP; the local socket in /tmp trusts
# only this container's user). Listens on POSTGRES_LISTEN (default *) port POSTGRES_PORT.
set -eu
: "${PGDATA:?}" "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
user=${POSTGRES_USER:-voicetrack}
db=${POSTGRES_DB:-voicetrack}
port=${POSTGRES_PORT:-5432}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  pw=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"
  initdb --username=postgres --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256 \
         --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
  rm -f "$pw"
  printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' \
    >> "$PGDATA/pg_hba.conf"
  # The set-up server listens on a private socket only: no client (nor a readiness check)
  # reaches it before the role and the database exist.
  sock=$(mktemp -d)
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=$sock -p $port" \
         -w start >/dev/null
  psql -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres -q \
       -v user="$user" -v db="$db" -v pw="$POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'pw';
CREATE DATABASE :"db" OWNER :"user";
SQL
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  rmdir "$sock"
  echo "voicetrack-postgresql: made the cluster in $PGDATA (role $user, database $db)"
fi
exec postgres -D "$PGDATA" -c listen_addresses="${POSTGRES_LISTEN-*}" -p "$port" \
     -c unix_socket_directories=/tmp -c jit=off
