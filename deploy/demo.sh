#!/bin/sh
# `make demo`: start the daemon in the background on MODEL (default: the
# tiny random model from `make tiny-model`), wait until it is ready, ask it
# for one image, and leave it running for more requests.
set -eu
BIN=${BIN:-build/diffusiond}
MODEL=${MODEL:-build/tiny-model/tiny-sd15.safetensors}
PORT=${PORT:-7860}
OUT=${OUT:-demo.png}
SIZE=${SIZE:-64}
: "${XDG_RUNTIME_DIR:=/tmp}"
export XDG_RUNTIME_DIR

# The daemon refuses a port in use ("port 7860 is in use"): most often a
# daemon from an earlier `make demo`, still running.
if curl -s -o /dev/null "http://127.0.0.1:$PORT/health"; then
    echo "port $PORT is in use (a diffusiond from an earlier make demo? stop it: kill \$(cat diffusiond.pid));" \
         "or choose another: make demo PORT=7861" >&2
    exit 1
fi
"$BIN" serve --model "$MODEL" --port "$PORT" > diffusiond.log 2>&1 &
echo $! > diffusiond.pid
echo "diffusiond: pid $(cat diffusiond.pid), log in diffusiond.log; stop it with: kill \$(cat diffusiond.pid)"
# Ready, or dead: a start-up failure exits, so no time limit is needed (a
# big checkpoint on a CPU device loads for minutes).
until curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null; do
    if ! kill -0 "$(cat diffusiond.pid)" 2> /dev/null; then
        echo "diffusiond did not become ready:" >&2
        tail -5 diffusiond.log >&2
        exit 1
    fi
    sleep 0.2
done
curl -sf "http://127.0.0.1:$PORT/generate" -H 'Content-Type: application/json' \
    -d "{\"prompt\": \"a lighthouse on a cliff at sunset\", \"width\": $SIZE, \"height\": $SIZE, \"steps\": 8, \"seed\": 42}" \
    -o "$OUT"
echo "wrote $OUT; more: curl -H 'Content-Type: application/json' -d '{\"prompt\": \"...\"}' http://127.0.0.1:$PORT/generate -o image.png"
