# Sourced by hack's scripts: messages and usage. The script sets NAME first;
# usage prints the script's header comment.
log() { echo "$NAME: $*" >&2; }
die() { log "$*"; exit 1; }
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[1]}" >&2
  exit 2
}
