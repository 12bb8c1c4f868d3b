#!/usr/bin/env bash
# Installs the Debian packages `make test` and `make up` need, and nothing when they are already
# there: a fresh machine (or CI) gets them from the project's own files, never by hand.
set -euo pipefail

packages=(
  python3-venv
  shellcheck
  wrk
  # make diagram / tests/test_validate_diagram.py: DOT -> docs/architecture.svg.
  graphviz
  # localvm (make up, tests/e2e, bench-boot): image build, TCG VM, metadata proxy,
  # browser screenshot.
  chromium
  debootstrap
  e2fsprogs
  qemu-system-x86
  qemu-utils
  socat
  # HTTPS (tests/stack/test_https.py, tests/e2e/test_https.py, make up): the front the VM runs,
  # the local ACME CA, and certutil to make Chromium trust that CA's root.
  nginx
  pebble
  libnss3-tools
)

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
if [[ $(id -u) -ne 0 ]]; then
  echo "install-system-deps: need root to apt-get install ${missing[*]}; run: sudo $0" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
