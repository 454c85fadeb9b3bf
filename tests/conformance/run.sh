#!/bin/bash
# Reruns the conformance harness against the krab binary in /work/conformance.
# Usage: ./run.sh [suite...]     suites: smoke api-machinery apps   (default: smoke api-machinery apps)
# Needs: root, /bin/busybox (busybox-static), python3, nft, kubectl. Nothing is pulled from a registry.
set -u
cd "${CONFORMANCE_DIR:-/work/conformance}"
SUITES=${*:-smoke api-machinery apps}

# 0. only one krab agent per machine (shared cni0 bridge / pod CIDR): wait up to 10 min
for i in $(seq 60); do
  pgrep -af 'krab server' | grep -v -- '--disable-agent' | grep -q . || break
  [ "$i" = 60 ] && { echo "another krab server with an agent is still running:"; pgrep -af 'krab server'; exit 1; }
  sleep 10
done

# 1. fresh data dir + image archives (OCI layouts imported by the agent at start)
./stop-krab.sh >/dev/null 2>&1
rm -rf run/data && mkdir -p run results
python3 build-images.py run/data/agent/images

# 2. guard: pod/service traffic must never leave through the uplink
DEV=$(ip route show default | awk '{for(i=1;i<=NF;i++) if($i=="dev") print $(i+1)}' | head -1)
sed "s/\"eth0\"/\"$DEV\"/" guard.nft > run/guard.nft
nft list table inet conformance_guard >/dev/null 2>&1 || nft -f run/guard.nft

# 3. krab server (background), wait for the node to be Ready
./start-krab.sh
for i in $(seq 90); do
  kubectl --kubeconfig run/kubeconfig get nodes 2>/dev/null | grep -q ' Ready ' && break
  sleep 2
done
kubectl --kubeconfig run/kubeconfig get nodes -o wide
kubectl --kubeconfig run/kubeconfig get node -o jsonpath='{range .items[0].status.images[*]}{.names}{"\n"}{end}'

# 4. the suites. run-suite.py runs e2e.test in parts: a watchdog interrupts a spec that runs
#    longer than the limit (e2e.test has no per-spec timeout and some specs poll forever when
#    a feature is missing), and the next part skips every spec already reported.
for s in $SUITES; do
  case $s in
    smoke)
      mkdir -p results/smoke
      timeout 600 ./e2e.test --kubeconfig run/kubeconfig --provider skeleton \
        --ginkgo.focus 'should provide secure master service|Pods should get a host IP|\[sig-storage\] ConfigMap should be consumable from pods in volume \[NodeConformance\]|Secrets should be consumable from pods in env vars' \
        --ginkgo.v --ginkgo.no-color --ginkgo.timeout=9m --report-dir results/smoke \
        --ginkgo.json-report=results/smoke/report.json --allowed-not-ready-nodes=0 --disable-log-dump \
        > results/smoke/output.log 2>&1
      tail -3 results/smoke/output.log ;;
    api-machinery)
      # ValidatingAdmissionPolicy "refer variables" polls forever while VAPs are not enforced
      EXTRA_SKIP='ValidatingAdmissionPolicy .*should allow expressions to refer variables' \
        python3 run-suite.py api-machinery '\[sig-api-machinery\].*\[Conformance\]' 55 6 ;;
    apps)
      python3 run-suite.py apps '\[sig-apps\].*\[Conformance\]' 40 8 ;;
  esac
done
for s in $SUITES; do
  for r in results/$s/part*/report.json; do [ -f "$r" ] && { echo "== $r"; python3 summarize.py "$r" | head -1; }; done
done

# 5. stop krab + containerd + leftover shims/containers, unmount, drop the guard
./stop-krab.sh
nft delete table inet conformance_guard 2>/dev/null
