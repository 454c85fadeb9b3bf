#!/usr/bin/env bash
# Installs a built krab binary and its systemd unit on this machine.
# Usage: packaging/install.sh [path/to/krab]   (default: target/release/krab)
set -euo pipefail
bin="${1:-target/release/krab}"
[ -x "$bin" ] || { echo "install.sh: $bin not found; run 'make release' first" >&2; exit 1; }
install -m 0755 "$bin" /usr/local/bin/krab
install -d -m 0755 /etc/krab
if [ -d /run/systemd/system ]; then
  install -m 0644 "$(dirname "$0")/systemd/krab.service" /etc/systemd/system/krab.service
  systemctl daemon-reload
  systemctl enable --now krab.service
  echo "krab installed and started (journalctl -u krab -f)"
else
  echo "krab installed to /usr/local/bin/krab (no systemd here: run 'krab server' yourself)"
fi
