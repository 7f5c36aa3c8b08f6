#!/usr/bin/env bash
# Make the machine's PostgreSQL (Debian cluster "main", 127.0.0.1:5432) ready for logical decoding:
# running, wal_level=logical, max_replication_slots and max_wal_senders >= 32.
# Idempotent: when all is already so, it only asks the server three settings and exits 0.
# Without root (or without a Debian cluster) it cannot change anything; it then says what to do and exits 1.
# Env: PG15_HOST (127.0.0.1), PG15_PORT (5432), PG15_USER (postgres), PG_CLUSTER (main).
set -euo pipefail

HOST="${PG15_HOST:-127.0.0.1}"
PORT="${PG15_PORT:-5432}"
PGUSER_NAME="${PG15_USER:-postgres}"
CLUSTER="${PG_CLUSTER:-main}"
MIN_SLOTS=32

say() { echo "ensure_pg15_logical: $*" >&2; }

# The Debian cluster version: the one in /etc/postgresql that has our cluster (highest first).
VERSION=""
if [ -d /etc/postgresql ]; then
    for dir in $(ls -1 /etc/postgresql 2>/dev/null | sort -rn); do
        if [ -f "/etc/postgresql/$dir/$CLUSTER/postgresql.conf" ]; then VERSION="$dir"; break; fi
    done
fi

PSQL="$(command -v psql || true)"
if [ -z "$PSQL" ] && [ -n "$VERSION" ] && [ -x "/usr/lib/postgresql/$VERSION/bin/psql" ]; then
    PSQL="/usr/lib/postgresql/$VERSION/bin/psql"
fi
if [ -z "$PSQL" ]; then
    say "psql not found; install postgresql-client (apt-get install -y postgresql-client) or start a PostgreSQL 15 with wal_level=logical at $HOST:$PORT yourself."
    exit 1
fi

q() { PGCONNECT_TIMEOUT=3 "$PSQL" -X -qAt -h "$HOST" -p "$PORT" -U "$PGUSER_NAME" -d postgres -v ON_ERROR_STOP=1 -c "$1" 2>/dev/null; }
is_root() { [ "$(id -u)" -eq 0 ]; }
ctl() { pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$CLUSTER" "$@"; }
wait_up() {
    for _ in $(seq 1 60); do q "SELECT 1" >/dev/null && return 0; sleep 0.5; done
    return 1
}
manual_hint() {
    say "to fix it, as root run:"
    say "  psql -h $HOST -p $PORT -U $PGUSER_NAME -c \"ALTER SYSTEM SET wal_level = logical\""
    say "  psql -h $HOST -p $PORT -U $PGUSER_NAME -c \"ALTER SYSTEM SET max_replication_slots = $MIN_SLOTS\""
    say "  psql -h $HOST -p $PORT -U $PGUSER_NAME -c \"ALTER SYSTEM SET max_wal_senders = $MIN_SLOTS\""
    say "  pg_ctlcluster --skip-systemctl-redirect ${VERSION:-15} $CLUSTER restart"
    say "or point the tests elsewhere: CDC_TEST_PG15_URL=postgresql://user@host:port/postgres"
}

# 1. Running?
if ! q "SELECT 1" >/dev/null; then
    if is_root && [ -n "$VERSION" ] && command -v pg_ctlcluster >/dev/null; then
        say "PostgreSQL $VERSION/$CLUSTER is not answering at $HOST:$PORT; starting it"
        ctl start || true
        if ! wait_up; then
            say "PostgreSQL $VERSION/$CLUSTER did not come up; see /var/log/postgresql/postgresql-$VERSION-$CLUSTER.log"
            exit 1
        fi
    else
        say "no PostgreSQL answers at $HOST:$PORT and I cannot start it (needs root and a Debian cluster in /etc/postgresql)."
        say "start it with: pg_ctlcluster --skip-systemctl-redirect ${VERSION:-15} $CLUSTER start (as root)"
        exit 1
    fi
fi

# 2. Settings.
read -r WAL SLOTS SENDERS <<<"$(q "SELECT current_setting('wal_level'), current_setting('max_replication_slots'), current_setting('max_wal_senders')" | tr '|' ' ')"
if [ "$WAL" = "logical" ] && [ "$SLOTS" -ge "$MIN_SLOTS" ] && [ "$SENDERS" -ge "$MIN_SLOTS" ]; then
    echo "ensure_pg15_logical: PostgreSQL at $HOST:$PORT is ready (wal_level=logical, max_replication_slots=$SLOTS, max_wal_senders=$SENDERS)"
    exit 0
fi

say "PostgreSQL at $HOST:$PORT has wal_level=$WAL, max_replication_slots=$SLOTS, max_wal_senders=$SENDERS; logical decoding needs wal_level=logical and >= $MIN_SLOTS slots/senders"
if ! is_root || [ -z "$VERSION" ] || ! command -v pg_ctlcluster >/dev/null; then
    say "cannot reconfigure it from here (needs root and pg_ctlcluster for a cluster in /etc/postgresql)."
    manual_hint
    exit 1
fi

alter() {
    q "ALTER SYSTEM SET $1" >/dev/null || { say "ALTER SYSTEM SET $1 failed (is $PGUSER_NAME a superuser?)"; manual_hint; exit 1; }
}
alter "wal_level = logical"
[ "$SLOTS" -ge "$MIN_SLOTS" ] || alter "max_replication_slots = $MIN_SLOTS"
[ "$SENDERS" -ge "$MIN_SLOTS" ] || alter "max_wal_senders = $MIN_SLOTS"
say "restarting PostgreSQL $VERSION/$CLUSTER"
ctl restart
if ! wait_up; then
    say "PostgreSQL $VERSION/$CLUSTER did not come back after the restart; see /var/log/postgresql/postgresql-$VERSION-$CLUSTER.log"
    exit 1
fi
WAL="$(q "SHOW wal_level")"
if [ "$WAL" != "logical" ]; then
    say "after the restart wal_level is still $WAL (a setting in postgresql.conf or conf.d may override ALTER SYSTEM?)"
    manual_hint
    exit 1
fi
echo "ensure_pg15_logical: PostgreSQL $VERSION/$CLUSTER at $HOST:$PORT now has wal_level=logical"
