#!/usr/bin/env bash
# Installs the Debian packages a make target needs, and nothing when they are already there: a
# fresh machine (or CI) gets them from the project's own files, never by hand. Each target asks
# only for its purpose, so `make check` does not pull in qemu and a browser for a VM it never
# boots.
#
#   scripts/install-system-deps.sh PURPOSE...          PURPOSE: lint | diagram | vm | browser | https | bench | all
#   scripts/install-system-deps.sh --list PURPOSE...   print the packages, install nothing
#
# Needs root, or a user with passwordless sudo (as in CI), only when something is missing.
# INSTALL_LOG=FILE (make up and the test targets set it): apt's output goes to FILE; a failure
# prints its end and path.
# Exit codes: 0 installed or already there; 1 packages are missing and there is no root; 2 usage.
set -euo pipefail

packages_for() {
  case $1 in
    # The venv, shellcheck (make lint; tests/stack/test_units.py); apt-ftparchive for the local
    # apt repository scripts/install-gcloud.sh is tested against (tests/pipeline).
    lint) echo apt-utils python3-venv shellcheck ;;
    # make diagram, tests/tooling/test_validate_diagram.py: DOT -> docs/architecture.svg.
    diagram) echo graphviz ;;
    # localvm (make up, make image, make e2e, bench-boot): image build, TCG VM, metadata proxy.
    # The image builds without privileges (docs/ci.md): mmdebstrap under fakechroot and fakeroot,
    # then mkfs.ext4 -d.
    vm) echo mmdebstrap fakechroot fakeroot e2fsprogs qemu-system-x86 qemu-utils socat ;;
    # The e2e tests' browser (screenshots, the CA trusted as a person would); make up has no use
    # for it. libnss3-tools: certutil, so Chromium trusts the local CA's root.
    browser) echo chromium libnss3-tools ;;
    # HTTPS: the front the VM runs (tests/stack/test_https.py runs it on loopback) and pebble, the
    # local ACME CA for make up and the e2e tests.
    https) echo nginx pebble ;;
    # make bench: the HTTP load generator.
    bench) echo wrk ;;
    all) for purpose in lint diagram vm browser https bench; do packages_for "$purpose"; done ;;
    *)
      echo "install-system-deps: unknown purpose '$1' (lint, diagram, vm, browser, https, bench or all; --help)" >&2
      exit 2
      ;;
  esac
}

list_only=false
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
if [[ ${1:-} == --list ]]; then
  list_only=true
  shift
fi
(($# > 0)) || set -- all
packages=()
for purpose in "$@"; do
  list=$(packages_for "$purpose")
  read -r -d '' -a words <<<"$list" || true # -d '': every line; status 1 at the end is expected
  packages+=("${words[@]}")
done

if "$list_only"; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-system-deps: installing ${missing[*]}" >&2
as_root=()
if [[ $(id -u) -ne 0 ]]; then
  if ! sudo -n true 2>/dev/null; then
    echo "install-system-deps: need root to apt-get install ${missing[*]}; run: sudo $0 $*" >&2
    exit 1
  fi
  as_root=(sudo)
fi
install() {
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
if [[ -z ${INSTALL_LOG:-} ]]; then
  install
elif ! mkdir -p "$(dirname "$INSTALL_LOG")" || ! install >>"$INSTALL_LOG" 2>&1; then
  tail -n 20 "$INSTALL_LOG" >&2
  echo "install-system-deps: apt-get failed; full log: $INSTALL_LOG" >&2
  exit 1
fi
