#!/usr/bin/env bash
# Install the system packages federation's demo and tests run: InfluxDB 1.x (influxd) from
# Debian, and PostgreSQL for the ledger tests on PostgreSQL. Does nothing when they are present.
set -euo pipefail

need=()
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
if [ "${FEDERATION_SKIP_POSTGRES:-}" = "" ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages present: influxd $(influxd version 2>/dev/null | head -1)"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: missing Debian packages: ${need[*]}; install them as root: apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "installed: ${need[*]}"
