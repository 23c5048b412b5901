#!/bin/bash
# /agnhost in the lab's registry.k8s.io/e2e-test-images/agnhost:2.45, the
# image network-policy-api's conformance suite names: agnhost at the lab's
# Kubernetes version (/agnhost-bin), but for one thing. Each of the suite's
# pods runs `agnhost porter` with SERVE_SCTP_PORT_9003 (or 9005) and nothing
# else; porter exits when it cannot listen on SCTP, so on a kernel without
# SCTP the pods never get Ready and the suite never starts. There, porter
# serves what else it was asked to and waits; the suite's tests that need
# SCTP sockets are skipped (CONFORMANCE.md names them).
if [[ ${1:-} == porter && ! -e /proc/net/sctp ]] && env | grep -q '^SERVE_SCTP_PORT_'; then
  echo "agnhost porter: this kernel has no SCTP: not serving $(env | grep -o '^SERVE_SCTP_PORT_[0-9]*' | tr '\n' ' ')" >&2
  for v in $(env | grep -o '^SERVE_SCTP_PORT_[0-9]*'); do unset "$v"; done
  if ! env | grep -q '^SERVE_'; then
    # Not PID 1's default: a TERM ends the wait at once.
    trap 'exit 0' TERM
    sleep infinity &
    wait
    exit 0
  fi
fi
exec /agnhost-bin "$@"
