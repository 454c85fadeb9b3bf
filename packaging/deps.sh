#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages krab's build, tests and runtime need, when missing.
# Usage: packaging/deps.sh [build|test|run]...
set -euo pipefail
want=()
for what in "${@:-run}"; do
  case "$what" in
    build) want+=(protobuf-compiler libprotobuf-dev pkg-config libnftnl-dev libmnl-dev) ;;
    test) want+=(etcd-server etcd-client curl containerd runc containernetworking-plugins iptables nftables busybox-static iproute2 dbus-daemon) ;;
    run) want+=(containerd runc containernetworking-plugins iptables nftables libnftnl11 libmnl0) ;;
    *) echo "deps.sh: unknown set '$what' (build, test, run)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
