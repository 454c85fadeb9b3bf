#!/usr/bin/env bash
# Build the upstream Kubernetes conformance binaries (e2e.test, agnhost) from the
# Go module proxy only (no git clone). See README.md.
#
# Usage: ./build.sh [K8S_VERSION]      e.g. ./build.sh v1.32.13
#        (default: newest v1.32.x that `go list -m -versions` shows)
# Env:   OUT (default: directory of this script), NICE (default: "nice -n 19")
set -euo pipefail

OUT="${OUT:-$(cd "$(dirname "$0")" && pwd)}"
NICE="${NICE:-nice -n 19}"
export GOFLAGS="${GOFLAGS:-} -mod=mod"
export GOWORK=off
export CGO_ENABLED=0

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
(cd "$scratch" && go mod init scratch >/dev/null 2>&1)

# 1. pick the version and fetch the k8s.io/kubernetes module source
K8S_VERSION="${1:-$(cd "$scratch" && go list -m -versions k8s.io/kubernetes | tr ' ' '\n' | grep '^v1\.32\.' | sort -V | tail -1)}"
MINOR="${K8S_VERSION#v1.}"; MINOR="${MINOR%%.*}"            # 32
STAGING_VERSION="v0.${K8S_VERSION#v1.}"                      # v0.32.13
echo "kubernetes ${K8S_VERSION}, staging modules ${STAGING_VERSION}"

dir="$(cd "$scratch" && $NICE go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
rm -rf "$OUT/kubernetes"
cp -r "$dir" "$OUT/kubernetes"
chmod -R u+w "$OUT/kubernetes"
cd "$OUT/kubernetes"

# vendor/ only holds modules.txt (staging symlinks are not in the zip) and
# go.work points at the missing staging dirs: both would break the build.
rm -rf vendor go.work go.work.sum

# 2. go.mod: drop `replace k8s.io/x => ./staging/...`, require the published
#    staging modules instead (same version, or newest v0.MINOR.x if missing).
staging_mods="$(sed -n 's#^\t\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' go.mod)"
python3 - go.mod <<'EOF'
import re, sys
p = sys.argv[1]; s = open(p).read()
s = re.sub(r'\nreplace \((?:\n\t[^\n]*=> \./staging[^\n]*)+\n\)\n', '\n', s)
open(p, 'w').write(s)
EOF
for m in $staging_mods; do
  grep -q "^	$m v0.0.0\$" go.mod || continue          # replaced but not required
  v="$STAGING_VERSION"
  if ! (cd "$scratch" && go list -m "$m@$v" >/dev/null 2>&1); then
    v="$(cd "$scratch" && go list -m -versions "$m" | tr ' ' '\n' | grep "^v0\.${MINOR}\." | sort -V | tail -1)"
    echo "NOTE: $m@$STAGING_VERSION not on the proxy, using $v"
  fi
  sed -i "s#^	$m v0.0.0\$#	$m $v#" go.mod
done

# 3. build (flags as in hack/lib/golang.sh for non-debug builds)
ldv=""
for key_val in "gitVersion=${K8S_VERSION}" "gitMajor=1" "gitMinor=${MINOR}" "gitTreeState=clean" \
               "buildDate=$(cd "$scratch" && go list -m -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/^\t"Time": "\(.*\)",$/\1/p')"; do
  ldv+=" -X 'k8s.io/component-base/version.${key_val%%=*}=${key_val#*=}'"
  ldv+=" -X 'k8s.io/client-go/pkg/version.${key_val%%=*}=${key_val#*=}'"
done

time $NICE go test -c -trimpath -tags=selinux,notest -ldflags="all=${ldv} -s -w" \
  -o "$OUT/e2e.test" ./test/e2e
time $NICE go build -trimpath -tags=selinux,notest \
  -ldflags="-X 'main.Version=$(cat test/images/agnhost/VERSION)' -s -w" \
  -o "$OUT/agnhost" ./test/images/agnhost

# 4. list conformance specs (dry run, needs no cluster) and all e2e images
"$OUT/e2e.test" --ginkgo.dry-run --ginkgo.focus='\[Conformance\]' --ginkgo.no-color \
  --provider=skeleton --kubeconfig=/dev/null --ginkgo.json-report="$scratch/dry.json" \
  >"$OUT/dry-run.log" 2>&1
python3 - "$scratch/dry.json" "$OUT/conformance-specs.txt" <<'EOF'
import json, sys
names = sorted(' '.join(s['ContainerHierarchyTexts'] + [s['LeafNodeText']])
               for suite in json.load(open(sys.argv[1])) for s in suite['SpecReports']
               if s['LeafNodeType'] == 'It' and s['State'] == 'passed')
open(sys.argv[2], 'w').write('\n'.join(names) + '\n')
print(len(names), 'conformance specs')
EOF
"$OUT/e2e.test" --list-images | sort >"$OUT/images-all.txt"
"$OUT/e2e.test" --version
ls -l "$OUT/e2e.test" "$OUT/agnhost"
