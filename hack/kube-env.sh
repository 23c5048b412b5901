#!/usr/bin/env bash
# kube-env.sh: a real Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager) on 127.0.0.1, and kubectl, for tern's tests and its lab.
#
#   hack/kube-env.sh build      build the binaries into the cache (no-op when cached)
#   hack/kube-env.sh build node build kubelet, kube-proxy, kube-scheduler and
#                               agnhost (the lab's real nodes) the same way
#   hack/kube-env.sh build e2e  build Kubernetes' e2e suite (e2e.test, from
#                               `go test -c`) and the ginkgo CLI it pins
#   hack/kube-env.sh up DIR     start the control plane with all its state in DIR;
#                               prints only the admin kubeconfig's path on stdout
#   hack/kube-env.sh down DIR   stop what `up DIR` started, by recorded PID
#   hack/kube-env.sh bindir     print the directory of the binaries (with kubectl)
#
# The binaries are built from the Go module proxy in a throwaway module inside
# the cache, never in tern's go.mod. Environment:
#   K8S_VERSION      Kubernetes release to build and run (default v1.37.2)
#   TERN_CACHE       cache root (default ~/.cache/tern); binaries go to
#                    $TERN_CACHE/kube/$K8S_VERSION/bin
#   TERN_KUBE_ADDRESS    with `up`: the address the API server advertises
#                    (the `kubernetes` Service's endpoint, kept by the API
#                    server's lease reconciler) and serves on besides
#                    127.0.0.1: the lab runs the control plane in a network
#                    namespace of its own, where nodes reach this address
#   TERN_KUBE_SCHEDULER=1  with `up`: run kube-scheduler too (build node)
#   TERN_KUBE_CLUSTER_CIDR, TERN_KUBE_SERVICE_CIDR  with `up`: the pod and
#                    Service ranges, one CIDR or one per family separated by a
#                    comma, the primary family first (default 10.244.0.0/16
#                    and 10.96.0.0/16); nodes get a /24 of an IPv4 range and a
#                    /64 of an IPv6 one
#   TERN_KUBE_WATCH_PID  with `up`: once this PID is gone, stop the control
#                    plane and remove its etcd data (the Go test helper passes
#                    its own PID, so a killed test binary leaves nothing running)
set -euo pipefail

