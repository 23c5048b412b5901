#!/usr/bin/env bash
# image.sh: container images without a registry, and without a container
# engine when none runs here.
#
#   hack/image.sh tern OUT TAG...   tern's image (the Dockerfile's content) as a
#                                   `docker save` archive at OUT, named TAG...:
#                                   with docker or podman when one answers, else
#                                   a Debian root file system (mmdebstrap) and
#                                   bin/'s binaries (make build) put together
#                                   by hack/ocibuild
#   hack/image.sh server OUT TAG... the image of the lab's pods: bin/tern-lab alone
#                                   (static), its entrypoint `tern-lab serve`;
#                                   always assembled by hack/ocibuild, with no
#                                   engine (tern-lab builds it at `up`)
#   hack/image.sh rootfs PACKAGES [SETUP]
#                                   a cached Debian root file system (tar) with
#                                   the packages listed in the file PACKAGES,
#                                   then the shell commands in the file SETUP
#                                   run inside it (chroot); prints its path
#
# The archives load with `ctr images import`, `docker load` and
# `kind load image-archive`. Environment:
#   TERN_CACHE            cache root (default ~/.cache/tern); root file systems
#                         go to $TERN_CACHE/images
#   TERN_IMAGE_ENGINE     docker, podman or none (default: the first that answers)
#   TERN_BIN_DIR          tern's binaries for the image without an engine
#                         (default bin/, where make build puts them)
#   TERN_DEBIAN_SUITE     default bookworm (the Dockerfile's base)
#   TERN_DEBIAN_MIRROR    default http://deb.debian.org/debian
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE=${TERN_CACHE:-$HOME/.cache/tern}
SUITE=${TERN_DEBIAN_SUITE:-bookworm}
MIRROR=${TERN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BIN=${TERN_BIN_DIR:-$ROOT/bin}
GO=${GO:-go}

NAME=image
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# packages FILE: the package names in FILE, one per line, comments dropped.
packages() {
  [[ -r $1 ]] || die "no package list $1"
  local names
  names=$(sed 's/#.*//' "$1" | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
  [[ -n $names ]] || die "package list $1 names no package"
  local bad
  bad=$(grep -v '^[a-z0-9][a-z0-9.+-]*$' <<<"$names" || true)
  [[ -z $bad ]] || die "package list $1: not a Debian package name: $(tr '\n' ' ' <<<"$bad")"
  echo "$names"
}

# rootfs FILE [SETUP]: a Debian root file system with FILE's packages on top
# of minbase, then SETUP's commands, as a tar in the cache (built once per
# suite, mirror, list and setup).
cmd_rootfs() {
  (($# == 1 || $# == 2)) || usage
  local names key out setup=
  names=$(packages "$1")
  if (($# == 2)); then
    [[ -r $2 ]] || die "no setup file $2"
    setup=$(cat "$2")
  fi
  command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap not found (apt-get install mmdebstrap; make deps installs it)"
  # minbase without documentation, manuals and locales (what debian:*-slim is),
  # without Recommends (the Dockerfile's --no-install-recommends), and with
  # /usr merged by mmdebstrap's hook as in Debian's images (the usrmerge
  # package would bring perl).
  local -a opts=(--quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --include="$(paste -sd, <<<"$names")"
    --aptopt='Acquire::Check-Valid-Until "false"'
    --aptopt='APT::Install-Recommends "false"'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/info/*')
  # The hook's shell runs on the host; the commands run in the new root.
  [[ -z $setup ]] || opts+=(--customize-hook="chroot \"\$1\" /bin/sh -eux <'$(realpath "$2")'")
  local -a sources=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main"
    "deb ${MIRROR%/debian}/debian-security $SUITE-security main")
  key=$(printf '%s\n' "$SUITE" "$(mmdebstrap --version)" "${opts[@]%%--customize-hook=*}" "$setup" "${sources[@]}" | sha256sum | cut -c1-16)
  out=$CACHE/images/rootfs-$SUITE-$key.tar
  if [[ -s $out ]]; then echo "$out"; return; fi
  mkdir -p "$CACHE/images"
  exec 9>"$CACHE/images/.lock"
  flock 9
  if [[ -s $out ]]; then echo "$out"; return; fi
  log "building a $SUITE root file system with $(tr '\n' ' ' <<<"$names")(cold: ~1 min)"
  # mmdebstrap picks its output format from the name: it must end in .tar.
  local tmp=${out%.tar}.tmp$$.tar
  if ! mmdebstrap "${opts[@]}" "$SUITE" "$tmp" "${sources[@]}" >"$tmp.log" 2>&1; then
    tail -n 30 "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    die "mmdebstrap failed for $SUITE from $MIRROR (its last lines above)"
  fi
  rm -f "$tmp.log"
  mv "$tmp" "$out"
  echo "$out"
}

# engine: the container engine that answers, or none.
engine() {
  local e=${TERN_IMAGE_ENGINE:-}
  if [[ -n $e ]]; then
    case $e in docker | podman | none) echo "$e"; return ;; esac
    die "TERN_IMAGE_ENGINE must be docker, podman or none, not $e"
  fi
  for e in docker podman; do
    if command -v "$e" >/dev/null 2>&1 && "$e" info >/dev/null 2>&1; then echo "$e"; return; fi
  done
  echo none
}

# ocibuild: hack/ocibuild, built into bin/ (a module of its own).
ocibuild() {
  if [[ ! -x $BIN/ocibuild || -n $(find "$ROOT/hack/ocibuild" -newer "$BIN/ocibuild" -name '*.go' -o -newer "$BIN/ocibuild" -name 'go.*') ]]; then
    (cd "$ROOT/hack/ocibuild" && GOWORK=off CGO_ENABLED=0 "$GO" build -trimpath -o "$BIN/ocibuild" .) || die "building hack/ocibuild failed"
  fi
  echo "$BIN/ocibuild"
}

cmd_tern() {
  (($# >= 2)) || usage
  local out=$1
  shift
  local e
  e=$(engine)
  mkdir -p "$(dirname "$out")"
  if [[ $e != none ]]; then
    local version
    version=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo dev)
    local -a t=()
    local tag
    for tag in "$@"; do t+=(-t "$tag"); done
    log "building with $e"
    "$e" build --build-arg VERSION="$version" "${t[@]}" "$ROOT"
    "$e" save -o "$out" "$@"
    log "wrote $out"
    return
  fi
  local b
  for b in tern-agent tern-cni ternctl; do
    [[ -x $BIN/$b ]] || die "no $BIN/$b: run make build first"
  done
  local rootfs tool
  rootfs=$(cmd_rootfs "$ROOT/hack/images/tern.packages")
  tool=$(ocibuild)
  local -a args=(-layer "$rootfs" -user 0 -entrypoint '["/usr/local/bin/tern-agent"]' -o "$out")
  for b in tern-agent tern-cni ternctl; do args+=(-file "$BIN/$b=/usr/local/bin/$b:0755"); done
  for tag in "$@"; do args+=(-tag "$tag"); done
  log "no container engine answers: assembling with mmdebstrap's root file system and ocibuild"
  "$tool" "${args[@]}" >&2
  log "wrote $out"
}

cmd_server() {
  (($# >= 2)) || usage
  local out=$1
  shift
  [[ -x $BIN/tern-lab ]] || die "no $BIN/tern-lab: run make build first"
  local tool tag
  tool=$(ocibuild)
  local -a args=(-file "$BIN/tern-lab=/usr/local/bin/tern-lab:0755" -user 0
    -entrypoint '["/usr/local/bin/tern-lab", "serve"]' -o "$out")
  for tag in "$@"; do args+=(-tag "$tag"); done
  mkdir -p "$(dirname "$out")"
  "$tool" "${args[@]}" >&2
}

main() {
  (($# >= 1)) || usage
  local cmd=$1
  shift
  case $cmd in
    tern) cmd_tern "$@" ;;
    rootfs) cmd_rootfs "$@" ;;
    server) cmd_server "$@" ;;
    *) usage ;;
  esac
}

main "$@"
