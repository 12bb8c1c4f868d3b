#!/usr/bin/env bash
# GCE startup script for the hello-world VM.
#
# google-guest-agent runs it as root on every boot; hello-converge.service runs it again when
# hello-metadata-watch.service sees instance metadata change (a redeploy). It converges the VM on
# what the metadata says:
#   1. Debian packages the app needs, installed only when missing;
#   2. a venv with app/requirements.txt (hash-checked), rebuilt only when the pins change;
#   3. the app and its systemd units, rewritten only when their bytes change;
#   4. the service restarted only when something above changed, then health-checked;
#   5. the version it now runs (a digest of the installed files, see `version`) and the metadata
#      ETag it applied, recorded for GET /healthz and for the watcher.
# A boot where nothing changed touches nothing and takes a few seconds. Any failure prints one
# "hello-startup: FAILED ..." line, which the guest agent copies to the serial console.
#
# Subcommands: (none) = what a boot runs; `converge` = one converge (hello-converge.service);
# `watch` = the metadata watcher; `version KEY=FILE...` = the version digest of those files.
set -Eeuo pipefail

readonly METADATA=http://metadata.google.internal/computeMetadata/v1/instance/attributes
readonly PREFIX=/opt/hello
readonly APP_DIR=$PREFIX/app
readonly UNIT_DIR=/etc/systemd/system
readonly SELF=/usr/local/sbin/hello-startup
readonly PACKAGES=(python3-venv nginx)
# What converges have done, kept across reboots: the applied ETag and pending restarts.
readonly STATE_DIR=/var/lib/hello
# One converge at a time: the boot's run, hello-converge.service and a background retry all
# take this lock, and wait for it rather than run beside another converge.
readonly LOCK=/run/hello-converge.lock
# The watcher (unprivileged) asks for a converge by writing a file here; hello-converge.path
# starts hello-converge.service while the directory is not empty.
readonly REQUESTS=/run/hello-converge-requests
# The version the VM serves (GET /healthz), written only once a converge has completed.
readonly VERSION_FILE=$PREFIX/version
# Network steps are retried with backoff (5, 10, 20, 40, 60 s): about 2.5 min of outage.
readonly NET_ATTEMPTS=6
# How long to wait for another apt user (the OS Config agent, apt-daily) to release apt's locks.
readonly APT_LOCK_WAIT=600

# Metadata key -> where a converge installs it. The version digest covers exactly these keys,
# so the version a VM reports names what it runs; vm.py's METADATA_FILES lists the same keys.
declare -rA INSTALLED=(
  [startup-script]=$SELF
  [app-py]=$APP_DIR/app.py
  [app-requirements]=$APP_DIR/requirements.txt
  [app-service]=$UNIT_DIR/hello.service
  [app-watch-service]=$UNIT_DIR/hello-metadata-watch.service
  [app-converge-service]=$UNIT_DIR/hello-converge.service
  [app-converge-path]=$UNIT_DIR/hello-converge.path
  [tls-script]=/usr/local/sbin/hello-tls
  [tls-nginx-site]=/etc/nginx/sites-available/hello
  [tls-nginx-https]=/usr/local/share/hello-tls/nginx-https.conf
  [tls-nginx-hardening]=$UNIT_DIR/nginx.service.d/hello-hardening.conf
  [tls-cert-service]=$UNIT_DIR/hello-cert.service
  [tls-cert-timer]=$UNIT_DIR/hello-cert.timer
  [tls-acme-requirements]=/usr/local/share/hello-tls/acme-requirements.txt
)

log() { echo "hello-startup: $*"; }
fail() {
  log "FAILED: $*" >&2
  exit 1
}
trap 'fail "line $LINENO: \"$BASH_COMMAND\" exited $?"' ERR

# What changed on this run. Flags, not return codes: a function called in an `&&` list runs
# with errexit off, which would let a failed apt-get or pip install go unnoticed.
restart_app=0
reload_units=0
reload_nginx=0
restart_nginx=0

# Raises flag $1 and records it as pending on disk before the change it stands for is made, so
# a converge killed between a change and its restart leaves the restart to the next converge.
mark_pending() {
  printf -v "$1" 1
  if [[ ! -e $STATE_DIR/pending/$1 ]]; then
    mkdir -p "$STATE_DIR/pending"
    touch "$STATE_DIR/pending/$1"
    sync "$STATE_DIR/pending"
  fi
}

