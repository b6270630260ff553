#!/usr/bin/env python3
"""bulkhead vs nginx vs HAProxy on one machine, side by side.

Run by bench/compare.sh (which installs the tools). Every server listens on
127.0.0.1 only, every load run is time-limited, and every process started
here is stopped on exit. Results: one markdown table per scenario on stdout
(and in $OUT, default bench/results.md), medians of REPEAT runs.

CPU layout on a 2-core machine: the proxy under test on CPU 0; the backend
(nginx returning a fixed 200) and the load generator on CPU 1. The "direct"
row is the load generator against the backend itself: the ceiling.
"""

import atexit
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BULKHEAD = os.environ.get("BULKHEAD", os.path.join(ROOT, "target", "release", "bulkhead"))
DURATION = int(os.environ.get("DURATION", "8"))
REPEAT = int(os.environ.get("REPEAT", "3"))
ONLY = set(filter(None, os.environ.get("SCENARIOS", "").split(",")))
PROXY_CPU, LOAD_CPU = "0", "1"
WORK = tempfile.mkdtemp(prefix="bulkhead-bench-")
PROCS = []

BACKEND = 18000
PORTS = {"bulkhead": (18100, 18101), "nginx": (18200, 18201), "haproxy": (18300, 18301)}


def cleanup():
    for p in PROCS:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    for p in PROCS:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    shutil.rmtree(WORK, ignore_errors=True)


atexit.register(cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def write(name, text):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def start(cmd, cpu):
    p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(WORK, "stderr.log"), "a"), start_new_session=True)
    PROCS.append(p)
    return p


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(p.pid, signal.SIGKILL)
    PROCS.remove(p)


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}; see {WORK}/stderr.log")


def rss_kb(pid):
    """RSS of a process and its children (nginx master + worker), in KiB."""
    total = 0
    pids = [str(pid)] + subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for q in pids:
        try:
            with open(f"/proc/{q}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


# --- certificates (for the load generators and peers; bulkhead uses the same files) ---
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1",
                "-keyout", os.path.join(WORK, "key.pem"), "-out", os.path.join(WORK, "cert.pem")], check=True, capture_output=True)
with open(os.path.join(WORK, "combined.pem"), "w") as f:
    f.write(open(os.path.join(WORK, "cert.pem")).read() + open(os.path.join(WORK, "key.pem")).read())
os.makedirs(os.path.join(WORK, "www"), exist_ok=True)
with open(os.path.join(WORK, "www", "1m"), "wb") as f:
    f.write(os.urandom(1 << 20))

# --- the backend: nginx answering a small fixed 200, and /1m ---
backend_conf = write("backend.conf", f"""
worker_processes 1; user root; pid {WORK}/backend.pid; error_log {WORK}/backend-error.log;
events {{ worker_connections 20000; }}
http {{
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{BACKEND} reuseport backlog=4096;
    location = /1m {{ root {WORK}/www; }}
    location / {{ default_type text/plain; return 200 "hello from the backend\\n"; }}
  }}
}}
""")


def hosts_routes(tenants, routes):
    return [(f"t{i}.bench.test", f"/r{j}/") for i in range(tenants) for j in range(routes)]


def bulkhead_conf(tenants=1, routes=1):
    http, https = PORTS["bulkhead"]
    lines = [f"""version: 1
workers: 1
log: {{ access: off }}
zones: {{ public: {{}} }}
flows: [{{ from: public, to: [public] }}]
listeners:
  web: {{ bind: "127.0.0.1:{http}", zone: public, protocol: http, limits: {{ max_connections: 50000, idle_timeout: 300s, header_timeout: 60s }} }}
  tls:
    bind: "127.0.0.1:{https}"
    zone: public
    protocol: https
    tls: {{ certificates: [{{ cert: cert.pem, key: key.pem }}] }}
    default_certificate: {{ cert: cert.pem, key: key.pem }}
    limits: {{ max_connections: 50000, idle_timeout: 300s, header_timeout: 60s }}
tenants:
  bench:
    hosts: [bench.test, "127.0.0.1"]
    target_groups: {{ app: {{ zone: public, targets: ["127.0.0.1:{BACKEND}"], timeouts: {{ idle: 300s }} }} }}
    routes: [{{ name: all, match: {{ path_prefix: / }}, forward: app }}]
"""]
    if tenants > 1 or routes > 1:
        for i in range(tenants):
            lines.append(f"  t{i}:\n    hosts: [t{i}.bench.test]\n    target_groups: {{ app: {{ zone: public, targets: [\"127.0.0.1:{BACKEND}\"] }} }}\n    routes:\n")
            for j in range(routes):
                lines.append(f"      - {{ name: r{j}, match: {{ path_prefix: /r{j}/ }}, forward: app }}\n")
    return write("bulkhead.yaml", "".join(lines))


