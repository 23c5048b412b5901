#!/usr/bin/env bash
# node-env.sh: what a real Kubernetes node of tern's lab runs, built here from
# source and cached beside the control plane (hack/kube-env.sh): kubelet,
# kube-proxy and kube-scheduler (kube-env.sh build node), containerd, runc and
# crictl, and the images a node needs with no registry to pull from.
#
#   hack/node-env.sh build      build everything missing from the cache
#   hack/node-env.sh bindir     print the directory of containerd, runc, crictl
#                               (kube-env.sh bindir has kubelet and the rest)
#   hack/node-env.sh imagedir   print the directory of the image archives
#                               (docker-save format, for `ctr images import`)
#   hack/node-env.sh versions   print the versions, one `name version` a line
#
# Images, under the names kubelet, containerd and Kubernetes' e2e suite use:
#   registry.k8s.io/pause:3.10.2   Kubernetes' own build/pause/linux/pause.c at
#                                  K8S_VERSION, linked statically
#   registry.k8s.io/e2e-test-images/agnhost:2.66.1
#                                  test/images/agnhost at K8S_VERSION on a
#                                  Debian root file system with the tools its
#                                  Dockerfile installs
#   registry.k8s.io/coredns/coredns:v1.14.6
#                                  CoreDNS from its Go module at the version
#                                  kubeadm of K8S_VERSION installs (the lab's
#                                  cluster DNS)
#   registry.k8s.io/e2e-test-images/nginx:1.27.0-2
#                                  Debian's nginx, serving on port 80 in the
#                                  foreground (the e2e suite's endpoint pods)
#   registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1
#                                  Debian with dnsutils and CoreDNS at /coredns,
#                                  as test/images/glibc-dns-testing (the DNS
#                                  specs' glibc querier)
#   registry.k8s.io/e2e-test-images/agnhost:2.45
#                                  the agnhost image above under the tag
#                                  network-policy-api's conformance suite
#                                  names, with hack/images/agnhost-npapi.sh
#                                  as /agnhost (its porter waits instead of
#                                  exiting where the kernel has no SCTP)
# Environment: TERN_CACHE, K8S_VERSION as for kube-env.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
K8S_VERSION=${K8S_VERSION:-v1.37.2}
CONTAINERD_VERSION=v2.3.7
RUNC_VERSION=v1.4.3
CRICTL_VERSION=v1.37.0
# The tags of Kubernetes' test/utils/image/manifest.go at K8S_VERSION (checked
# by `build`): kubelet's default sandbox image and the e2e suite's agnhost.
PAUSE_TAG=3.10.2
AGNHOST_TAG=2.66.1
NGINX_TAG=1.27.0-2
GLIBC_DNS_TAG=2.1.1
# The agnhost of sigs.k8s.io/network-policy-api's conformance suite
# (conformance/base/manifests.yaml at the version go.mod pins).
NPAPI_AGNHOST_TAG=2.45
# kubeadm's CoreDNSVersion at K8S_VERSION (checked by `build` too).
COREDNS_VERSION=v1.14.6
PAUSE_IMAGE=registry.k8s.io/pause:$PAUSE_TAG
AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:$AGNHOST_TAG
NGINX_IMAGE=registry.k8s.io/e2e-test-images/nginx:$NGINX_TAG
GLIBC_DNS_IMAGE=registry.k8s.io/e2e-test-images/glibc-dns-testing:$GLIBC_DNS_TAG
NPAPI_AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:$NPAPI_AGNHOST_TAG
COREDNS_IMAGE=registry.k8s.io/coredns/coredns:$COREDNS_VERSION

CACHE=${TERN_CACHE:-$HOME/.cache/tern}
NODE_CACHE=$CACHE/node/containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-crictl-$CRICTL_VERSION
BIN=$NODE_CACHE/bin
IMAGES=$CACHE/node/images-$K8S_VERSION
GO=${GO:-go}

NAME=node-env
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# go_install BIN PKG@VERSION LDFLAGS [go flags...]: one binary from the
# module proxy into the cache's temporary bin.
go_install() {
  local name=$1 pkg=$2 ldflags=$3
  shift 3
  [[ -x $BIN/$name ]] && return
  log "go install $pkg"
  GOBIN=$BIN.tmp "$GO" install -trimpath -ldflags "-s -w $ldflags" "$@" "$pkg" >&2 ||
    die "building $pkg failed"
}

