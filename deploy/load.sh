#!/bin/sh
# `make load`: the daemon on the tiny model on a spare port, then requests/s
# and latency for /health and for tiny-model generations.
set -eu
BIN=${BIN:-build/diffusiond}
LOAD=${LOAD:-build/load}
MODEL=${MODEL:-build/tiny-model/tiny-sd15.safetensors}
PORT=${PORT:-7871}
: "${XDG_RUNTIME_DIR:=/tmp}"
export XDG_RUNTIME_DIR
"$BIN" serve --model "$MODEL" --port "$PORT" --queue-max 64 > build/load-daemon.log 2>&1 &
pid=$!
trap 'kill $pid 2> /dev/null; wait $pid 2> /dev/null || true' EXIT
i=0
until curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null; do
    i=$((i + 1))
    [ $i -le 300 ] && kill -0 $pid 2> /dev/null || { tail -5 build/load-daemon.log >&2; exit 1; }
    sleep 1
done
"$LOAD" "$PORT" /health 10 8
"$LOAD" "$PORT" /generate 30 4 '{"prompt": "load", "width": 64, "height": 64, "steps": 4, "cfg_scale": 7.5, "seed": 1}'
