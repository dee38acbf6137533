#!/usr/bin/env bash
# Install the system packages federation's demo and tests run: InfluxDB 1.x (influxd) from
# Debian, and PostgreSQL for the ledger tests on PostgreSQL. Does nothing when they are present.
# The tests start their own throwaway PostgreSQL on loopback (federation.localstack), as the
# `postgres` account when run as root: the package creates that account, and no system-wide
# cluster or service is created or started here.
set -euo pipefail

need=()
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
if [ "${FEDERATION_SKIP_POSTGRES:-}" = "" ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -eq 0 ]; then
  pg_bins=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ' ' || true)
  echo "system packages present: influxd $(influxd version 2>/dev/null | head -1)," \
    "PostgreSQL ${pg_bins:-not installed (FEDERATION_SKIP_POSTGRES)}"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: missing Debian packages: ${need[*]}; install them as root: apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if [[ " ${need[*]} " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
  # Debian's postgresql-common reads this before creating (and starting) a `main` cluster.
  mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}" >/dev/null
echo "installed: ${need[*]}"
