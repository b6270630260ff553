#!/usr/bin/env bash
# bulkhead vs nginx vs HAProxy on this machine, side by side (run by hand, not in CI).
#
#   bench/compare.sh                          # every scenario, 8 s runs, median of 3
#   SCENARIOS=h1_keepalive,h2_tls bench/compare.sh
#   DURATION=15 REPEAT=5 bench/compare.sh
#
# Installs what it needs (Debian: nginx, haproxy, wrk, nghttp2-client for h2load),
# builds bulkhead in release mode, then runs bench/compare.py. Loopback only;
# every process it starts is stopped when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client taskset:util-linux openssl:openssl; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Debian packages start system-wide services: keep them out of the way.
service nginx stop >/dev/null 2>&1 || true
service haproxy stop >/dev/null 2>&1 || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --quiet --release -p bulkhead
exec python3 bench/compare.py "$@"
