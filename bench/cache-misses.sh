#!/usr/bin/env bash
# Cache misses per proxied request, simulated by callgrind (run by hand, not in CI).
#
#   bench/cache-misses.sh [TENANTS] [BINARY]   # default: 1000 tenants, target/release/bulkhead
#
# The 10,000-route scenario of bench/compare.sh costs bulkhead throughput
# because every request is for a different tenant: its host entry, routes,
# group state and metric series are rarely in cache. Wall-clock runs on a
# shared VM move by ±10%; this count repeats. The proxy runs under callgrind
# with a simulated 1 MiB, 16-way last-level cache (the size of this VM's L2)
# and the same config as compare.sh (TENANTS tenants × 10 path routes, each
# with its own group), serving wrk with the same Lua script: every request
# to another tenant. Collection starts after a 3 s warm-up (pools filled,
# metric series created); the totals are divided by the requests served.
# "DLmr" are the data reads that missed the simulated cache: with 1,000
# tenants, each costs about an L3 hit (~40–50 ns here). Loopback only;
# everything started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
TENANTS="${1:-1000}"
BIN="${2:-target/release/bulkhead}"
. bench/callgrind-setup.sh
callgrind_setup "$BIN" valgrind:valgrind nginx:nginx wrk:wrk callgrind_control:valgrind
python3 - "$TENANTS" "$WORK" "$PROXY_HEAD" <<'EOF'
import sys
tenants, work, yaml = int(sys.argv[1]), sys.argv[2], sys.argv[3]
for i in range(tenants):
    yaml += f"  t{i}:\n    hosts: [t{i}.bench.test]\n"
    yaml += '    target_groups: { app: { zone: public, targets: ["127.0.0.1:18000"] } }\n    routes:\n'
    yaml += "".join(f"      - {{ name: r{j}, match: {{ path_prefix: /r{j}/ }}, forward: app }}\n" for j in range(10))
open(f"{work}/bulkhead.yaml", "w").write(yaml)
open(f"{work}/hosts.lua", "w").write(f"""local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/r" .. (n % 10) .. "/x", {{ Host = "t" .. ((n * 7919) % {tenants}) .. ".bench.test" }})
end
""")
EOF
valgrind --tool=callgrind --instr-atstart=no --cache-sim=yes --LL=1048576,16,64 \
  --callgrind-out-file="$WORK/cg.out" "$BIN" run -c "$WORK/bulkhead.yaml" 2>/dev/null &
pid=$!
for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/18100) 2>/dev/null && break; sleep 0.2; done
load() { timeout 120 wrk -t1 -c16 -d"$1" -s "$WORK/hosts.lua" http://127.0.0.1:18100/; }
load 3s >/dev/null
callgrind_control -i on "$pid" >/dev/null 2>&1
requests=$(load 15s | awk '/requests in/ { print $1 }')
callgrind_control -i off "$pid" >/dev/null 2>&1 # not the shutdown
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
callgrind_annotate --show=Ir,DLmr,DLmw "$WORK/cg.out" 2>/dev/null | awk -v n="$requests" -v t="$TENANTS" '
  /PROGRAM TOTALS/ { gsub(",", ""); printf "%d tenants, %d requests: per request %d instructions, %.1f LL read misses, %.1f LL write misses\n", t, n, $1 / n, $3 / n, $5 / n }'
