#!/bin/sh
# The README's first Quick start command: install greenockam into a fresh virtual environment,
# start scripts/echo_server.py, send one message with scripts/echo_client.py, stop the server.
set -eu
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check .

out=$(mktemp)
"$venv/bin/python" scripts/echo_server.py 127.0.0.1:0 >"$out" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$out"' EXIT
# The server prints "echo_service listening on HOST:PORT" once it accepts connections.
tries=0
until address=$(sed -n 's/^echo_service listening on //p' "$out") && [ -n "$address" ]; do
  tries=$((tries + 1))
  if [ "$tries" -gt 100 ] || ! kill -0 $server 2>/dev/null; then
    echo "demo: the echo server did not start" >&2
    exit 1
  fi
  sleep 0.1
done
"$venv/bin/python" scripts/echo_client.py "$address"
