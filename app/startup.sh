#!/usr/bin/env bash
# GCE startup script for the hello-world VM.
#
# google-guest-agent runs it as root on every boot; hello-metadata-watch.service runs it again
# whenever instance metadata changes (a redeploy). It converges the VM on what the metadata says:
#   1. Debian packages the app needs, installed only when missing;
#   2. a venv with app/requirements.txt, rebuilt only when the pins change;
#   3. the app and its systemd units, rewritten only when their bytes change;
#   4. the service restarted only when something above changed, then health-checked.
# A boot where nothing changed touches nothing and takes a few seconds. Any failure prints one
# "hello-startup: FAILED ..." line, which the guest agent copies to the serial console.
#
# `hello-startup watch` is the long-running metadata watcher (see hello-metadata-watch.service).
set -Eeuo pipefail

readonly METADATA=http://metadata.google.internal/computeMetadata/v1/instance/attributes
readonly PREFIX=/opt/hello
readonly APP_DIR=$PREFIX/app
readonly UNIT_DIR=/etc/systemd/system
readonly SELF=/usr/local/sbin/hello-startup
readonly PACKAGES=(python3-venv nginx)

log() { echo "hello-startup: $*"; }
fail() {
  log "FAILED: $*" >&2
  exit 1
}
trap 'fail "line $LINENO: \"$BASH_COMMAND\" exited $?"' ERR

metadata() {
  curl --silent --show-error --fail --retry 5 --retry-connrefused --max-time 30 \
    -H 'Metadata-Flavor: Google' "$METADATA/$1"
}

# What changed on this run. Flags, not return codes: a function called in an `&&` list runs
# with errexit off, which would let a failed apt-get or pip install go unnoticed.
restart_app=0
reload_units=0

# Installs $1 as $2 (mode $3) when the bytes differ, and raises each flag named after that.
install_if_changed() {
  local source=$1 target=$2 mode=$3 flag
  shift 3
  if ! cmp --silent "$source" "$target"; then
    install -D --mode "$mode" "$source" "$target"
    log "updated $target"
    for flag in "$@"; do
      printf -v "$flag" 1
    done
  fi
}

ensure_packages() {
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    log "packages already present: ${PACKAGES[*]}"
    return 0
  fi
  log "installing packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  restart_app=1
}

# The venv lives in a directory named after the hash of its pins, so a change of pins builds a
# fresh venv beside the running one and switches the symlink only once it is complete.
# "Complete" is a marker written after the install has been flushed to disk: a GCE reset is a
# power cut, and one seen here left a venv whose files existed but were empty.
ensure_venv() {
  local requirements=$1 digest venv
  digest=$(sha256sum "$requirements" | cut -c1-16)
  venv=$PREFIX/venv-$digest
  if [[ -f $venv/.complete && $(readlink "$PREFIX/venv") == "$venv" ]]; then
    log "venv up to date: $venv"
    return 0
  fi
  if [[ ! -f $venv/.complete ]]; then
    log "building venv $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check \
      --only-binary=:all: --requirement "$requirements"
    sync
    touch "$venv/.complete"
  fi
  ln -sfn "$venv" "$PREFIX/venv"
  find "$PREFIX" -maxdepth 1 -name 'venv-*' ! -path "$venv" -exec rm -rf {} +
  log "venv switched to $venv"
  restart_app=1
}

converge() {
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT

  ensure_packages
  id hello &>/dev/null ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin hello

  metadata app-py >"$staging/app.py"
  metadata app-requirements >"$staging/requirements.txt"
  metadata app-service >"$staging/hello.service"
  metadata app-watch-service >"$staging/hello-metadata-watch.service"
  metadata startup-script >"$staging/hello-startup"

  ensure_venv "$staging/requirements.txt"
  install_if_changed "$staging/app.py" "$APP_DIR/app.py" 0644 restart_app
  install_if_changed "$staging/hello.service" "$UNIT_DIR/hello.service" 0644 \
    restart_app reload_units
  install_if_changed "$staging/hello-metadata-watch.service" \
    "$UNIT_DIR/hello-metadata-watch.service" 0644 reload_units
  install_if_changed "$staging/hello-startup" "$SELF" 0755 reload_units

  # Make what was just installed survive a reset (a power cut) from here on.
  sync
  if ((reload_units)); then
    systemctl daemon-reload
  fi
  systemctl enable --quiet hello.service hello-metadata-watch.service
  if ((restart_app)); then
    log "restarting hello.service"
    systemctl restart hello.service
  else
    systemctl start hello.service
  fi
  # HTTPS: nginx in front of the app and the static IP's certificate (app/hello-tls.sh).
  metadata tls-script >"$staging/hello-tls"
  install_if_changed "$staging/hello-tls" /usr/local/sbin/hello-tls 0755
  /usr/local/sbin/hello-tls install
  # The watcher may be the one that started us: never wait on it.
  if ((reload_units)); then
    systemctl --no-block restart hello-metadata-watch.service
  else
    systemctl --no-block start hello-metadata-watch.service
  fi
  wait_healthy
}

wait_healthy() {
  local attempt
  for attempt in $(seq 1 30); do
    if curl --silent --fail --max-time 2 http://127.0.0.1/healthz >/dev/null; then
      log "serving on :80 (healthy after ${attempt} check(s); converged in ${SECONDS} s)"
      return 0
    fi
    sleep 1
  done
  systemctl --no-pager status hello.service >&2 || true
  fail "hello.service is not healthy on :80 after 30 s (journalctl -u hello.service)"
}

# Long-polls the instance attributes; on a new ETag, runs the startup scripts the way a boot does.
watch_metadata() {
  local etag=NONE headers new_etag
  headers=$(mktemp)
  while true; do
    if ! curl --silent --fail --max-time 90 --dump-header "$headers" --output /dev/null \
      -H 'Metadata-Flavor: Google' \
      "$METADATA/?recursive=true&wait_for_change=true&timeout_sec=60&last_etag=$etag"; then
      sleep 5
      continue
    fi
    new_etag=$(tr -d '\r' <"$headers" | awk 'tolower($1) == "etag:" { print $2 }')
    if [[ $etag != NONE && -n $new_etag && $new_etag != "$etag" ]]; then
      log "instance metadata changed ($etag -> $new_etag): re-running startup scripts"
      systemctl --no-block restart google-startup-scripts.service
    fi
    etag=${new_etag:-NONE}
  done
}

case ${1:-converge} in
converge) converge ;;
watch)
  trap - ERR
  watch_metadata
  ;;
*) fail "usage: $0 [converge|watch]" ;;
esac
