# Set-up shared by the callgrind benchmarks (instructions.sh, cache-misses.sh);
# sourced, not run.
#
#   callgrind_setup BINARY TOOL:PACKAGE...
#
# Checks that each TOOL is installed (naming the Debian PACKAGE when not),
# builds BINARY if it is missing, makes $WORK (removed on exit, with every
# background job stopped) and starts the backend: nginx on 127.0.0.1:18000
# answering a small fixed 200.
#
# PROXY_HEAD: the start of the proxy's config (one worker, no access log,
# one listener on 127.0.0.1:18100), to be followed by its tenants.
PROXY_HEAD='version: 1
workers: 1
log: { access: off }
zones: { public: {} }
flows: [{ from: public, to: [public] }]
listeners:
  web: { bind: "127.0.0.1:18100", zone: public, protocol: http }
tenants:
'
callgrind_setup() {
  local bin="$1" tool
  shift
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || { echo "needs ${tool##*:} (apt-get install ${tool##*:})"; exit 1; }
  done
  [ -x "$bin" ] || cargo build --quiet --release -p bulkhead
  WORK=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
  cat > "$WORK/backend.conf" <<CONF
worker_processes 1; pid $WORK/backend.pid; error_log $WORK/backend-error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:18000; location / { return 200 "hello from the backend\n"; } } }
CONF
  nginx -c "$WORK/backend.conf" -g 'daemon off;' &
}