# The newest release whose staging modules are all on the module proxy and that
# builds with the machine's Go (1.26). Keep k8s.io/client-go in tern's go.mod at
# the matching v0.<minor>.<patch>.
K8S_VERSION=${K8S_VERSION:-v1.37.2}
CACHE=${TERN_CACHE:-$HOME/.cache/tern}
KUBE_CACHE=$CACHE/kube/$K8S_VERSION
BIN=$KUBE_CACHE/bin
# What `build` makes (the control plane and kubectl), and what `build node`
# makes (a real node's Kubernetes parts, and agnhost, the e2e suite's
# all-purpose test server), from one module at one version.
BINARIES=(etcd kube-apiserver kube-controller-manager kubectl)
NODE_BINARIES=(kubelet kube-proxy kube-scheduler agnhost)
# Kubernetes' e2e suite: a test binary (go test -c, so not a `tool` of the
# module) and the ginkgo CLI at the version k8s.io/kubernetes requires, which
# runs e2e.test in parallel processes.
E2E_BINARIES=(e2e.test ginkgo)
declare -A TEST_PKGS=([e2e.test]=1)
declare -A PKGS=(
  [etcd]=go.etcd.io/etcd/server/v3
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
  [kubelet]=k8s.io/kubernetes/cmd/kubelet
  [kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [agnhost]=k8s.io/kubernetes/test/images/agnhost
  [e2e.test]=k8s.io/kubernetes/test/e2e
  [ginkgo]=github.com/onsi/ginkgo/v2/ginkgo
)

SERVICE_CIDR=${TERN_KUBE_SERVICE_CIDR:-10.96.0.0/16}
CLUSTER_CIDR=${TERN_KUBE_CLUSTER_CIDR:-10.244.0.0/16}
SA_ISSUER=https://kubernetes.default.svc.cluster.local

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")

NAME=kube-env
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# have_binaries [NAME...]: every named binary (default: the control plane's)
# is in the cache.
have_binaries() {
  local b
  (($#)) || set -- "${BINARIES[@]}"
  for b in "$@"; do [[ -x $BIN/$b ]] || return 1; done
}

# ---------------------------------------------------------------- build

# cmd_build [node|e2e]: builds the control plane's binaries (or with `node`,
# the node's; with `e2e`, the e2e suite's) that the cache does not have yet.
cmd_build() {
  local -a want=("${BINARIES[@]}")
  case ${1:-} in
    "") ;;
    node) want=("${NODE_BINARIES[@]}") ;;
    e2e) want=("${E2E_BINARIES[@]}") ;;
    *) usage ;;
  esac
  command -v go >/dev/null 2>&1 || die "go not found"
  have_binaries "${want[@]}" && return 0
  mkdir -p "$KUBE_CACHE"
  # Test packages build in parallel; one builds, the others wait and reuse.
  exec 9>"$KUBE_CACHE/.lock"
  flock 9
  have_binaries "${want[@]}" && return 0

  local ver=$K8S_VERSION
  [[ $ver =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "K8S_VERSION must look like v1.37.2, not $ver"
  local minor=${BASH_REMATCH[1]}
  local src=$KUBE_CACHE/src
  # A module of its own: no go.work, no parent go.mod, the local toolchain.
  export GOWORK=off GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" CGO_ENABLED=0
  write_module "$src"
  cd "$src"

  # buildDate: the release's commit time, so a rebuild is byte-identical.
  local stamp
  stamp=$(grep -o '"Time":"[^"]*"' "$(go mod download -json "k8s.io/kubernetes@$ver" | sed -n 's/^[[:space:]]*"Info": "\(.*\)",$/\1/p')" | cut -d'"' -f4)
  stamp=${stamp%%.*}
  stamp=${stamp%Z}Z
  local x ldflags="-s -w"
  for x in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $x.gitVersion=$ver -X $x.gitMajor=1 -X $x.gitMinor=$minor"
    ldflags+=" -X $x.gitTreeState=clean -X $x.buildDate=$stamp"
  done
  log "building ${want[*]} of Kubernetes $ver with $(go env GOVERSION) into $BIN (cold: ~5 min, 2-3 GB)"
  rm -rf "$KUBE_CACHE/bin.tmp"
  mkdir -p "$KUBE_CACHE/bin.tmp" "$BIN"
  local b
  for b in "${want[@]}"; do
    [[ -x $BIN/$b ]] && continue
    if [[ -n ${TEST_PKGS[$b]:-} ]]; then
      log "go test -c ${PKGS[$b]}"
      go test -c -vet=off -trimpath -ldflags "$ldflags" -o "$KUBE_CACHE/bin.tmp/$b" "${PKGS[$b]}" >&2
    else
      log "go build ${PKGS[$b]}"
      go build -trimpath -ldflags "$ldflags" -o "$KUBE_CACHE/bin.tmp/$b" "${PKGS[$b]}" >&2
    fi
  done
  if [[ -x $KUBE_CACHE/bin.tmp/kube-apiserver ]]; then
    "$KUBE_CACHE/bin.tmp/kube-apiserver" --version >&2
    "$KUBE_CACHE/bin.tmp/etcd" --version | head -1 >&2
  fi
  # Each binary lands whole or not at all.
  for b in "$KUBE_CACHE"/bin.tmp/*; do mv "$b" "$BIN/"; done
  rmdir "$KUBE_CACHE/bin.tmp"
  log "built ${want[*]} ($ver) into $BIN"
}

# write_module DIR: the throwaway module that builds every binary above, in
# DIR; kept when it is already there for this version and these binaries.
write_module() {
  local src=$1 ver=$K8S_VERSION
  local staging_ver="v0.${ver#v1.}"
  local mark
  mark="// tern kube-env $ver: $(printf '%s\n' "${!PKGS[@]}" | sort | paste -sd' ')"
  if [[ -f $src/go.mod && -f $src/go.sum ]] && grep -qxF "$mark" "$src/go.mod"; then
    return
  fi
  rm -rf "$src"
  mkdir -p "$src"
  # k8s.io/kubernetes's go.mod replaces each staging module with a directory
  # of its own repository; here each points at the published v0.X.Y instead.
  local info gomod
  info=$(go mod download -json "k8s.io/kubernetes@$ver") || die "k8s.io/kubernetes@$ver not on the module proxy"
  gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' <<<"$info")
  [[ -f $gomod ]] || die "no go.mod for k8s.io/kubernetes@$ver"
  local -a staging
  mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod")
  ((${#staging[@]} > 20)) || die "found only ${#staging[@]} staging modules in $gomod"
  {
    echo "// Generated by tern's hack/kube-env.sh: a throwaway module that builds"
    echo "// the test control plane and the lab's nodes. Not part of tern."
    echo "$mark"
    echo "module tern.invalid/kube-env"
    echo
    echo "go 1.24"
    echo
    echo "tool ("
    local b
    for b in $(printf '%s\n' "${!PKGS[@]}" | sort); do
      [[ -n ${TEST_PKGS[$b]:-} ]] || echo "	${PKGS[$b]}"
    done
    echo ")"
    echo
    echo "require k8s.io/kubernetes $ver"
    echo
    echo "replace ("
    local m
    for m in "${staging[@]}"; do echo "	$m => $m $staging_ver"; done
    echo ")"
  } >"$src/go.mod"
  (cd "$src" && go mod tidy >&2) || die "go mod tidy failed for Kubernetes $ver (a staging module missing from the proxy?)"
}

# ---------------------------------------------------------------- up / down

# abs_dir DIR: DIR as an absolute, symlink-free path (created when missing).
abs_dir() { mkdir -p "$1" && (cd "$1" && pwd -P); }

# ours PID DIR: PID is alive and is one of the processes that `up DIR`
# started (an argument is DIR or names a file in it), so a recycled PID, or
# a control plane in another DIR, is never touched.
ours() {
  local pid=$1 dir=$2 arg
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  while IFS= read -r -d '' arg; do
    [[ $arg == "$dir" || $arg == *"$dir/"* ]] && return 0
  done <"/proc/$pid/cmdline" 2>/dev/null
  return 1
}

# free_ports N: N distinct TCP ports that nothing on this machine uses, taken
# below the ephemeral range so outgoing connections do not collide with them.
free_ports() {
  local n=$1 used lo
  lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
  local -a out=()
  local p h
  used=" "
  for h in $(awk 'FNR > 1 { n = split($2, a, ":"); print a[n] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
    used+="$((16#$h)) "
  done
  while ((${#out[@]} < n)); do
    p=$((10000 + RANDOM % (lo - 10000)))
    [[ $used == *" $p "* ]] && continue
    used+="$p "
    out+=("$p")
  done
  echo "${out[@]}"
}

# cert NAME CN [O] [SAN] [USAGE]: a key and a certificate signed by the CA.
cert() {
  local name=$1 cn=$2 o=${3:-} san=${4:-} usage=${5:-clientAuth}
  local subj="/CN=$cn"
  [[ -n $o ]] && subj="/O=$o$subj"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n $san ]] && echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# kubeconfig FILE USER: a kubeconfig for the client certificate USER.
kubeconfig() {
  local file=$1 user=$2
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tern-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
    client-certificate: $PKI/$user.crt
    client-key: $PKI/$user.key
contexts:
- name: tern-test
  context:
    cluster: tern-test
    user: $user
current-context: tern-test
EOF
  chmod 0600 "$file"
}

# start NAME CMD...: runs CMD in its own session, detached from the caller's
# stdout (so `$(kube-env.sh up DIR)` returns), logs to DIR/NAME.log.
start() {
  local name=$1
  shift
  setsid "$@" </dev/null >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

# The files and folders `up` creates in DIR; `down` and a new `up` remove only these.
STATE=(etcd pki kcm kubeconfig controller-manager.kubeconfig scheduler.kubeconfig ports
  etcd.pid etcd.log kube-apiserver.pid kube-apiserver.log
  kube-controller-manager.pid kube-controller-manager.log
  kube-scheduler.pid kube-scheduler.log watchdog.pid watchdog.log)

running() {
  local f
  for f in "$DIR"/*.pid; do
    [[ -e $f ]] || continue
    [[ $(basename "$f") == watchdog.pid ]] && continue
    ours "$(cat "$f")" "$DIR" && return 0
  done
  return 1
}

# wait_ok URL CURL-ARGS...: waits until a GET of URL succeeds (2xx) and, for
# the health endpoints, answers "ok"; gives up, stops everything and fails
# when a started process exits or after 60 s.
wait_ok() {
  local url=$1 deadline=$((SECONDS + 60)) p body
  shift
  while :; do
    if body=$(curl --silent --fail --max-time 2 "$@" "$url" 2>/dev/null); then
      [[ $url != */readyz && $url != */healthz ]] || [[ $body == ok ]] && return 0
    fi
    for p in etcd kube-apiserver kube-controller-manager kube-scheduler; do
      [[ -f $DIR/$p.pid ]] || continue
      if ! ours "$(cat "$DIR/$p.pid")" "$DIR"; then
        log "$p exited at start; last lines of $DIR/$p.log:"
        tail -n 30 "$DIR/$p.log" >&2 || true
        stop_all
        exit 1
      fi
    done
    if ((SECONDS > deadline)); then
      log "$url not ok after 60 s; logs in $DIR"
      stop_all
      exit 1
    fi
    sleep 0.1
  done
}

