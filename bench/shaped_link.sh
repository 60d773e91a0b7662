#!/usr/bin/env bash
# Frames/s of a learner and 2 actors joined by a real, rate-limited link instead of loopback: the actors run
# in their own network namespace, behind a veth pair shaped with tc to RATE each way (needs root, iproute2).
#   sudo bench/shaped_link.sh 200mbit float16 100
# prints the learner's frames/s after a 30 s warm-up of SECONDS.
set -euo pipefail
RATE=${1:?rate, such as 200mbit}; WIRE=${2:-float16}; SECONDS_RUN=${3:-100}
cd "$(dirname "$0")/.."
A3C=(.venv/bin/python -m apps)
NS=a3c-bench-actors
WORK=$(mktemp -d)
cleanup() {
  pkill -f -- "--learner 10.77.0.1:" 2>/dev/null || true
  [ -n "${LEARNER:-}" ] && kill "$LEARNER" 2>/dev/null && wait "$LEARNER" 2>/dev/null || true
  ip link del veth-a3c-l 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip link add veth-a3c-l type veth peer name veth-a3c-a
ip link set veth-a3c-a netns "$NS"
ip addr add 10.77.0.1/24 dev veth-a3c-l && ip link set veth-a3c-l up
ip netns exec "$NS" ip addr add 10.77.0.2/24 dev veth-a3c-a
ip netns exec "$NS" ip link set veth-a3c-a up
tc qdisc add dev veth-a3c-l root tbf rate "$RATE" burst 256kb latency 50ms
ip netns exec "$NS" tc qdisc add dev veth-a3c-a root tbf rate "$RATE" burst 256kb latency 50ms
"${A3C[@]}" learner --listen 10.77.0.1:0 --port-file "$WORK/port" --progress-file "$WORK/progress.jsonl" \
  --log-interval 5 --checkpoint-dir "$WORK/checkpoints" --wire-dtype "$WIRE" --metrics-port 0 2>"$WORK/learner.log" &
LEARNER=$!
for _ in $(seq 120); do [ -s "$WORK/port" ] && break; sleep 0.5; done
for i in 0 1; do
  ip netns exec "$NS" "${A3C[@]}" actor --learner "10.77.0.1:$(cat "$WORK/port")" --seed $((1000 * (i + 1))) \
    --actor-id "actor-$i" --metrics-port 0 2>"$WORK/actor-$i.log" &
done
sleep "$SECONDS_RUN"
.venv/bin/python - "$WORK/progress.jsonl" "$RATE" "$WIRE" <<'PY'
import json, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if r["seconds"] >= 30]
first, last = rows[0], rows[-1]
rate = (last["frames"] - first["frames"]) / (last["seconds"] - first["seconds"])
print(f"{sys.argv[2]} link, {sys.argv[3]} wire: {rate:,.0f} frames/s over {last['seconds'] - first['seconds']:.0f} s")
PY
