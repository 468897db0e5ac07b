#!/usr/bin/env bash
# Make sure the services the integration tests use are running: PostgreSQL on 127.0.0.1:5432 and
# Redis on 127.0.0.1:6379. Starts them where this machine has them installed but stopped; never
# wipes anything. A service that cannot be started is reported, and the tests that need it fail
# with a message naming it.
set -uo pipefail

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  fi
  pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || echo "services: PostgreSQL is NOT reachable on 127.0.0.1:5432" >&2
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null; then
    echo "services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    sleep 0.5
  fi
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || echo "services: Redis is NOT reachable on 127.0.0.1:6379" >&2
fi
exit 0
