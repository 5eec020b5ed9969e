#!/usr/bin/env bash
# Proves which kernel interface each backend uses: under the proactor an
# example's socket I/O goes through io_uring_enter (no epoll_wait, no
# recvfrom/sendto/recvmsg/sendmsg); under the selector it uses epoll_wait.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace >/dev/null; }
out=$(mktemp -d)
fail=0
has() { grep -qE "[[:space:]]$2\$" "$out/$1.txt"; }
for example in sock_echo echo_server; do
  cargo build -q --release --example "$example"
  bin="${CARGO_TARGET_DIR:-target}/release/examples/$example"
  for backend in proactor selector; do
    RINGLOOP_BACKEND=$backend strace -f -c -o "$out/$backend.txt" "$bin" >/dev/null
    echo "--- $example: strace -f -c, RINGLOOP_BACKEND=$backend (selected lines)"
    grep -E "io_uring_enter|epoll_wait|recvfrom|sendto|recvmsg|sendmsg|total" "$out/$backend.txt" || true
  done
  has proactor io_uring_enter || { echo "FAIL: $example on the proactor made no io_uring_enter"; fail=1; }
  for sc in epoll_wait recvfrom sendto recvmsg sendmsg; do
    if has proactor "$sc"; then echo "FAIL: $example on the proactor called $sc"; fail=1; fi
  done
  has selector epoll_wait || { echo "FAIL: $example on the selector made no epoll_wait"; fail=1; }
  if has selector io_uring_enter; then echo "FAIL: $example on the selector called io_uring_enter"; fail=1; fi
done
rm -rf "$out"
[ "$fail" = 0 ] && echo "strace check: OK"
exit "$fail"
