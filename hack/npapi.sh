#!/usr/bin/env bash
# npapi.sh: the conformance suite of sigs.k8s.io/network-policy-api (profile
# ClusterNetworkPolicy), built from its module (hack/npapi/go.mod, at the
# version tern's go.mod names; hack/npapi/conformance_test.go runs its tests
# with -skip-tests reported as skipped) into the cache.
#
#   hack/npapi.sh build     build the suite's test binary if it is missing
#   hack/npapi.sh bin       print the test binary's path
#   hack/npapi.sh version   print the module's version
# Environment: TERN_CACHE as for kube-env.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE=${TERN_CACHE:-$HOME/.cache/tern}
GO=${GO:-go}
MODULE=sigs.k8s.io/network-policy-api
NAME=npapi
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# version is the module's version in hack/npapi/go.mod, which must be
# tern's (the CRD in manifests/ comes from tern's).
version() {
  local mine theirs
  mine=$(awk -v m="$MODULE" '$1 == m { print $2 }' "$ROOT/hack/npapi/go.mod")
  theirs=$(awk -v m="$MODULE" '$1 == m { print $2 }' "$ROOT/go.mod")
  [[ -n $mine && $mine == "$theirs" ]] ||
    die "hack/npapi/go.mod names $MODULE ${mine:-nothing}, go.mod ${theirs:-nothing}: make them the same (cd hack/npapi && go get $MODULE@VERSION && go mod tidy)"
  echo "$mine"
}

# bin is the test binary's path in the cache, by the module's version and
# the harness's sources.
bin() {
  local sum v
  v=$(version) || exit 1
  sum=$(cat "$ROOT"/hack/npapi/go.mod "$ROOT"/hack/npapi/go.sum "$ROOT"/hack/npapi/*.go | sha256sum | cut -c1-12)
  echo "$CACHE/npapi/$v-$sum/npapi-conformance.test"
}

cmd_build() {
  local out dir
  out=$(bin) || exit 1
  [[ -x $out ]] && return
  mkdir -p "$(dirname "$out")"
  log "go test -c hack/npapi: the conformance tests of $MODULE $(version) (cold: ~3 min)"
  (cd "$ROOT/hack/npapi" && GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 "$GO" test -c -trimpath -o "$out.tmp" .) >&2 ||
    die "building the conformance suite failed"
  # The agnhost the suite's pods run must be the one node-env.sh builds.
  dir=$(cd "$ROOT/hack/npapi" && GOWORK=off "$GO" list -m -f '{{.Dir}}' "$MODULE")
  local tag
  tag=$(bash "$ROOT/hack/node-env.sh" versions | awk '$1 == "agnhost-npapi" { print $2 }')
  grep -q "image: $tag\$" "$dir/conformance/base/manifests.yaml" ||
    die "$MODULE's conformance/base/manifests.yaml does not name $tag: update NPAPI_AGNHOST_TAG in hack/node-env.sh"
  mv "$out.tmp" "$out"
}

case ${1:-} in
  build) cmd_build ;;
  bin) bin ;;
  version) version || exit 1 ;;
  *) usage ;;
esac