# Installs $1 as $2 (mode $3) when the bytes differ, and raises each flag named after that.
install_if_changed() {
  local source=$1 target=$2 mode=$3 flag
  shift 3
  if ! cmp --silent "$source" "$target"; then
    for flag in "$@"; do
      mark_pending "$flag"
    done
    install -D --mode "$mode" "$source" "$target"
    log "updated $target"
  fi
}

# Runs "$@", a command that needs the network or apt's locks, until it succeeds. GCE runs the
# startup script once per boot, so a transient outage must not leave the VM without the app:
# network failures are retried with backoff, a held apt lock is waited for (up to
# APT_LOCK_WAIT), and a hash mismatch fails at once (a tampered download stays tampered).
retry() {
  local what=$1 attempt=1 delay=5 status output lock_since='' started
  shift
  while true; do
    status=0
    started=$SECONDS
    output=$("$@" 2>&1) || status=$?
    if [[ -n $lock_since && $output != *"Could not get lock"* ]]; then
      log "apt lock free after waiting $((started - lock_since)) s"
      lock_since=''
    fi
    if ((status == 0)); then
      # apt-get -q reports each second it waited for the dpkg lock (DPkg::Lock::Timeout).
      if [[ $output == *"Waiting for cache lock"* ]]; then
        log "waited $(grep -c 'Waiting for cache lock' <<<"$output" || true) s for the dpkg lock" \
          "($(grep -m 1 -o 'held by process [^.]*' <<<"$output" || true))"
      fi
      return 0
    fi
    if [[ $output == *"Could not get lock"* ]] && ((SECONDS - ${lock_since:-$SECONDS} < APT_LOCK_WAIT)); then
      if [[ -z $lock_since ]]; then
        lock_since=$SECONDS
        log "waiting for the apt lock: $(grep -m 1 -o 'Could not get lock.*' <<<"$output" || true)"
      fi
      sleep 5
      continue
    fi
    if [[ $output == *"DO NOT MATCH THE HASHES"* ]] || ((attempt >= NET_ATTEMPTS)); then
      printf '%s\n' "$output" >&2
      fail "$what failed (exit $status) after $attempt attempt(s)"
    fi
    log "$what failed (exit $status: $(tail -n 1 <<<"$output")); retry $attempt in $delay s"
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2 > 60 ? 60 : delay * 2))
  done
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
  # DPkg::Lock::Timeout covers dpkg's locks only; `retry` waits out the lists lock of update.
  retry "apt-get update" apt-get update -q -o APT::Update::Error-Mode=any
  mark_pending restart_app
  retry "apt-get install" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends -o DPkg::Lock::Timeout="$APT_LOCK_WAIT" "${missing[@]}"
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
  else
    if [[ ! -f $venv/.complete ]]; then
      log "building venv $venv"
      rm -rf "$venv"
      python3 -m venv "$venv"
      log "installing the pinned requirements with pip (hashes checked)"
      retry "pip install" "$venv/bin/pip" install --quiet --no-cache-dir \
        --disable-pip-version-check --retries 1 --timeout 20 --only-binary=:all: \
        --require-hashes --requirement "$requirements"
      sync
      touch "$venv/.complete"
    fi
    mark_pending restart_app
    ln -sfn "$venv" "$PREFIX/venv"
    log "venv switched to $venv"
  fi
  # Earlier venvs, and any a failed or killed run left half-built.
  find "$PREFIX" -maxdepth 1 -name 'venv-*' ! -path "$venv" -exec rm -rf {} +
}

# Reads every instance attribute in one request, so the files and the ETag recorded for them
# are one consistent snapshot: writes $1/<key> for each key in INSTALLED, and $1/.etag.
fetch_metadata() {
  local staging=$1
  retry "reading instance metadata" curl --silent --show-error --fail --max-time 30 \
    -H 'Metadata-Flavor: Google' --dump-header "$staging/.headers" \
    --output "$staging/.attributes.json" "$METADATA/?recursive=true&alt=json"
  tr -d '\r' <"$staging/.headers" | awk 'tolower($1) == "etag:" { print $2 }' >"$staging/.etag"
  python3 - "$staging" "${!INSTALLED[@]}" <<'EOF'
import json, pathlib, sys

staging, keys = pathlib.Path(sys.argv[1]), sys.argv[2:]
attributes = json.loads((staging / ".attributes.json").read_text())
missing = [key for key in keys if key not in attributes]
if missing:
    sys.exit(f"instance metadata lacks {', '.join(missing)} (vm.py sets them from app/)")
for key in keys:
    (staging / key).write_text(attributes[key], encoding="utf-8", newline="")
EOF
}

