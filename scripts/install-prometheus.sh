#!/usr/bin/env bash
# Prometheus and promtool for the monitoring tests and the demo's scrape: Debian's package
# (it installs without starting anything we need; Lethe runs its own instance on loopback).
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "install-prometheus: apt-get install prometheus"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # the package may start a system service; Lethe's tests and demo start their own
  (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null \
    || pkill -x prometheus) >/dev/null 2>&1 || true
  exit 0
fi
echo "install-prometheus: prometheus and promtool are needed by 'make test' and 'make demo'." >&2
echo "  install them as root with: apt-get install prometheus" >&2
echo "  (or put both binaries from prometheus.io on PATH)" >&2
exit 1
