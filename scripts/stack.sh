#!/usr/bin/env bash
# The docker-compose stack without containers, on loopback: `dhrd serve`, Debian's `prometheus`
# scraping it, and Locust headless against it. Stops everything it started, then checks that
# Prometheus really scraped the service. Prints where its files are.
#
#   scripts/stack.sh EXPORT_DIR [SECONDS] [USERS]      (model name and task: DHRD_LOAD_MODEL, default cb)
set -euo pipefail
cd "$(dirname "$0")/.."
EXPORT=${1:?usage: scripts/stack.sh EXPORT_DIR [SECONDS] [USERS]}
SECONDS_RUN=${2:-20}
USERS=${3:-4}
MODEL=${DHRD_LOAD_MODEL:-cb}
PORT=${DHRD_STACK_PORT:-18000}
PROM_PORT=${DHRD_STACK_PROM_PORT:-19090}
OUT=${DHRD_STACK_OUT:-$(mktemp -d /tmp/dhrd-stack.XXXXXX)}
mkdir -p "$OUT"
command -v prometheus >/dev/null || { echo "stack.sh: Debian's prometheus is not installed (apt-get install prometheus)" >&2; exit 2; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

.venv/bin/dhrd serve --model "$MODEL=$EXPORT" --host 127.0.0.1 --port "$PORT" > "$OUT/service.log" 2>&1 &
pids+=($!)

sed "s/dhrd:8000/127.0.0.1:$PORT/; s/scrape_interval: 5s/scrape_interval: 1s/" docker/prometheus.yml > "$OUT/prometheus.yml"
prometheus --config.file="$OUT/prometheus.yml" --storage.tsdb.path="$OUT/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" > "$OUT/prometheus.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 240); do
  curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null || { echo "stack.sh: service never became ready" >&2; tail -20 "$OUT/service.log" >&2; exit 1; }

DHRD_LOAD_MODEL=$MODEL .venv/bin/locust -f loadtest/bench/locustfile.py --headless --host "http://127.0.0.1:$PORT" \
  --users "$USERS" --spawn-rate "$USERS" --run-time "${SECONDS_RUN}s" --csv "$OUT/locust" --only-summary \
  ClassifyUser > "$OUT/locust.log" 2>&1 || true

sleep 2  # one more scrape after the load
query=$(curl -fs "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=sum(dhrd_requests_total{endpoint=\"/classify\",status=\"200\"})")
echo "$query" > "$OUT/prometheus_query.json"
scraped=$(python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)' <<< "$query")
served=$(python3 -c 'import csv,sys; rows=[r for r in csv.DictReader(open(sys.argv[1])) if r["Name"]=="/classify"]; print(rows[0]["Request Count"], rows[0]["Failure Count"], rows[0]["Requests/s"])' "$OUT/locust_stats.csv")
echo "stack: locust /classify requests, failures, req/s: $served; prometheus scraped dhrd_requests_total(200) = $scraped; files in $OUT"
[ "$scraped" -gt 0 ] || { echo "stack.sh: prometheus saw no requests" >&2; exit 1; }