# The version digest: sha256 over "KEY SHA256(FILE)" lines sorted by KEY, from KEY=FILE pairs.
# The VM computes it from its installed files; scripts/smoke.sh from the repository's.
version_of() {
  local pair
  for pair in "$@"; do
    printf '%s %s\n' "${pair%%=*}" "$(sha256sum <"${pair#*=}" | cut -d' ' -f1)"
  done | LC_ALL=C sort | sha256sum | cut -c1-16
}

installed_version() {
  local key pairs=()
  for key in "${!INSTALLED[@]}"; do
    pairs+=("$key=${INSTALLED[$key]}")
  done
  version_of "${pairs[@]}"
}

take_lock() {
  exec {lock_fd}>"$LOCK"
  if ! flock --nonblock "$lock_fd"; then
    log "waiting for the converge already running to finish"
    flock "$lock_fd"
  fi
}

converge() {
  take_lock
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT
  log "converging (pid $$)"
  # Requests made so far are answered by the metadata this run reads next.
  rm -f "$REQUESTS"/*
  local flag
  for flag in restart_app reload_units reload_nginx restart_nginx; do
    if [[ -e $STATE_DIR/pending/$flag ]]; then
      log "resuming $flag, left pending by an interrupted converge"
      printf -v "$flag" 1
    fi
  done

  ensure_packages
  id hello &>/dev/null ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin hello
  fetch_metadata "$staging"
  ensure_venv "$staging/app-requirements"
  install_if_changed "$staging/app-requirements" "$APP_DIR/requirements.txt" 0644 restart_app
  install_if_changed "$staging/app-py" "$APP_DIR/app.py" 0644 restart_app
  install_if_changed "$staging/app-service" "$UNIT_DIR/hello.service" 0644 \
    restart_app reload_units
  local unit
  for unit in app-watch-service app-converge-service app-converge-path; do
    install_if_changed "$staging/$unit" "${INSTALLED[$unit]}" 0644 reload_units
  done
  install_if_changed "$staging/startup-script" "$SELF" 0755 reload_units
  # HTTPS (docs/https.md): nginx in front of the app, hello-tls and its units for the certificate.
  install_if_changed "$staging/tls-script" "${INSTALLED[tls-script]}" 0755
  install_if_changed "$staging/tls-acme-requirements" "${INSTALLED[tls-acme-requirements]}" 0644
  for unit in tls-cert-service tls-cert-timer; do
    install_if_changed "$staging/$unit" "${INSTALLED[$unit]}" 0644 reload_units
  done
  install_if_changed "$staging/tls-nginx-hardening" "${INSTALLED[tls-nginx-hardening]}" 0644 \
    reload_units restart_nginx
  for unit in tls-nginx-site tls-nginx-https; do
    install_if_changed "$staging/$unit" "${INSTALLED[$unit]}" 0644 reload_nginx
  done
  prepare_nginx

  # Make what was just installed survive a reset (a power cut) from here on.
  sync
  if ((reload_units)); then
    systemctl daemon-reload
  fi
  systemctl enable --quiet hello.service hello-metadata-watch.service hello-converge.path \
    nginx.service hello-cert.timer
  if ((restart_app)); then
    log "restarting hello.service"
    systemctl restart hello.service
  else
    systemctl start hello.service
  fi
  if ((restart_nginx || reload_nginx)); then
    nginx -t -q
    # A reload lets requests in flight finish; only a changed sandbox needs a new master.
    if ((restart_nginx)); then
      log "restarting nginx.service"
      systemctl restart nginx.service
    else
      log "reloading nginx.service"
      systemctl reload-or-restart nginx.service
    fi
  else
    systemctl start nginx.service
  fi
  wait_healthy
  rm -f "$STATE_DIR/pending/restart_app" "$STATE_DIR/pending/restart_nginx" \
    "$STATE_DIR/pending/reload_nginx"
  # Gets the certificate, or checks it is not yet due, without holding up the converge: until
  # it has one, :80 serves the app.
  systemctl start hello-cert.timer
  systemctl --no-block restart hello-cert.service

  installed_version >"$VERSION_FILE.tmp"
  mv "$VERSION_FILE.tmp" "$VERSION_FILE"
  install -D --mode 0644 "$staging/.etag" "$STATE_DIR/applied-etag"
  sync
  # Started after the ETag is recorded, so the watcher starts from what was applied. Both only
  # request converges: restarting them interrupts none.
  if ((reload_units)); then
    systemctl --no-block restart hello-metadata-watch.service hello-converge.path
  else
    systemctl --no-block start hello-metadata-watch.service hello-converge.path
  fi
  rm -f "$STATE_DIR/pending/reload_units"
  log "serving version $(<"$VERSION_FILE") of metadata $(<"$staging/.etag")" \
    "(converged in ${SECONDS} s)"
}

# nginx's layout for the HTTPS front (app/nginx-hello.conf): our site instead of Debian's default,
# the directories hello-tls activate and the http-01 challenge use, and the ACME client's user.
prepare_nginx() {
  id hello-acme &>/dev/null ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin hello-acme
  install -d -o hello-acme -g hello-acme -m 0755 /var/www/hello-acme
  install -d -m 0755 /etc/nginx/hello-tls
  if [[ $(readlink /etc/nginx/sites-enabled/hello || true) != /etc/nginx/sites-available/hello ]]; then
    mark_pending reload_nginx
    ln -sfn /etc/nginx/sites-available/hello /etc/nginx/sites-enabled/hello
  fi
  if [[ -e /etc/nginx/sites-enabled/default ]]; then
    mark_pending reload_nginx
    rm -f /etc/nginx/sites-enabled/default
    log "removed nginx's default site"
  fi
}

wait_healthy() {
  local attempt
  for attempt in $(seq 1 30); do
    if curl --silent --fail --max-time 2 http://127.0.0.1/healthz >/dev/null; then
      log "serving on :80 (healthy after ${attempt} check(s))"
      return 0
    fi
    sleep 1
  done
  systemctl --no-pager status hello.service nginx.service >&2 || true
  fail "the app is not healthy on :80 after 30 s (journalctl -u hello.service -u nginx.service)"
}

# What a boot runs. GCE runs the startup script once per boot, so when converging fails even
# after the retries above, a transient unit keeps retrying (with backoff) until it converges.
boot() {
  local status=0
  "$BASH" "$0" converge || status=$?
  ((status != 0)) || return 0
  install -D --mode 0755 "$0" /run/hello-startup-retry
  systemd-run --quiet --collect --unit=hello-converge-retry \
    --description="Retry converging the VM until it succeeds" \
    /bin/bash /run/hello-startup-retry retry
  log "retrying in the background (journalctl -u hello-converge-retry)"
  return "$status"
}

retry_in_background() {
  local attempt delay=30
  for ((attempt = 1; ; attempt++)); do
    sleep "$delay"
    log "background retry $attempt"
    if "$BASH" "$0" converge; then
      return 0
    fi
    delay=$((delay * 2 > 600 ? 600 : delay * 2))
  done
}

# Long-polls the instance attributes from the ETag the last converge applied, so a change made
# before the watcher (re)started is seen too; requests a converge for every ETag not yet applied,
# and again every minute while it stays unapplied (a converge that failed is retried).
watch_metadata() {
  local applied requested=NONE since etag headers
  headers=$(mktemp)
  while true; do
    applied=$(cat "$STATE_DIR/applied-etag" 2>/dev/null || echo NONE)
    since=$applied
    [[ $requested == NONE || $requested == "$applied" ]] || since=$requested
    if ! curl --silent --fail --max-time 90 --dump-header "$headers" --output /dev/null \
      -H 'Metadata-Flavor: Google' \
      "$METADATA/?recursive=true&alt=json&wait_for_change=true&timeout_sec=60&last_etag=$since"; then
      sleep 5
      continue
    fi
    etag=$(tr -d '\r' <"$headers" | awk 'tolower($1) == "etag:" { print $2 }')
    # A converge may have completed during the long poll.
    applied=$(cat "$STATE_DIR/applied-etag" 2>/dev/null || echo NONE)
    if [[ -z $etag || $etag == "$applied" ]]; then
      requested=NONE
      continue
    fi
    if [[ $etag != "$requested" ]]; then
      log "instance metadata changed ($applied -> $etag): requesting a converge"
    else
      log "metadata $etag is still not applied: requesting a converge again"
    fi
    echo "$etag" >"$REQUESTS/$etag"
    requested=$etag
  done
}

case ${1:-boot} in
boot) boot ;;
converge) converge ;;
retry) retry_in_background ;;
watch)
  trap - ERR
  watch_metadata
  ;;
version)
  shift
  version_of "$@"
  ;;
*) fail "usage: $0 [boot|converge|retry|watch|version KEY=FILE...]" ;;
esac