def nginx_conf(tenants=1, routes=1):
    http, https = PORTS["nginx"]
    servers = ""
    if tenants > 1 or routes > 1:
        for i in range(tenants):
            locs = "".join(f"location /r{j}/ {{ proxy_pass http://app; }}\n" for j in range(routes))
            servers += f"server {{ listen 127.0.0.1:{http}; server_name t{i}.bench.test; {locs} }}\n"
    return write("nginx.conf", f"""
worker_processes 1; pid {WORK}/nginx.pid; error_log {WORK}/nginx-error.log; worker_rlimit_nofile 19000;
events {{ worker_connections 9000; }}
http {{
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  server_names_hash_bucket_size 128; server_names_hash_max_size 16384;
  upstream app {{ server 127.0.0.1:{BACKEND}; keepalive 256; keepalive_requests 10000000; keepalive_timeout 300s; }}
  proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host;
  server {{
    listen 127.0.0.1:{http} default_server backlog=4096;
    listen 127.0.0.1:{https} ssl http2 backlog=4096;
    ssl_certificate {WORK}/cert.pem; ssl_certificate_key {WORK}/key.pem;
    location / {{ proxy_pass http://app; }}
  }}
  {servers}
}}
""")


def haproxy_conf(tenants=1, routes=1):
    http, https = PORTS["haproxy"]
    routing = ""
    if tenants > 1 or routes > 1:
        write("routes.map", "".join(f"{h}{p} be\n" for h, p in hosts_routes(tenants, routes)))
        routing = f"  use_backend %[base,map_beg({WORK}/routes.map,be)]\n"
    return write("haproxy.cfg", f"""
global
  nbthread 1
  maxconn 9000
  pidfile {WORK}/haproxy.pid
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  http-reuse always
frontend fe
  bind 127.0.0.1:{http}
  bind 127.0.0.1:{https} ssl crt {WORK}/combined.pem alpn h2,http/1.1
{routing}  default_backend be
backend be
  server s1 127.0.0.1:{BACKEND} maxconn 10000
""")


def start_proxy(kind, tenants=1, routes=1):
    if kind == "bulkhead":
        conf = bulkhead_conf(tenants, routes)
        cmd = [BULKHEAD, "run", "-c", conf]
    elif kind == "nginx":
        cmd = ["nginx", "-c", nginx_conf(tenants, routes), "-g", "daemon off;"]
    else:
        cmd = ["haproxy", "-f", haproxy_conf(tenants, routes), "-db"]
    p = start(cmd, PROXY_CPU)
    wait_port(PORTS[kind][0])
    wait_port(PORTS[kind][1])
    time.sleep(0.3)
    return p


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    def ms(v):
        m = re.match(r"([\d.]+)(\w+)", v)
        return float(m.group(1)) * UNITS[m.group(2)]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return {"rps": rps, "p50": ms(lat["50"]), "p99": ms(lat["99"]), "errors": errors}


def parse_h2load(out):
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    m = re.search(r"time for request:\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)", out)
    mean = float(m.group(5)) * UNITS[m.group(6)]
    mx = float(m.group(3)) * UNITS[m.group(4)]
    failed = int(re.search(r"(\d+) failed", out).group(1))
    errored = int(re.search(r"(\d+) errored", out).group(1))
    return {"rps": rps, "p50": mean, "p99": mx, "errors": failed + errored}


LUA = write("hosts.lua", """
local n = 0
request = function()
  n = n + 1
  local i = (n * 7919) % TENANTS
  local j = n % ROUTES
  return wrk.format("GET", "/r" .. j .. "/x", { Host = "t" .. i .. ".bench.test" })
end
""")


