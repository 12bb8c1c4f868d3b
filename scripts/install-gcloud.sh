#!/usr/bin/env bash
# Installs the gcloud CLI this repo is tested with, from Google's signed apt repository, and
# nothing when that version is already on PATH. This file is the one place the gcloud version is
# stated: CI installs it here, and tests/pipeline/test_circleci_config.py checks it is the gcloud
# the offline tests ran.
#
# Integrity: apt checks the repository's InRelease signature against Google's key (the keyring
# named by signed-by, nothing else), and each .deb's SHA-256 against that signed index, so the
# package is verified without a hand-recorded checksum. Google's image registry is not used (it
# deletes numbered tags after 365 days); the apt repository's index keeps past versions.
# Steps as Google documents them (cloud.google.com/sdk/docs/install, Debian/Ubuntu), with the
# version pinned as its docs show (google-cloud-cli=VERSION-0) and only google-cloud-cli
# installed (no recommended components).
#
#   scripts/install-gcloud.sh            (root, or a user with passwordless sudo, as in CI)
#   scripts/install-gcloud.sh --dry-run  print the commands, change nothing
#   scripts/install-gcloud.sh --version  print the pinned version
#
# Settings (environment), for testing against a local repository: GCLOUD_APT_REPO (repository
# URL), GCLOUD_APT_KEY (its key's URL), APT_ROOT (a directory apt and dpkg use instead of the
# system's: sources, keyring, lists, cache and package database all live under it).
#
# Exit codes: 0 installed, or already there; 1 the install failed (the message says why: the
# version is missing from the repository, a signature or hash did not verify, no root); 2 usage.
set -euo pipefail

readonly GCLOUD_VERSION=528.0.0
readonly PACKAGE=google-cloud-cli
readonly PACKAGE_VERSION=$GCLOUD_VERSION-0 # Google's packages carry Debian revision 0

repo=${GCLOUD_APT_REPO:-https://packages.cloud.google.com/apt}
key_url=${GCLOUD_APT_KEY:-https://packages.cloud.google.com/apt/doc/apt-key.gpg}
apt_root=${APT_ROOT:-}
keyring=$apt_root/usr/share/keyrings/cloud.google.gpg
sources=$apt_root/etc/apt/sources.list.d/google-cloud-sdk.list

log() { printf 'install-gcloud: %s\n' "$*" >&2; }

dry_run=false
case ${1:-} in
  --version)
    echo "$GCLOUD_VERSION"
    exit 0
    ;;
  --dry-run) dry_run=true ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  "") ;;
  *)
    log "unknown argument '$1' (--dry-run, --version or --help)"
    exit 2
    ;;
esac

# The SDK's VERSION file answers in milliseconds; `gcloud version` takes seconds.
installed=""
if gcloud_bin=$(command -v gcloud); then
  sdk_root=$(dirname "$(dirname "$(readlink -f "$gcloud_bin")")")
  if [[ -r $sdk_root/VERSION ]]; then
    installed="Google Cloud SDK $(<"$sdk_root/VERSION")"
  else
    installed=$(gcloud version 2>/dev/null | head -n 1) || installed="an unknown gcloud"
  fi
fi
if [[ $installed == "Google Cloud SDK $GCLOUD_VERSION" ]]; then
  exit 0
fi
if [[ -n $installed && ${CI:-} != true ]]; then
  # A person's own gcloud is left alone; CI (CI=true) always gets the tested one.
  log "warning: using $installed from PATH; this repo is tested with $GCLOUD_VERSION"
  exit 0
fi

# Prints a command, then runs it unless this is a dry run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  "$dry_run" || "$@"
}

# apt and dpkg write system state; CI's user has passwordless sudo.
as_root=()
if [[ $(id -u) -ne 0 ]]; then
  if ! "$dry_run" && ! sudo -n true 2>/dev/null; then
    log "need root (or passwordless sudo) to run apt-get; run: sudo $0"
    exit 1
  fi
  as_root=(sudo)
fi
apt_env=(DEBIAN_FRONTEND=noninteractive)
if [[ -n $apt_root ]]; then
  # apt reads the host's apt.conf.d before any -o option (apt.conf(5), "the following order"),
  # so only a file named by APT_CONFIG keeps the host's settings and state out entirely.
  apt_env+=(APT_CONFIG="$apt_root/etc/apt/apt.conf")
  run mkdir -p "$apt_root"/etc/apt/{apt.conf.d,preferences.d,sources.list.d,trusted.gpg.d} \
    "$apt_root"/var/lib/apt/lists/partial "$apt_root"/var/cache/apt/archives/partial \
    "$apt_root"/var/lib/dpkg/{info,updates} "$apt_root"/var/log/apt
  run touch "$apt_root/var/lib/dpkg/status"
  "$dry_run" || cat >"$apt_root/etc/apt/apt.conf" <<EOF
Dir::Etc "$apt_root/etc/apt";
Dir::State "$apt_root/var/lib/apt";
Dir::State::status "$apt_root/var/lib/dpkg/status";
Dir::Cache "$apt_root/var/cache/apt";
Dir::Log "$apt_root/var/log/apt";
DPkg::Options:: "--root=$apt_root";
EOF
fi
apt_get=("${as_root[@]}" env "${apt_env[@]}" apt-get)
# Only this repository's index is fetched: the image's other sources are not needed.
this_source_only=(-o "Dir::Etc::sourcelist=$sources" -o Dir::Etc::sourceparts=-
  -o APT::Get::List-Cleanup=0)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "installing $PACKAGE=$PACKAGE_VERSION from $repo"
# Google's key file has been published both armored and binary; gpg --dearmor turns the first
# into a keyring and passes the second through unchanged.
run curl -fsSL --retry 3 -o "$work/apt-key.gpg" "$key_url"
run "${as_root[@]}" mkdir -p "$(dirname "$keyring")" "$(dirname "$sources")"
run "${as_root[@]}" gpg --batch --yes --dearmor -o "$keyring" "$work/apt-key.gpg"
echo "deb [signed-by=$keyring] $repo cloud-sdk main" >"$work/google-cloud-sdk.list"
echo "# google-cloud-sdk.list: $(<"$work/google-cloud-sdk.list")"
run "${as_root[@]}" install -m 0644 "$work/google-cloud-sdk.list" "$sources"
run "${apt_get[@]}" update -qq "${this_source_only[@]}"
if ! "$dry_run"; then
  offered=$("${as_root[@]}" env "${apt_env[@]}" apt-cache madison "$PACKAGE" | awk '{ print $3 }')
  if ! grep -qxF "$PACKAGE_VERSION" <<<"$offered"; then
    log "$PACKAGE $PACKAGE_VERSION (gcloud $GCLOUD_VERSION) is not in $repo" \
      "(it offers: $(paste -sd ' ' <<<"${offered:-nothing}"))."
    log "to move to one it offers: change GCLOUD_VERSION in $0, run make test with that gcloud."
    exit 1
  fi
fi
# A newer google-cloud-cli already installed from apt (CI only) is replaced by the tested one.
run "${apt_get[@]}" install -y -qq --no-install-recommends --allow-downgrades \
  "$PACKAGE=$PACKAGE_VERSION"
"$dry_run" || log "installed: gcloud $GCLOUD_VERSION"
