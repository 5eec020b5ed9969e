#!/usr/bin/env bash
# The servers' graceful shutdown through add_signal_handler, on both
# backends: each example serves with a client connected, gets SIGTERM or
# SIGINT, and must stop accepting, close the client and exit 0 within a
# second. Usage: .ci/graceful-shutdown.sh [examples dir] (release by default).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/examples}"
port=18280
for ex in echo_server echo_server_streams http_hello echo_per_core hyper_hello; do
  for backend in proactor selector; do
    for sig in TERM INT; do
      port=$((port + 1))
      RINGLOOP_BACKEND=$backend "$bin/$ex" --serve "127.0.0.1:$port" &
      pid=$!
      up=no
      for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=yes; break; fi
        sleep 0.05
      done
      [ $up = yes ] || { echo "FAIL: $ex ($backend) never listened on $port"; kill -9 $pid; exit 1; }
      # A client that stays connected: the server must close it, not wait for it.
      exec 3<>"/dev/tcp/127.0.0.1/$port"
      # (A background job of a non-interactive shell starts with SIGINT
      # ignored; add_signal_handler installs its handler regardless.)
      ( sleep 5; kill -9 $pid 2>/dev/null ) &
      watchdog=$!
      t0=$(date +%s%N)
      kill -s "$sig" $pid
      rc=0
      wait $pid || rc=$?
      ms=$(( ($(date +%s%N) - t0) / 1000000 ))
      kill $watchdog 2>/dev/null || true
      wait $watchdog 2>/dev/null || true
      # The server closed the client: reading it gives EOF at once.
      eof=no
      if timeout 2 cat <&3 >/dev/null; then eof=yes; fi
      exec 3<&- 3>&-
      [ $rc -eq 0 ] || { echo "FAIL: $ex ($backend) exited $rc on SIG$sig"; exit 1; }
      [ $ms -lt 1000 ] || { echo "FAIL: $ex ($backend) took $ms ms to stop on SIG$sig"; exit 1; }
      [ $eof = yes ] || { echo "FAIL: $ex ($backend) left its client open on SIG$sig"; exit 1; }
      echo "$ex ($backend): SIG$sig -> client closed, exit 0 in $ms ms"
    done
  done
done