def load(kind, scenario, port, https_port, duration=None):
    duration = duration or DURATION
    base = ["taskset", "-c", LOAD_CPU]
    wrk = base + ["wrk", "-t1", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if scenario == "h1_keepalive":
        cmd, parse = wrk + ["-c64", f"http://127.0.0.1:{port}/"], parse_wrk
    elif scenario == "h1_1000_conns":
        cmd, parse = wrk + ["-c1000", f"http://127.0.0.1:{port}/"], parse_wrk
    elif scenario == "tls_termination":
        cmd, parse = wrk + ["-c64", f"https://127.0.0.1:{https_port}/"], parse_wrk
    elif scenario == "h2_tls":
        cmd = base + ["h2load", "-c64", "-m10", f"-D{duration}", f"https://127.0.0.1:{https_port}/"]
        parse = parse_h2load
    elif scenario == "body_1mib":
        cmd, parse = wrk + ["-c16", f"http://127.0.0.1:{port}/1m"], parse_wrk
    elif scenario.startswith("routes_"):
        tenants, routes = (1000, 10) if scenario == "routes_10k" else (1, 10)
        script = write(f"hosts-{tenants}.lua", open(LUA).read().replace("TENANTS", str(tenants)).replace("ROUTES", str(routes)))
        cmd, parse = wrk + ["-c64", "-s", script, f"http://127.0.0.1:{port}/"], parse_wrk
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    try:
        return parse(out)
    except (AttributeError, KeyError, ValueError):
        raise SystemExit(f"could not parse the load generator's output for {kind}/{scenario}:\n{out}")


def idle_rss(kind, proc, port):
    """RSS with 1,000 idle keep-alive connections, each having made one request."""
    socks = []
    for _ in range(1000):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        socks.append(s)
    for s in socks:
        s.settimeout(5)
        s.recv(4096)
    time.sleep(1.0)
    rss = rss_kb(proc.pid)
    for s in socks:
        s.close()
    return rss


def route_rounds():
    """routes_10 and routes_10k in alternating rounds: each round runs every
    proxy on the 10-route config, then every proxy on the 10,000-route one,
    so the two figures a route cost is made of are taken a minute apart,
    not several (this VM's speed moves by ±10% over minutes). Returns the
    two scenarios' rows and each proxy's cost: the median over rounds of
    that round's 10k/10 throughput."""
    pair = ("routes_10", "routes_10k")
    runs = {s: {kind: [] for kind in KINDS} for s in pair}
    for _ in range(REPEAT):
        for scenario in pair:
            tenants = 1000 if scenario == "routes_10k" else 1
            procs = {kind: start_proxy(kind, tenants, 10) for kind in KINDS}
            for kind in KINDS:
                # Freshly started: one second of load first (connections
                # pooled, per-route state created), not counted.
                load(kind, scenario, *PORTS[kind], duration=1)
            for kind in KINDS:
                r = load(kind, scenario, *PORTS[kind])
                r["rss"] = rss_kb(procs[kind].pid)
                runs[scenario][kind].append(r)
            for proc in procs.values():
                stop(proc)
            time.sleep(0.5)
    rows = {s: {kind: {k: statistics.median(r[k] for r in runs[s][kind]) for k in runs[s][kind][0]} for kind in KINDS} for s in pair}
    cost = {kind: statistics.median(b["rps"] / a["rps"] - 1 for a, b in zip(runs["routes_10"][kind], runs["routes_10k"][kind]))
            for kind in KINDS}
    return rows, cost


def cost_table(rows, cost):
    lines = ["### routes_cost", "",
             "| proxy | 10 routes RPS | 10,000 routes RPS | cost (median of per-round ratios) |", "|---|---:|---:|---:|"]
    for kind in KINDS:
        lines.append(f"| {kind} | {rows['routes_10'][kind]['rps']:.0f} | {rows['routes_10k'][kind]['rps']:.0f} | {cost[kind] * 100:+.1f}% |")
    return "\n".join(lines) + "\n"


SCENARIOS = ["h1_keepalive", "h1_1000_conns", "tls_termination", "h2_tls", "body_1mib", "routes_10", "routes_10k", "idle_1000_rss"]
KINDS = ["bulkhead", "nginx", "haproxy"]


def main():
    os.makedirs(WORK, exist_ok=True)
    backend = start(["nginx", "-c", backend_conf, "-g", "daemon off;"], LOAD_CPU)
    wait_port(BACKEND)
    results = {}
    paired = not ONLY or {"routes_10", "routes_10k"} <= ONLY
    for scenario in SCENARIOS:
        if ONLY and scenario not in ONLY:
            continue
        if paired and scenario == "routes_10k":
            continue
        if paired and scenario == "routes_10":
            pair_rows, cost = route_rounds()
            for name, rows in pair_rows.items():
                results[name] = rows
                print(table(name, rows), flush=True)
            results["routes_cost"] = cost
            print(cost_table(pair_rows, cost), flush=True)
            continue
        rows = {}
        tenants, routes = {"routes_10k": (1000, 10), "routes_10": (1, 10)}.get(scenario, (1, 1))
        if scenario == "idle_1000_rss":
            for kind in KINDS:
                proc = start_proxy(kind, tenants, routes)
                rows[kind] = {"rss": statistics.median(idle_rss(kind, proc, PORTS[kind][0]) for _ in range(REPEAT))}
                stop(proc)
                time.sleep(0.5)
        else:
            # All proxies run side by side (idle ones cost nothing) and the
            # measurements are interleaved round by round, so a slow spell of
            # this shared VM falls on every proxy alike rather than on one.
            kinds = list(KINDS)
            if scenario not in ("tls_termination", "h2_tls") and not scenario.startswith("routes_"):
                kinds.insert(0, "direct")
            procs = {kind: start_proxy(kind, tenants, routes) for kind in KINDS}
            runs = {kind: [] for kind in kinds}
            for _ in range(REPEAT):
                for kind in kinds:
                    if kind == "direct":
                        r = load("direct", scenario, BACKEND, BACKEND)
                        r["rss"] = 0
                    else:
                        r = load(kind, scenario, *PORTS[kind])
                        r["rss"] = rss_kb(procs[kind].pid)
                    runs[kind].append(r)
            for kind, proc in procs.items():
                stop(proc)
            time.sleep(0.5)
            for kind in kinds:
                rows[kind] = {k: statistics.median(r[k] for r in runs[kind]) for k in runs[kind][0]}
        results[scenario] = rows
        print(table(scenario, rows), flush=True)
    out = os.environ.get("OUT", os.path.join(ROOT, "bench", "results.md"))
    with open(out, "w") as f:
        f.write(f"<!-- bench/compare.sh, {time.strftime('%Y-%m-%d %H:%M')} UTC, DURATION={DURATION}s REPEAT={REPEAT} -->\n\n")
        for scenario, rows in results.items():
            if scenario == "routes_cost":
                f.write(cost_table({s: results[s] for s in ("routes_10", "routes_10k")}, rows) + "\n")
            else:
                f.write(table(scenario, rows) + "\n")
    print(f"written to {out}")


def table(scenario, rows):
    lines = [f"### {scenario}", ""]
    if scenario == "idle_1000_rss":
        best = min(rows[k]["rss"] for k in ("nginx", "haproxy"))
        lines += ["| proxy | RSS with 1,000 idle keep-alive connections | vs best peer |", "|---|---:|---:|"]
        for k, r in rows.items():
            lines.append(f"| {k} | {r['rss'] / 1024:.1f} MiB | {r['rss'] / best:.2f}× |")
        return "\n".join(lines) + "\n"
    peers = [rows[k]["rps"] for k in ("nginx", "haproxy") if k in rows]
    best = max(peers) if peers else 0
    direct = rows.get("direct", {}).get("rps")
    lines += ["| proxy | RPS | p50 ms | p99 ms | errors | RSS MiB | vs best peer | vs direct |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, r in rows.items():
        vs_peer = f"{r['rps'] / best:.2f}×" if best and k != "direct" else "–"
        vs_direct = f"{r['rps'] / direct:.2f}×" if direct else "–"
        lines.append(f"| {k} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']:.0f} | {r['rss'] / 1024:.1f} | {vs_peer} | {vs_direct} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
