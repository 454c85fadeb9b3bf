#!/bin/sh
# Refreshes the OpenAPI documents krab serves from upstream Kubernetes' published spec
# (api/openapi-spec in k8s.io/kubernetes, Apache-2.0), fetched through the Go module proxy.
# Only the group versions krab serves are kept. Run from the repository root.
set -eu
VERSION=${1:-v1.32.0}
GROUP_VERSIONS="api__v1 apis__apps__v1 apis__authentication.k8s.io__v1
  apis__authorization.k8s.io__v1 apis__batch__v1 apis__autoscaling__v2
  apis__certificates.k8s.io__v1 apis__coordination.k8s.io__v1 apis__discovery.k8s.io__v1
  apis__networking.k8s.io__v1 apis__node.k8s.io__v1 apis__policy__v1
  apis__rbac.authorization.k8s.io__v1 apis__scheduling.k8s.io__v1 apis__storage.k8s.io__v1
  apis__admissionregistration.k8s.io__v1 apis__apiextensions.k8s.io__v1 apis__events.k8s.io__v1
  apis__flowcontrol.apiserver.k8s.io__v1 apis__apiregistration.k8s.io__v1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL -o "$tmp/k.zip" "https://proxy.golang.org/k8s.io/kubernetes/@v/$VERSION.zip"
(cd "$tmp" && unzip -q k.zip "k8s.io/kubernetes@$VERSION/api/openapi-spec/*")
spec="$tmp/k8s.io/kubernetes@$VERSION/api/openapi-spec"
gzip -9 -n -c "$spec/swagger.json" > embedded/openapi/swagger.json.gz
rm -f embedded/openapi/v3/*.json.gz
for gv in $GROUP_VERSIONS; do
  gzip -9 -n -c "$spec/v3/${gv}_openapi.json" > "embedded/openapi/v3/$gv.json.gz"
done
echo "$VERSION" > embedded/openapi/VERSION
