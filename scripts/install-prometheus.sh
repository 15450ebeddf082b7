#!/usr/bin/env bash
# Prometheus and promtool for the monitoring tests and the demo's scrape: Debian's package
# (Lethe runs its own instance on loopback). As root, or with password-less sudo, the package
# is installed; otherwise its two binaries are unpacked from the downloaded .deb into
# BIN_DIR (the Makefile passes the virtual environment's bin, which it puts on PATH).
set -euo pipefail
BIN_DIR="${1:-}"
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if [ -n "$BIN_DIR" ] && [ -x "$BIN_DIR/prometheus" ] && [ -x "$BIN_DIR/promtool" ]; then
  exit 0
fi
as_root=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root="sudo -n"
fi
if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$as_root" ]; }; then
  echo "install-prometheus: apt-get install prometheus"
  # a sudo that may not run apt-get falls through to unpacking below
  if $as_root apt-get update -qq \
    && $as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends prometheus >/dev/null; then
    # the package may start its system service; Lethe's tests and demo start their own
    # (only that service is stopped: any other Prometheus on the host is left alone)
    ($as_root systemctl stop prometheus 2>/dev/null \
      || $as_root service prometheus stop 2>/dev/null) >/dev/null 2>&1 || true
    exit 0
  fi
  echo "install-prometheus: apt-get install failed; trying to unpack the package" >&2
fi
if [ -n "$BIN_DIR" ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
  echo "install-prometheus: not root; unpacking Debian's prometheus package into $BIN_DIR"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
    dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
    install -m 0755 "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$BIN_DIR/"
    exit 0
  fi
  echo "install-prometheus: apt-get download prometheus failed (no package lists?)" >&2
fi
echo "install-prometheus: prometheus and promtool are needed by 'make test' and 'make demo'." >&2
echo "  install them as root with: apt-get install prometheus" >&2
echo "  (or put both binaries from prometheus.io on PATH)" >&2
exit 1
