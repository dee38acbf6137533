#!/usr/bin/env bash
# Install the system packages federation's demo and tests run: InfluxDB 1.x (influxd) from
# Debian, PostgreSQL for the ledger tests on PostgreSQL, Chromium and its WebDriver for the web
# page's browser tests, and Prometheus for `promtool` (the /metrics and alert-rule checks).
# Does nothing when they are present. No service is started: while installing, a policy-rc.d
# refuses every service start (Debian's packages of Prometheus would start one otherwise).
# The tests start their own throwaway PostgreSQL on loopback (federation.devstack.localstack), as the
# `postgres` account when run as root: the package creates that account, and no system-wide
# cluster or service is created or started here.
set -euo pipefail

need=()
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ "${FEDERATION_SKIP_POSTGRES:-}" = "" ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -eq 0 ]; then
  pg_bins=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ' ' || true)
  echo "system packages present: influxd $(influxd version 2>/dev/null | head -1)," \
    "PostgreSQL ${pg_bins:-not installed (FEDERATION_SKIP_POSTGRES)}," \
    "$(chromium --version 2>/dev/null | head -1), $(promtool --version 2>&1 | head -1)"
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
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# federation: no service starts while its test dependencies install\nexit 101\n' \
    >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}" >/dev/null
echo "installed: ${need[*]}"
