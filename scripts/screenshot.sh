#!/usr/bin/env bash
# Rerunnable: trains the digits demo, serves its logs with a real TensorBoard
# on loopback, and saves what headless Chromium shows to docs/tensorboard.png.
#
#   scripts/screenshot.sh [DASHBOARD]    # DASHBOARD: histograms (default), images, scalars, neurons
#
# Needs Debian's chromium (installed with apt-get when missing and run as root).
# The Neurons tab is driven with playwright (the `dev` extra) on that same
# chromium: it sorts the neurons by dormancy, clicks the longest dormant one
# for its curves (sensitivity and activity) and hovers one of its cells.
# PYTHON=/path/to/python uses that interpreter (and its tensorboard) instead
# of the repository's .venv, which is then not made.
set -euo pipefail
cd "$(dirname "$0")/.."
dashboard="${1:-histograms}"
out="docs/tensorboard${1:+_$1}.png"

if ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
if [ -n "${PYTHON:-}" ]; then
  bin="$(dirname "$PYTHON")"
else
  make .venv/.installed >/dev/null
  bin=.venv/bin
fi

logs="$(mktemp -d)"
profile="$(mktemp -d)"
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$logs" "$profile"' EXIT
"$bin/python" demos/digits_mlp.py "$logs" >/dev/null 2>&1

port="$("$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$bin/tensorboard" --logdir "$logs" --host 127.0.0.1 --port "$port" >/dev/null 2>&1 &
server=$!
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$port/data/runs" | grep -q sensitivity && break
  sleep 1
done

mkdir -p docs
if [ "$dashboard" = neurons ]; then
  "$bin/python" - "http://127.0.0.1:$port" "$out" <<'EOF'
import sys

from playwright.sync_api import sync_playwright

base, out = sys.argv[1:]
with sync_playwright() as driver:
    browser = driver.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])
    page = browser.new_page(viewport={"width": 1600, "height": 1300})
    page.goto(f"{base}/#keras_neuron_sensitivity")
    frame = page.frame_locator("iframe")  # TensorBoard puts the tab in an iframe
    frame.locator("body[data-state=ready]").wait_for(timeout=60_000)
    # Dormant neurons first, longest dormant at the top (orange; dead ones
    # magenta); click the first for its curves, sensitivity and activity
    # together, and hover one of its cells for its values and status.
    frame.locator("#sort").select_option("dormancy")
    layer = frame.locator('section[data-layer="hidden_1"]')
    matrix = layer.locator("canvas.matrix")
    cell = matrix.evaluate("c => ({...c.dataset})")
    x0, top, width, height = (float(cell[k]) for k in ("x0", "top", "cellWidth", "cellHeight"))
    matrix.click(position={"x": x0 + width / 2, "y": top + 0.5 * height})
    frame.locator("#curve").wait_for()
    matrix.hover(position={"x": x0 + 9.5 * width, "y": top + 0.5 * height})
    frame.locator("#tooltip").wait_for()
    page.screenshot(path=out)
    browser.close()
EOF
else
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1600,1100 \
  --virtual-time-budget=20000 --screenshot="$out" \
  "http://127.0.0.1:$port/?runFilter=sensitivity#$dashboard&tagFilter=sensitivity_to_weights%7Cheatmap_to_weights" >/dev/null 2>&1
fi
echo "wrote $out"
