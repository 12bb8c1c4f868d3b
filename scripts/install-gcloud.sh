#!/usr/bin/env bash
# Installs the gcloud CLI this repo is tested with, from Google's versioned archive, and nothing
# when that version is already on PATH. This file is the one place the gcloud version is stated:
# CI installs it here, and tests/pipeline/test_circleci_config.py checks it is the gcloud the
# offline tests ran.
#
# Why an archive and not Google's gcloud container image: that registry deletes numbered tags
# after 365 days (cloud-sdk-docker's retention policy), so a pinned image stops existing; the
# versioned archives at dl.google.com stay. The archive's SHA-256 is checked before unpacking.
#
#   scripts/install-gcloud.sh     (root, or a user with passwordless sudo, as in CI)
#
# Settings (environment): GCLOUD_PREFIX (default /opt) gets google-cloud-sdk/; GCLOUD_BIN_DIR
# (default /usr/local/bin) gets the gcloud link; GCLOUD_ARCHIVE_URL overrides the download.
set -euo pipefail

readonly GCLOUD_VERSION=528.0.0
# sha256sum of google-cloud-cli-528.0.0-linux-x86_64.tar.gz. Google publishes no checksum for the
# Linux archives and none was found in a public source, so it must be recorded once from a
# trusted download (`curl -fsSLO URL && sha256sum FILE`). Until then this script refuses to
# install: an unchecked download is not an option.
readonly GCLOUD_SHA256=${GCLOUD_SHA256:-}

archive=google-cloud-cli-$GCLOUD_VERSION-linux-x86_64.tar.gz
url=${GCLOUD_ARCHIVE_URL:-https://dl.google.com/dl/cloudsdk/channels/rapid/downloads/$archive}
prefix=${GCLOUD_PREFIX:-/opt}
bin_dir=${GCLOUD_BIN_DIR:-/usr/local/bin}

log() { printf 'install-gcloud: %s\n' "$*" >&2; }

if [[ ${1:-} == --version ]]; then
  echo "$GCLOUD_VERSION"
  exit 0
fi

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

if [[ ! $GCLOUD_SHA256 =~ ^[0-9a-f]{64}$ ]]; then
  log "no SHA-256 recorded for $archive; refusing to install an unchecked download."
  log "record it in GCLOUD_SHA256 in $0: curl -fsSLO $url && sha256sum $archive"
  exit 1
fi

# Writes under the prefix need root; CI's user has passwordless sudo.
as_root=()
if [[ $(id -u) -ne 0 ]]; then
  sudo -n true 2>/dev/null || {
    log "need root (or passwordless sudo) to install into $prefix and $bin_dir"
    exit 1
  }
  as_root=(sudo)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "downloading gcloud $GCLOUD_VERSION from $url"
curl -fsSL --retry 3 -o "$work/$archive" "$url"
if ! printf '%s  %s\n' "$GCLOUD_SHA256" "$work/$archive" | sha256sum --check --status; then
  log "checksum mismatch for $archive: expected $GCLOUD_SHA256, got $(sha256sum "$work/$archive" | cut -d' ' -f1)"
  exit 1
fi
"${as_root[@]}" mkdir -p "$prefix" "$bin_dir"
"${as_root[@]}" rm -rf "$prefix/google-cloud-sdk"
"${as_root[@]}" tar -xzf "$work/$archive" -C "$prefix"
"${as_root[@]}" ln -sfn "$prefix/google-cloud-sdk/bin/gcloud" "$bin_dir/gcloud"
log "installed: $("$bin_dir/gcloud" version 2>/dev/null | head -n 1)"
