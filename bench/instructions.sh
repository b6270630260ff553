#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind (run by hand, not in CI).
#
#   bench/instructions.sh [BINARY]        # default: target/release/bulkhead
#
# Wall-clock numbers on a shared VM move by ±10% between runs; instruction
# counts do not. The proxy runs under valgrind twice, serving 2,000 and then
# 12,000 HTTP/1.1 keep-alive requests (h2load --h1, 16 connections) to an
# nginx backend; the difference divided by 10,000 is the user-space cost of
# one request, without start-up. Loopback only; everything started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/bulkhead}"
. bench/callgrind-setup.sh
callgrind_setup "$BIN" valgrind:valgrind nginx:nginx h2load:nghttp2-client
{ printf '%s' "$PROXY_HEAD"; cat <<EOF
  bench:
    hosts: ["127.0.0.1"]
    target_groups: { app: { zone: public, targets: ["127.0.0.1:18000"] } }
    routes: [{ name: all, match: { path_prefix: / }, forward: app }]
EOF
} > "$WORK/bulkhead.yaml"
total() { # requests -> total instructions of the proxy's run
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$BIN" run -c "$WORK/bulkhead.yaml" 2>/dev/null &
  local pid=$!
  for _ in $(seq 150); do (echo > /dev/tcp/127.0.0.1/18100) 2>/dev/null && break; sleep 0.2; done
  timeout 300 h2load --h1 -n "$1" -c 16 http://127.0.0.1:18100/ >/dev/null
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  callgrind_annotate "$WORK/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}
small=$(total 2000)
large=$(total 12000)
echo "instructions per request: $(( (large - small) / 10000 ))"
