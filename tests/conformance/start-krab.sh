#!/bin/sh
# start krab server (background); log to run/krab.log, pid in run/krab.pid
cd "${CONFORMANCE_DIR:-/work/conformance}"
NO_COLOR=1 RUST_LOG=info setsid ./krab server \
  --config /dev/null \
  --data-dir ${CONFORMANCE_DIR:-/work/conformance}/run/data \
  --bind-address 192.0.2.2 \
  --https-listen-port 16443 \
  --write-kubeconfig ${CONFORMANCE_DIR:-/work/conformance}/run/kubeconfig \
  --kubelet-port 20250 \
  --etcd-listen 127.0.0.1:22379 \
  --etcd-peer-listen 127.0.0.1:22380 \
  --dns-port 15353 \
  --kubelet-arg "eviction-hard=memory.available<100Mi,nodefs.available<2%" \
  --kubelet-arg image-gc-high-threshold=99 \
  --kubelet-arg image-gc-low-threshold=98 \
  > run/krab.log 2>&1 < /dev/null &
echo $! > run/krab.pid