# since T0: seconds since T0 (from now_us), with milliseconds.
now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
since() {
  local ms=$((($(now_us) - $1) / 1000))
  printf '%d.%03d' $((ms / 1000)) $((ms % 1000))
}

cmd_up() {
  [[ $# -eq 1 ]] || usage
  DIR=$(abs_dir "$1")
  command -v openssl >/dev/null 2>&1 || die "openssl not found (Debian package openssl; run make deps)"
  command -v curl >/dev/null 2>&1 || die "curl not found (Debian package curl; run make deps)"
  have_binaries || die "no binaries in $BIN; run: $SELF build"
  local addr=${TERN_KUBE_ADDRESS:-} scheduler=${TERN_KUBE_SCHEDULER:-}
  if [[ -n $addr ]]; then
    [[ ($addr =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ && $addr != 127.* && $addr != 0.0.0.0) ||
      ($addr =~ ^[0-9a-fA-F:]+$ && $addr == *:*:* && ! $addr =~ ^[0:]+1?$) ]] ||
      die "TERN_KUBE_ADDRESS must be an IPv4 or IPv6 address other than loopback and unspecified, not $addr"
    # The API server advertises it as the kubernetes Service's endpoint: of
    # the family of the primary Service range.
    local primary=${SERVICE_CIDR%%,*}
    [[ ($addr == *:* && $primary == *:*) || ($addr != *:* && $primary != *:*) ]] ||
      die "TERN_KUBE_ADDRESS $addr is not of the family of the primary Service range $primary (the first of TERN_KUBE_SERVICE_CIDR)"
  fi
  # A node's pod CIDR: a /24 of an IPv4 range, a /64 of an IPv6 one;
  # dual-stack takes a size per family.
  local -a masks=()
  local c size
  for c in ${CLUSTER_CIDR//,/ }; do
    size=24 && [[ $c != *:* ]] || size=64
    # kube-controller-manager allows at most 16 bits between the range and
    # a node's CIDR.
    [[ ${c#*/} =~ ^[0-9]+$ ]] && ((${c#*/} <= size && size - ${c#*/} <= 16)) ||
      die "cluster CIDR $c: a node gets a /$size of it, so its prefix must be /$((size - 16)) to /$size"
    if [[ $CLUSTER_CIDR == *,* ]]; then
      masks+=(--node-cidr-mask-size-ipv$([[ $c == *:* ]] && echo 6 || echo 4)=$size)
    else
      masks+=(--node-cidr-mask-size=$size)
    fi
  done
  [[ -z $scheduler || -x $BIN/kube-scheduler ]] || die "no $BIN/kube-scheduler; run: $SELF build node"
  running && die "a control plane is already running in $DIR; run: $SELF down $DIR"
  # A previous, dead run: stop its watchdog and remove its state.
  stop_all
  local s
  for s in "${STATE[@]}"; do rm -rf "${DIR:?}/$s"; done

  local t0
  t0=$(now_us)
  PKI=$DIR/pki
  mkdir -p "$PKI" "$DIR/etcd" "$DIR/kcm"
  chmod 0700 "$PKI" "$DIR/etcd"
  local etcd_port peer_port kcm_port sched_port ports
  ports=$(free_ports 5)
  read -r etcd_port peer_port API_PORT kcm_port sched_port <<<"$ports"
  [[ $sched_port =~ ^[0-9]+$ ]] || die "could not pick free ports"
  printf 'etcd=%s\netcd-peer=%s\nkube-apiserver=%s\nkube-controller-manager=%s\nkube-scheduler=%s\n' \
    "$etcd_port" "$peer_port" "$API_PORT" "$kcm_port" "$sched_port" >"$DIR/ports"

  # PKI: one CA signs every serving and client certificate.
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=tern-test-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
  local loop="IP:127.0.0.1,DNS:localhost"
  # The kubernetes Service's ClusterIP: the first address of the primary
  # Service range (10.96.0.0/16 -> 10.96.0.1, fd74:6572:6e96::/112 ->
  # fd74:6572:6e96::1); named for both ranges of a dual-stack cluster.
  local svc_ips="" r net
  for r in ${SERVICE_CIDR//,/ }; do
    net=${r%/*}
    if [[ $net == *:* ]]; then
      [[ $net == *:: ]] || die "IPv6 Service range $r: want one whose address ends in :: (such as fd74:6572:6e96::/112)"
      svc_ips+=",IP:${net}1"
    else
      [[ $net == *.0 ]] || die "IPv4 Service range $r: want one whose address ends in .0"
      svc_ips+=",IP:${net%.0}.1"
    fi
  done
  cert etcd etcd "" "$loop" serverAuth,clientAuth
  cert apiserver-etcd-client kube-apiserver-etcd-client
  cert apiserver kube-apiserver "" \
    "$loop${addr:+,IP:$addr}$svc_ips,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" serverAuth
  # The API server's client of kubelets (exec, logs, port-forward).
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert front-proxy-client front-proxy-client
  cert admin tern-admin system:masters
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  # Service-account tokens: the API server signs, kube-controller-manager too
  # (legacy token Secrets), and both verify with the public half.
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
  openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 0600 "$PKI"/*.key
  kubeconfig "$DIR/kubeconfig" admin
  kubeconfig "$DIR/controller-manager.kubeconfig" controller-manager
  kubeconfig "$DIR/scheduler.kubeconfig" scheduler

  if [[ -n ${TERN_KUBE_WATCH_PID:-} ]]; then
    local watch=$TERN_KUBE_WATCH_PID
    # The watchdog's command line names DIR (so `ours` accepts it). When the
    # watched process is gone it runs `down DIR` and removes the etcd data,
    # keeping the logs.
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; bash "$2" down "$3" && rm -rf "$3/etcd"' \
      kube-env-watchdog "$watch" "$SELF" "$DIR" </dev/null >"$DIR/watchdog.log" 2>&1 &
    echo $! >"$DIR/watchdog.pid"
  fi

  # etcd takes every ETCD_* variable as a flag: start it without them.
  local -a unset_etcd=()
  local v
  for v in $(compgen -e); do [[ $v == ETCD_* ]] && unset_etcd+=(-u "$v"); done
  start etcd env "${unset_etcd[@]}" "$BIN/etcd" \
    --name=tern-test \
    --data-dir="$DIR/etcd" \
    --listen-client-urls="https://127.0.0.1:$etcd_port" \
    --advertise-client-urls="https://127.0.0.1:$etcd_port" \
    --listen-peer-urls="https://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="https://127.0.0.1:$peer_port" \
    --initial-cluster="tern-test=https://127.0.0.1:$peer_port" \
    --initial-cluster-state=new \
    --cert-file="$PKI/etcd.crt" --key-file="$PKI/etcd.key" \
    --client-cert-auth --trusted-ca-file="$PKI/ca.crt" \
    --peer-cert-file="$PKI/etcd.crt" --peer-key-file="$PKI/etcd.key" \
    --peer-client-cert-auth --peer-trusted-ca-file="$PKI/ca.crt" \
    --unsafe-no-fsync \
    --log-level=warn

  # On loopback alone the `kubernetes` Service can have no endpoint (the
  # reconciler refuses a loopback address): none is kept.
  local -a where=(--advertise-address=127.0.0.1 --bind-address=127.0.0.1 --endpoint-reconciler-type=none)
  # An IPv6 address is served on "::", which takes IPv4 too.
  local any=0.0.0.0
  [[ $addr != *:* ]] || any=::
  [[ -z $addr ]] || where=(--advertise-address="$addr" --bind-address=$any --endpoint-reconciler-type=lease)
  start kube-apiserver "$BIN/kube-apiserver" \
    "${where[@]}" \
    --secure-port="$API_PORT" \
    --etcd-servers="https://127.0.0.1:$etcd_port" \
    --etcd-cafile="$PKI/ca.crt" \
    --etcd-certfile="$PKI/apiserver-etcd-client.crt" \
    --etcd-keyfile="$PKI/apiserver-etcd-client.key" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --requestheader-client-ca-file="$PKI/ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer="$SA_ISSUER" \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=true \
    --profiling=false

  # kube-controller-manager starts once the API server is ready: before the
  # RBAC bootstrap roles exist it is refused and exits. Its client QPS is
  # raised: at the default 20 it spends ~5 s creating its controllers'
  # ServiceAccounts and tokens before any controller runs.
  local -a tls=(--cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key")
  wait_ok "https://127.0.0.1:$API_PORT/readyz" "${tls[@]}"
  local api_ready
  api_ready=$(since "$t0")
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$kcm_port" \
    --cert-dir="$DIR/kcm" \
    --controllers='*' \
    --use-service-account-credentials \
    --root-ca-file="$PKI/ca.crt" \
    --service-account-private-key-file="$PKI/sa.key" \
    --allocate-node-cidrs \
    --cluster-cidr="$CLUSTER_CIDR" \
    "${masks[@]}" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --leader-elect=false \
    --kube-api-qps=200 \
    --kube-api-burst=400 \
    --profiling=false

  wait_ok "https://127.0.0.1:$kcm_port/healthz" --insecure
  if [[ -n $scheduler ]]; then
    start kube-scheduler "$BIN/kube-scheduler" \
      --kubeconfig="$DIR/scheduler.kubeconfig" \
      --authentication-kubeconfig="$DIR/scheduler.kubeconfig" \
      --authorization-kubeconfig="$DIR/scheduler.kubeconfig" \
      --bind-address=127.0.0.1 \
      --secure-port="$sched_port" \
      --leader-elect=false \
      --profiling=false
    wait_ok "https://127.0.0.1:$sched_port/healthz" --insecure
  fi
  # Ready to use: kube-controller-manager runs its controllers (node IPAM,
  # service accounts, ...) only after it has set up all of them, some time
  # after /healthz; the default ServiceAccount of namespace default shows they run.
  wait_ok "https://127.0.0.1:$API_PORT/api/v1/namespaces/default/serviceaccounts/default" "${tls[@]}"
  log "ready in $(since "$t0") s (kube-apiserver /readyz after $api_ready s): https://127.0.0.1:$API_PORT ($K8S_VERSION)"
  echo "$DIR/kubeconfig"
}

# stop_all: stops every recorded process of DIR that is still ours, clients
# before servers (the API server shuts down in ~1 s with etcd still there,
# in ~4 s without it): SIGTERM, then SIGKILL after 5 s. Never by name.
stop_all() {
  stop_pids watchdog kube-scheduler kube-controller-manager
  stop_pids kube-apiserver
  stop_pids etcd
}

# stop_pids NAME...: SIGTERM the processes of DIR/NAME.pid, SIGKILL them
# when still there after 5 s.
stop_pids() {
  local -a pids=() alive
  local name pid
  for name in "$@"; do
    [[ -f $DIR/$name.pid ]] || continue
    pid=$(cat "$DIR/$name.pid")
    # The watchdog that runs this `down` is its parent.
    [[ $pid == "$PPID" ]] && continue
    ours "$pid" "$DIR" && pids+=("$pid")
  done
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + 5))
  while :; do
    alive=()
    for pid in "${pids[@]}"; do ours "$pid" "$DIR" && alive+=("$pid"); done
    ((${#alive[@]})) || return 0
    ((SECONDS < deadline)) || break
    sleep 0.05
  done
  log "still running after SIGTERM, sending SIGKILL: ${alive[*]}"
  kill -KILL "${alive[@]}" 2>/dev/null || true
}

cmd_down() {
  [[ $# -eq 1 ]] || usage
  [[ -d $1 ]] || return 0
  DIR=$(cd "$1" && pwd -P)
  stop_all
  rm -f "$DIR"/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler,watchdog}.pid
}

case ${1:-} in
  build) shift; [[ $# -le 1 ]] || usage; cmd_build "$@" ;;
  bindir) shift; [[ $# -eq 0 ]] || usage; echo "$BIN" ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  *) usage ;;
esac
