#!/usr/bin/env bash
# Installs what tern's tests and lab need on a Debian machine. Idempotent, and
# quiet when everything is already there. Run as root (CI runs it as root).
set -euo pipefail

# package:command-that-proves-it-is-installed
need=(
  iptables:iptables
  iptables:iptables-nft     # both backends: the dataplane tests run each
  iptables:iptables-legacy
  ipset:ipset
  iproute2:ip
  containernetworking-plugins:/usr/lib/cni/portmap
  conntrack:conntrack
  util-linux:nsenter
  procps:ps
  kmod:modprobe
  openssl:openssl
  curl:curl
  bird2:/usr/sbin/bird
  frr:/usr/lib/frr/bgpd
  mmdebstrap:mmdebstrap     # images without a container engine (hack/image.sh)
  gcc:gcc                   # the lab's nodes (hack/node-env.sh): the pause image,
  libc6-dev:/usr/lib/x86_64-linux-gnu/libc.a   # linked statically,
  libseccomp-dev:/usr/include/seccomp.h        # and runc with seccomp
  pkg-config:pkg-config
  nftables:nft              # kube-proxy's nftables mode on the lab's real nodes
)

missing=()
for item in "${need[@]}"; do
  pkg=${item%%:*} probe=${item#*:}
  if [[ $probe == /* ]]; then
    [[ -e $probe ]] || missing+=("$pkg")
  else
    command -v "$probe" >/dev/null 2>&1 || missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The bandwidth plugin needs the ifb module; load it where the kernel has it.
if [[ $(id -u) -eq 0 ]] && ! [[ -d /sys/module/ifb ]]; then
  modprobe ifb 2>/dev/null || true
fi
