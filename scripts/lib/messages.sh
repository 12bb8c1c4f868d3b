# shellcheck shell=bash
# shellcheck disable=SC2154 # message_prefix is set by the script that sources this
# The operator scripts' messages, on stderr and prefixed with the script's name
# (message_prefix, set before sourcing): progress with log, a failure with die CODE.

log() { printf '%s: %s\n' "$message_prefix" "$*" >&2; }
die() {
  local code=$1
  shift
  printf '%s: error: %s\n' "$message_prefix" "$*" >&2
  exit "$code"
}
