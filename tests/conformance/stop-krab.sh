#!/bin/sh
# Stop krab and everything it started: krab (TERM, KILL after 30 s) first so its kubelet stops
# creating sandboxes, then every container (SIGKILL through containerd), containerd, leftover
# shims, the sandboxes' network namespaces, and the mounts under run/data.
cd "${CONFORMANCE_DIR:-/work/conformance}"
D=${CONFORMANCE_DIR:-/work/conformance}/run/data
S=$D/agent/run/containerd/containerd.sock
KP=$(cat run/krab.pid 2>/dev/null)
CP=$(pgrep -f "containerd --config $D/agent/etc/containerd/config.toml" | head -1)
if [ -n "$KP" ]; then
  kill -TERM "$KP" 2>/dev/null
  for i in $(seq 30); do kill -0 "$KP" 2>/dev/null || break; sleep 1; done
  kill -0 "$KP" 2>/dev/null && kill -KILL "$KP"
fi
: > run/netns-of-run.txt
if [ -S "$S" ] && [ -n "$CP" ] && kill -0 "$CP" 2>/dev/null; then
  for c in $(timeout 20 ctr -a "$S" -n k8s.io containers ls -q 2>/dev/null); do
    timeout 10 ctr -a "$S" -n k8s.io containers info "$c" 2>/dev/null | grep -o 'netns/cni-[0-9a-f-]*' >> run/netns-of-run.txt
  done
  for t in $(timeout 10 ctr -a "$S" -n k8s.io task ls -q 2>/dev/null); do
    timeout 10 ctr -a "$S" -n k8s.io task kill -s SIGKILL "$t" 2>/dev/null
  done
  sleep 2
fi
if [ -n "$CP" ]; then
  kill -TERM "$CP" 2>/dev/null
  for i in $(seq 15); do kill -0 "$CP" 2>/dev/null || break; sleep 1; done
  kill -KILL "$CP" 2>/dev/null
fi
# shims of this containerd (and their children, if any survived the task kill)
for p in $(pgrep -f "containerd-shim.*-address $S"); do
  for c in $(pgrep -P "$p"); do kill -KILL "$c" 2>/dev/null; done
  kill -KILL "$p" 2>/dev/null
done
# the sandboxes' network namespaces
for n in $(sort -u run/netns-of-run.txt); do
  b=$(basename "$n"); [ -e "/run/netns/$b" ] && { umount "/run/netns/$b" 2>/dev/null; rm -f "/run/netns/$b"; }
done
# everything mounted below the data dir, deepest first
for m in $(awk '{print $2}' /proc/self/mounts | grep "^$D" | sort -r); do umount "$m" 2>/dev/null || umount -l "$m"; done
echo "remaining:"; pgrep -af "krab server --config /dev/null --data-dir $D|$D" || true
