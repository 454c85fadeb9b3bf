#!/bin/sh
# Refreshes the Kubernetes protobuf definitions (Apache-2.0) krab decodes request bodies
# with, and gnostic's OpenAPI v2 messages (Apache-2.0), from the Go module proxy. Only the
# group versions krab serves (and what they import) are kept. Run from the repository root.
set -eu
API=${1:-v0.32.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dest=proto/k8s
for m in api apimachinery apiextensions-apiserver; do
  curl -fsSL -o "$tmp/$m.zip" "https://proxy.golang.org/k8s.io/$m/@v/$API.zip"
  (cd "$tmp" && unzip -q -o "$m.zip" '*.proto')
done
rm -rf "$dest/k8s.io"
copy() { mkdir -p "$dest/k8s.io/$2" && cp "$tmp/k8s.io/$1@$API/$3/generated.proto" "$dest/k8s.io/$2/generated.proto"; }
for gv in core/v1 apps/v1 batch/v1 autoscaling/v1 autoscaling/v2 certificates/v1 coordination/v1 \
  discovery/v1 events/v1 networking/v1 node/v1 policy/v1 rbac/v1 scheduling/v1 storage/v1 \
  admissionregistration/v1 authentication/v1 authorization/v1; do
  copy api "api/$gv" "$gv"
done
for p in pkg/api/resource pkg/apis/meta/v1 pkg/runtime pkg/runtime/schema pkg/util/intstr; do
  copy apimachinery "apimachinery/$p" "$p"
done
copy apiextensions-apiserver apiextensions-apiserver/pkg/apis/apiextensions/v1 pkg/apis/apiextensions/v1
# gnostic's OpenAPI v2 messages: the protobuf form of /openapi/v2 that kubectl asks for.
GNOSTIC=v0.6.9
curl -fsSL -o "$tmp/gnostic.zip" "https://proxy.golang.org/github.com/google/gnostic-models/@v/$GNOSTIC.zip"
(cd "$tmp" && unzip -q -o gnostic.zip '*/openapiv2/OpenAPIv2.proto')
mkdir -p "$dest/github.com/google/gnostic-models/openapiv2"
cp "$tmp/github.com/google/gnostic-models@$GNOSTIC/openapiv2/OpenAPIv2.proto" \
  "$dest/github.com/google/gnostic-models/openapiv2/OpenAPIv2.proto"
echo "$API" > "$dest/VERSION"
for m in api apimachinery apiextensions-apiserver; do
  (cd "$tmp" && unzip -q -o "$m.zip" '*.go')
done
python3 "$dest/json_fields.py" "$tmp" "$API" > "$dest/json_fields.txt"