build_binaries() {
  local want=(containerd containerd-shim-runc-v2 ctr runc crictl) b missing=0
  for b in "${want[@]}"; do [[ -x $BIN/$b ]] || missing=1; done
  ((missing)) || return 0
  # runc needs cgo for seccomp: gcc and libseccomp's headers (make deps).
  command -v gcc >/dev/null 2>&1 || die "gcc not found (apt-get install gcc; make deps installs it)"
  pkg-config --exists libseccomp 2>/dev/null || die "libseccomp's headers not found (apt-get install libseccomp-dev pkg-config; make deps installs them)"
  rm -rf "$BIN.tmp"
  mkdir -p "$BIN.tmp" "$BIN"
  export GOWORK=off GOTOOLCHAIN=local GOFLAGS=
  local cv=${CONTAINERD_VERSION#v} rv=${RUNC_VERSION#v}
  local cx="-X github.com/containerd/containerd/v2/version.Version=$cv -X github.com/containerd/containerd/v2/version.Revision=$CONTAINERD_VERSION"
  for b in containerd containerd-shim-runc-v2 ctr; do
    CGO_ENABLED=0 go_install "$b" "github.com/containerd/containerd/v2/cmd/$b@$CONTAINERD_VERSION" "$cx"
  done
  CGO_ENABLED=1 go_install runc "github.com/opencontainers/runc@$RUNC_VERSION" "-X main.version=$rv" -tags seccomp
  CGO_ENABLED=0 go_install crictl "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
  for b in "$BIN".tmp/*; do [[ -e $b ]] && mv "$b" "$BIN/"; done
  rmdir "$BIN.tmp"
  "$BIN/containerd" --version >&2
  "$BIN/runc" --version | head -1 >&2
}

# k8s_src: Kubernetes' source tree at K8S_VERSION in the module cache.
k8s_src() {
  local dir
  dir=$(cd "$CACHE/kube/$K8S_VERSION/src" && GOWORK=off GOFLAGS=-mod=mod "$GO" list -m -f '{{.Dir}}' k8s.io/kubernetes) ||
    die "k8s.io/kubernetes $K8S_VERSION not in the module cache (hack/kube-env.sh build node)"
  echo "$dir"
}

# check_tags: the tags above are the ones Kubernetes' e2e suite names.
check_tags() {
  local manifest
  manifest=$(k8s_src)/test/utils/image/manifest.go
  grep -q "configs\[Pause\] = Config{list.GcRegistry, \"pause\", \"$PAUSE_TAG\"}" "$manifest" ||
    die "$manifest does not name pause:$PAUSE_TAG: update PAUSE_TAG"
  grep -q "configs\[Agnhost\] = Config{list.PromoterE2eRegistry, \"agnhost\", \"$AGNHOST_TAG\"}" "$manifest" ||
    die "$manifest does not name agnhost:$AGNHOST_TAG: update AGNHOST_TAG"
  grep -q "configs\[Nginx\] = Config{list.PromoterE2eRegistry, \"nginx\", \"$NGINX_TAG\"}" "$manifest" ||
    die "$manifest does not name nginx:$NGINX_TAG: update NGINX_TAG"
  grep -q "configs\[GlibcDnsTesting\] = Config{list.PromoterE2eRegistry, \"glibc-dns-testing\", \"$GLIBC_DNS_TAG\"}" "$manifest" ||
    die "$manifest does not name glibc-dns-testing:$GLIBC_DNS_TAG: update GLIBC_DNS_TAG"
  local kubeadm
  kubeadm=$(k8s_src)/cmd/kubeadm/app/constants/constants.go
  grep -q "CoreDNSVersion = \"$COREDNS_VERSION\"" "$kubeadm" ||
    die "$kubeadm does not name CoreDNS $COREDNS_VERSION: update COREDNS_VERSION"
}

image_pause() {
  local out=$IMAGES/pause.tar
  [[ -s $out ]] && return
  local src tmp
  src=$(k8s_src)/build/pause/linux/pause.c
  [[ -f $src ]] || die "no $src"
  tmp=$(mktemp -d)
  # As Kubernetes' own build does: static, stripped, the version compiled in.
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-tern" -o "$tmp/pause" "$src" || die "compiling $src failed"
  strip "$tmp/pause"
  "$(ocibuild)" -tag "$PAUSE_IMAGE" -file "$tmp/pause=/pause:0755" -entrypoint '["/pause"]' \
    -user 65535:65535 -o "$out.tmp" >&2
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

image_agnhost() {
  local out=$IMAGES/agnhost.tar
  [[ -s $out ]] && return
  local kbin rootfs tmp
  kbin=$(bash "$ROOT/hack/kube-env.sh" bindir)
  [[ -x $kbin/agnhost ]] || die "no $kbin/agnhost (hack/kube-env.sh build node)"
  rootfs=$(bash "$ROOT/hack/image.sh" rootfs "$ROOT/hack/images/agnhost.packages" "$ROOT/hack/images/agnhost.setup")
  tmp=$(mktemp -d)
  local src
  src=$(k8s_src)/test/images/agnhost
  # What agnhost's Dockerfile adds on top of its base: the porter's test
  # certificate, the uploads directory, agnhost-2 for the guestbook's tests,
  # and a user and group the security-context tests look for.
  "$(ocibuild)" -tag "$AGNHOST_IMAGE" -layer "$rootfs" \
    -file "$kbin/agnhost=/agnhost:0755" -symlink /agnhost-2=/agnhost \
    -file "$src/porter/localhost.crt=/localhost.crt:0644" \
    -file "$src/porter/localhost.key=/localhost.key:0644" \
    -dir /uploads -entrypoint '["/agnhost"]' -cmd '["pause"]' -o "$out.tmp" >&2
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

image_agnhost_npapi() {
  local out=$IMAGES/agnhost-npapi.tar
  [[ -s $out ]] && return
  local kbin rootfs src
  kbin=$(bash "$ROOT/hack/kube-env.sh" bindir)
  rootfs=$(bash "$ROOT/hack/image.sh" rootfs "$ROOT/hack/images/agnhost.packages" "$ROOT/hack/images/agnhost.setup")
  src=$(k8s_src)/test/images/agnhost
  "$(ocibuild)" -tag "$NPAPI_AGNHOST_IMAGE" -layer "$rootfs" \
    -file "$kbin/agnhost=/agnhost-bin:0755" -file "$ROOT/hack/images/agnhost-npapi.sh=/agnhost:0755" \
    -file "$src/porter/localhost.crt=/localhost.crt:0644" \
    -file "$src/porter/localhost.key=/localhost.key:0644" \
    -dir /uploads -entrypoint '["/agnhost"]' -cmd '["pause"]' -o "$out.tmp" >&2
  mv "$out.tmp" "$out"
}

# coredns: the CoreDNS binary, built once from its module into the cache.
coredns() {
  local bin=$CACHE/node/coredns-$COREDNS_VERSION
  if [[ ! -x $bin/coredns ]]; then
    log "go install github.com/coredns/coredns@$COREDNS_VERSION (cold: ~4 min)"
    rm -rf "$bin.tmp"
    GOWORK=off GOTOOLCHAIN=local GOFLAGS= CGO_ENABLED=0 GOBIN=$bin.tmp "$GO" install -trimpath \
      -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
      "github.com/coredns/coredns@$COREDNS_VERSION" >&2 || die "building CoreDNS $COREDNS_VERSION failed"
    rm -rf "$bin"
    mv "$bin.tmp" "$bin"
  fi
  echo "$bin/coredns"
}

image_coredns() {
  local out=$IMAGES/coredns.tar
  [[ -s $out ]] && return
  # As the upstream image: the binary alone, its entrypoint. Root, where
  # upstream is nonroot with a file capability to bind port 53 (an image
  # built without an engine carries no extended attributes).
  "$(ocibuild)" -tag "$COREDNS_IMAGE" -file "$(coredns)=/coredns:0755" -entrypoint '["/coredns"]' -o "$out.tmp" >&2
  mv "$out.tmp" "$out"
}

image_nginx() {
  local out=$IMAGES/nginx.tar
  [[ -s $out ]] && return
  local rootfs
  rootfs=$(bash "$ROOT/hack/image.sh" rootfs "$ROOT/hack/images/nginx.packages" "$ROOT/hack/images/nginx.setup")
  "$(ocibuild)" -tag "$NGINX_IMAGE" -layer "$rootfs" -cmd '["nginx", "-g", "daemon off;"]' -o "$out.tmp" >&2
  mv "$out.tmp" "$out"
}

image_glibc_dns() {
  local out=$IMAGES/glibc-dns-testing.tar
  [[ -s $out ]] && return
  local rootfs
  rootfs=$(bash "$ROOT/hack/image.sh" rootfs "$ROOT/hack/images/glibc-dns-testing.packages")
  "$(ocibuild)" -tag "$GLIBC_DNS_IMAGE" -layer "$rootfs" -file "$(coredns)=/coredns:0755" -o "$out.tmp" >&2
  mv "$out.tmp" "$out"
}

ocibuild() {
  if [[ ! -x $ROOT/bin/ocibuild ]]; then
    (cd "$ROOT/hack/ocibuild" && GOWORK=off CGO_ENABLED=0 "$GO" build -trimpath -o "$ROOT/bin/ocibuild" .) >&2 ||
      die "building hack/ocibuild failed"
  fi
  echo "$ROOT/bin/ocibuild"
}

cmd_build() {
  bash "$ROOT/hack/kube-env.sh" build node
  mkdir -p "$CACHE/node"
  exec 9>"$CACHE/node/.lock"
  flock 9
  build_binaries
  check_tags
  mkdir -p "$IMAGES"
  image_pause
  image_agnhost
  image_coredns
  image_nginx
  image_glibc_dns
  image_agnhost_npapi
}

cmd_versions() {
  echo "kubernetes $K8S_VERSION"
  echo "containerd $CONTAINERD_VERSION"
  echo "runc $RUNC_VERSION"
  echo "crictl $CRICTL_VERSION"
  echo "pause $PAUSE_IMAGE"
  echo "agnhost $AGNHOST_IMAGE"
  echo "coredns $COREDNS_IMAGE"
  echo "nginx $NGINX_IMAGE (Debian's nginx)"
  echo "glibc-dns-testing $GLIBC_DNS_IMAGE"
  echo "agnhost-npapi $NPAPI_AGNHOST_IMAGE (agnhost $AGNHOST_TAG; porter waits without SCTP)"
}

case ${1:-} in
  build) cmd_build ;;
  bindir) echo "$BIN" ;;
  imagedir) echo "$IMAGES" ;;
  versions) cmd_versions ;;
  *) usage ;;
esac
