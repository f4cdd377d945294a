#!/usr/bin/env bash
# Rerunnable: trains the digits demo, serves its logs with a real TensorBoard
# on loopback, and saves what headless Chromium shows to docs/tensorboard.png.
#
#   scripts/screenshot.sh [DASHBOARD]    # DASHBOARD: histograms (default), images, scalars
#
# Needs Debian's chromium (installed with apt-get when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
dashboard="${1:-histograms}"
out="docs/tensorboard${1:+_$1}.png"

if ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
make .venv/.installed >/dev/null

logs="$(mktemp -d)"
profile="$(mktemp -d)"
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$logs" "$profile"' EXIT
.venv/bin/python demos/digits_mlp.py "$logs" >/dev/null 2>&1

port="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
.venv/bin/tensorboard --logdir "$logs" --host 127.0.0.1 --port "$port" >/dev/null 2>&1 &
server=$!
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$port/data/runs" | grep -q sensitivity && break
  sleep 1
done

mkdir -p docs
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1600,1100 \
  --virtual-time-budget=20000 --screenshot="$out" \
  "http://127.0.0.1:$port/?runFilter=sensitivity#$dashboard&tagFilter=sensitivity_to_weights%7Cheatmap_to_weights" >/dev/null 2>&1
echo "wrote $out"
