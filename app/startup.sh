#!/usr/bin/env bash
# GCE startup script for the hello-world VM.
#
# google-guest-agent runs it as root on every boot; hello-converge.service runs it again when
# hello-metadata-watch.service sees instance metadata change (a redeploy). It converges the VM on
# what the metadata says:
#   1. Debian packages the app needs, installed only when missing (an interrupted dpkg repaired);
#   2. a new release of the app (app.py, the hash-checked venv, the unit) only when it differs
#      from the one serving: started in the idle slot beside the serving one, proven healthy
#      there, then given traffic by a graceful nginx reload with the old release as nginx's
#      backup, watched, and only then made the serving release. A release that fails to import,
#      to start, its health check or the watch never serves alone, and is recorded as refused;
#   3. the other files (units, nginx, HTTPS), rewritten only when their bytes change;
#   4. the version it now runs (a digest of the deployed files, see `version`) and the metadata
#      ETag it applied, recorded for GET /healthz and for the watcher, once /healthz answers 200
#      with that version through the front that serves (HTTP, or HTTPS once it has a certificate).
# A boot where nothing changed touches nothing and takes a few seconds. Any failure prints one
# "hello-startup: FAILED ..." line on the serial console (docs/operations.md).
#
# Subcommands: (none) = what a boot runs; `converge` = one converge (hello-converge.service);
# `watch` = the metadata watcher; `version KEY=FILE...` = the version digest of those files;
# `healthy URL VERSION` = whether URL answers 200 with that version (the converge's check);
# `upstream PORT [BACKUP]` = nginx's upstream block for the app; `debian-sources DIR` = links in
# DIR to the apt sources a package install refreshes; `venv DIR REQUIREMENTS` = a venv with
# those hash-checked pins (hello-tls builds certbot's with it).
set -Eeuo pipefail

# HELLO_METADATA, HELLO_STATE_DIR, HELLO_REQUESTS and HELLO_LOCK point the host tests at local
# stand-ins.
readonly METADATA=${HELLO_METADATA:-http://metadata.google.internal/computeMetadata/v1/instance/attributes}
readonly PREFIX=/opt/hello
# The two release slots: hello@<port>.service serves $PREFIX/slot-<port> on 127.0.0.1:<port>.
readonly SLOTS=(8081 8082)
# -> the slot nginx sends traffic to; a boot starts only that slot's unit.
readonly SERVING=$PREFIX/serving
# nginx's upstream for the app, written by the converge: the serving slot, and during a switch
# the previous one as `backup`, so a request the new release drops is retried on the old one.
readonly UPSTREAM=/etc/nginx/conf.d/hello-upstream.conf
readonly UNIT_DIR=/etc/systemd/system
readonly SELF=/usr/local/sbin/hello-startup
readonly PACKAGES=(python3 nginx)
# uv builds the venvs (the app's, and hello-tls's for certbot): one binary, taken from its wheel
# on PyPI, pinned by URL and sha256 like the app's own pins. `uv pip install --require-hashes` is
# pip's hash-checking mode: every pin needs a matching hash, or nothing is installed. It installs
# the app's pins several times faster than pip (whose own start-up and resolver are Python), and
# needs neither pip nor python3-venv on the VM. To update: the wheel's URL and sha256 from
# https://pypi.org/simple/uv/ (the manylinux x86_64 one).
readonly UV_VERSION=0.13.9
readonly UV_WHEEL=https://files.pythonhosted.org/packages/3d/aa/26d64642d808de4a652579ef950d7cd2d37f080a8babf9c67c6b75fc4c3f/uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
readonly UV_WHEEL_SHA256=d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19
# HELLO_UV_DIR puts uv elsewhere for the host tests, which run hello-tls without a VM.
readonly UV=${HELLO_UV_DIR:-/usr/local/lib/hello}/uv-$UV_VERSION
# Where apt's sources are listed (HELLO_APT_ETC points the host tests at a copy).
readonly APT_ETC=${HELLO_APT_ETC:-/etc/apt}
# What converges have done, kept across reboots: the applied ETag and pending restarts.
readonly STATE_DIR=${HELLO_STATE_DIR:-/var/lib/hello}
# One converge at a time: the boot's run, hello-converge.service and a background retry all
# take this lock, and wait for it rather than run beside another converge.
readonly LOCK=${HELLO_LOCK:-/run/hello-converge.lock}
# The watcher (unprivileged) asks for a converge by writing a file here; hello-converge.path
# starts hello-converge.service while the directory is not empty.
readonly REQUESTS=${HELLO_REQUESTS:-/run/hello-converge-requests}
# The last release the VM refused, and why (GET /healthz reports it; the watcher backs off).
readonly REFUSED=$STATE_DIR/refused.json
# How long a new release may take to answer its first health check in its slot.
readonly START_DEADLINE=180
# How long a new release serves, with the old one as nginx's backup, before it is kept: a crash
# or failing health checks in this window roll the VM back to the old release by itself.
readonly WATCH_SECONDS=30
# Retrying a refused release: after 5 min, doubling to at most 4 h, unless the metadata changes.
readonly RETRY_FIRST=300 RETRY_MAX=14400
# Network steps are retried with backoff (5, 10, 20, 40, 60 s): about 2.5 min of outage.
readonly NET_ATTEMPTS=6
# How long to wait for another apt user (the OS Config agent, apt-daily) to release apt's locks.
readonly APT_LOCK_WAIT=600

# Metadata key -> where a converge installs it. The version digest covers exactly these keys,
# so the version a VM reports names what it runs; vm.py's METADATA_FILES lists the same keys.
declare -rA INSTALLED=(
  [startup-script]=$SELF
  [app-py]=$SERVING/app.py
  [app-requirements]=$SERVING/requirements.txt
  [app-service]=$UNIT_DIR/hello@.service
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
# with errexit off, which would let a failed apt-get or uv install go unnoticed.
reload_units=0
reload_nginx=0
restart_nginx=0
# Exit status of a converge that refused a release: the VM is fine (the old release serves), and
# retrying the same bytes at once would fail the same way, so no background retry follows. The
# converge exits with it rather than returning it, which the ERR trap would report as a failure.
readonly REFUSED_STATUS=3

# Raises flag $1 and records it as pending on disk before the change it stands for is made, so
# a converge killed between a change and its reload leaves the reload to the next converge.
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
    if [[ -n $lock_since && $output != *"Could not get lock"* && $output != *"lock was locked"* ]]; then
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
    if [[ $output == *"Could not get lock"* || $output == *"lock was locked by another process"* ]] &&
      ((SECONDS - ${lock_since:-$SECONDS} < APT_LOCK_WAIT)); then
      if [[ -z $lock_since ]]; then
        lock_since=$SECONDS
        log "waiting for the apt lock: $(grep -m 1 -oE '(Could not get lock|dpkg frontend lock).*' <<<"$output" || true)"
      fi
      sleep 5
      continue
    fi
    if [[ $output == *"Hash mismatch for"* ]] || ((attempt >= NET_ATTEMPTS)); then
      printf '%s\n' "$output" >&2
      fail "$what failed (exit $status) after $attempt attempt(s)"
    fi
    log "$what failed (exit $status: $(tail -n 1 <<<"$output")); retry $attempt in $delay s"
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2 > 60 ? 60 : delay * 2))
  done
}


# A reset during an install leaves dpkg interrupted (packages unpacked but not configured), and
# apt-get then refuses every install until `dpkg --configure -a` has finished the job.
repair_dpkg() {
  if [[ -n $(dpkg --audit 2>/dev/null) ]]; then
    log "dpkg was interrupted: finishing it with dpkg --configure -a"
    retry "waiting for dpkg's lock" wait_for_dpkg_lock
    retry "dpkg --configure -a" env DEBIAN_FRONTEND=noninteractive \
      dpkg --force-confdef --force-confold --configure -a
  fi
}

# dpkg gives up at once while another apt user (the OS Config agent, unattended-upgrades) holds
# its lock. apt-get waits for it (DPkg::Lock::Timeout) and only then checks dpkg's state, which
# with an interrupted dpkg is the refusal this lets through: the lock was free to take.
wait_for_dpkg_lock() {
  local output status=0
  output=$(apt-get install -q -y -o DPkg::Lock::Timeout="$APT_LOCK_WAIT" 2>&1) || status=$?
  printf '%s\n' "$output"
  ((status == 0)) || [[ $output == *"dpkg was interrupted"* ]]
}

# The apt sources to refresh: those naming Debian's own hosts, where every package we install
# comes from. GCE's image also lists Google's repositories (packages.cloud.google.com); an
# outage there must not hold up nginx and the app. Prints a directory of links to those files.
debian_sources() {
  local dir=$1 file
  mkdir -p "$dir"
  for file in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list \
    "$APT_ETC"/sources.list.d/*.sources; do
    if [[ -f $file ]] && grep -qE '^[^#]*://([a-z0-9.-]+\.)?debian\.org(/|[[:space:]])' "$file"; then
      ln -sfn "$file" "$dir/$(basename "$file")"
    fi
  done
  echo "$dir"
}

ensure_packages() {
  local missing=() pkg sources
  repair_dpkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    log "packages already present: ${PACKAGES[*]}"
    return 0
  fi
  log "installing packages: ${missing[*]}"
  sources=$(debian_sources "$staging/apt-sources")
  # DPkg::Lock::Timeout covers dpkg's locks only; `retry` waits out the lists lock of update.
  # List-Cleanup=0 keeps the other sources' lists, which this update does not refresh. No
  # translated descriptions: nothing here reads them, and parsing them is part of the update's
  # cost on a small VM.
  retry "apt-get update" apt-get update -q -o APT::Update::Error-Mode=any \
    -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$sources" \
    -o APT::Get::List-Cleanup=0 -o Acquire::Languages=none
  retry "apt-get install" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends -o DPkg::Lock::Timeout="$APT_LOCK_WAIT" "${missing[@]}"
}

# uv from its pinned wheel, once: the binary is the wheel's only executable.
ensure_uv() {
  [[ -x $UV ]] && return 0
  local download
  download=$(mktemp -d)
  log "installing uv $UV_VERSION from PyPI (sha256 checked)"
  retry "downloading uv" curl --silent --show-error --fail --location --max-time 120 \
    --output "$download/uv.whl" "$UV_WHEEL"
  if ! sha256sum --check --status <<<"$UV_WHEEL_SHA256  $download/uv.whl"; then
    rm -rf "$download"
    fail "uv's wheel from $UV_WHEEL does not match its pinned sha256"
  fi
  if ! python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
    "$download/uv.whl" "uv-$UV_VERSION.data/scripts/uv" >"$download/uv" ||
    ! install -D --mode 0755 "$download/uv" "$UV"; then
    fail "could not install uv from its wheel"
  fi
  rm -rf "$download"
}

# A venv at $1 with the hash-checked pins of $2, unless it is complete already. "Complete" is a
# marker written after the install has been flushed to disk: a GCE reset is a power cut, and one
# seen here left a venv whose files existed but were empty. The venv gets no installer of its
# own (the app never needs one at run time); bytecode is compiled now, since the app's user
# cannot write it next to the root-owned sources.
build_venv() {
  local venv=$1 requirements=$2
  if [[ -f $venv/.complete ]]; then
    log "venv up to date: $venv"
    return 0
  fi
  log "building venv $venv"
  local started=$SECONDS
  rm -rf "$venv"
  ensure_uv
  # No cache (the converge's unit has no writable home) and explicit checks: this may run where
  # errexit is off (prepare_release runs it as a condition's child).
  "$UV" venv --quiet --no-config --no-cache --no-python-downloads \
    --python "$(command -v python3)" "$venv" || fail "uv could not create the venv $venv"
  log "installing the pinned requirements with uv (hashes checked)"
  # --system-certs: the OS's CA store, as curl and apt use (uv's own is a built-in copy of
  # Mozilla's), so a proxy a company's CA signs works as it does for them.
  retry "uv pip install" env UV_HTTP_TIMEOUT=20 "$UV" pip install --quiet --no-config --no-cache \
    --system-certs --python "$venv/bin/python" --only-binary :all: --require-hashes \
    --compile-bytecode --requirement "$requirements"
  sync
  touch "$venv/.complete" || fail "could not mark $venv complete"
  log "venv built in $((SECONDS - started)) s: $venv"
}

# A venv lives in a directory named after the hash of its pins, shared by the releases with
# those pins; the serving release's and the previous one's are kept, so going back is instant.
# Sets $venv.
ensure_venv() {
  local digest
  digest=$(sha256sum "$1" | cut -c1-16)
  venv=$PREFIX/venv-$digest
  build_venv "$venv" "$1"
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

# The version of the release in $1 (a staging directory holding every key of INSTALLED).
staged_version() {
  local key pairs=()
  for key in "${!INSTALLED[@]}"; do
    pairs+=("$key=$1/$key")
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


# --- releases: two slots behind nginx -------------------------------------------------------

serving_slot() {
  local target
  target=$(readlink "$SERVING" 2>/dev/null) || return 0
  echo "${target##*-}"
}

other_slot() {
  if [[ $1 == "${SLOTS[0]}" ]]; then echo "${SLOTS[1]}"; else echo "${SLOTS[0]}"; fi
}

# Whether the staged app (app.py, pins, unit) differs from the release in slot $1.
release_differs() {
  local dir=$PREFIX/slot-$1
  [[ -n $1 && -f $dir/.complete ]] || return 0
  ! cmp --silent "$staging/app-py" "$dir/app.py" ||
    ! cmp --silent "$staging/app-requirements" "$dir/requirements.txt" ||
    ! cmp --silent "$staging/app-service" "$dir/hello.service" ||
    ! cmp --silent "$staging/app-service" "$UNIT_DIR/hello@.service"
}

# GET $1 answers 200 with version $2: the app itself, never a redirect (curl follows none) or
# an error page. Status 1: something answered, but not that; 2: nothing answered. HTTPS is
# checked for the app's answer, not the certificate: hello-tls checks that. Sets $answered.
healthy() {
  local url=$1 version=$2 answer
  answered=''
  answer=$(curl --silent --insecure --max-time 5 --write-out '\n%{http_code}' "$url") || return 2
  answered=${answer##*$'\n'}
  [[ $answered == 200 ]] || return 1
  [[ ${answer%$'\n'*} =~ \"version\":\ ?\"$version\" ]] || return 1
}

# The fronts nginx serves the app on: :80, and :443 once hello-tls has activated a certificate.
front_healthy() {
  healthy http://127.0.0.1/healthz "$1" || return 1
  [[ ! -e /etc/nginx/hello-tls/https.conf ]] || healthy https://127.0.0.1/healthz "$1"
}

# Why the release in slot $1 is not serving, from its unit's log since $2 (epoch seconds).
failure_of() {
  local slot=$1 since=$2 journal line
  journal=$(journalctl --no-pager -o cat -u "hello@$slot.service" --since "@$since" 2>/dev/null ||
    true)
  # A Python exception's last line says most; else the unit's last word.
  line=$(grep -E '^[A-Za-z_.]+(Error|Exception)\b' <<<"$journal" | tail -n 1 || true)
  [[ -n $line ]] || line=$(grep -v '^[[:space:]]' <<<"$journal" | tail -n 1 || true)
  echo "${line:-nothing logged} (journalctl -u hello@$slot.service)"
}

restarts_of() { systemctl show -P NRestarts "hello@$1.service"; }

# Starts the release laid out in slot $1 and waits until it answers /healthz with version $2 on
# its own port, before nginx sends it anything. Sets $reason when it does not.
start_release() {
  local slot=$1 version=$2 since=$EPOCHSECONDS deadline=$((SECONDS + START_DEADLINE)) wrong=0
  local status
  systemctl reset-failed "hello@$slot.service" 2>/dev/null || true
  systemctl start --no-block "hello@$slot.service"
  while true; do
    status=0
    healthy "http://127.0.0.1:$slot/healthz" "$version" || status=$?
    ((status != 0)) || break
    if (($(restarts_of "$slot") > 0)); then
      reason="it did not start: $(failure_of "$slot" "$since")"
      return 1
    fi
    # Answering, but not healthy: five answers in a row is a verdict, not a slow start.
    if ((status == 1 && ++wrong >= 5)); then
      reason="its /healthz answered ${answered:-?} instead of 200 with version $version"
      return 1
    fi
    ((status == 1)) || wrong=0
    if ((SECONDS > deadline)); then
      reason="no answer on 127.0.0.1:$slot within $START_DEADLINE s: $(failure_of "$slot" "$since")"
      return 1
    fi
    sleep 1
  done
  log "release $version started in slot $slot (healthy after $((EPOCHSECONDS - since)) s)"
}

# Watches the release in slot $1 while it takes traffic: a restart, or three failed health
# checks in a row, within WATCH_SECONDS. Sets $reason when it fails.
watch_release() {
  local slot=$1 version=$2 since=$EPOCHSECONDS failures=0
  while ((EPOCHSECONDS - since < WATCH_SECONDS)); do
    if (($(restarts_of "$slot") > 0)); then
      reason="it crashed while serving: $(failure_of "$slot" "$since")"
      return 1
    fi
    if healthy "http://127.0.0.1:$slot/healthz" "$version"; then
      failures=0
    elif ((++failures >= 3)); then
      reason="its health check failed 3 times in a row while serving"
      return 1
    fi
    sleep 2
  done
}

# The workers of nginx's master $1 (its children): after a reload, the old configuration's.
nginx_workers() { cat "/proc/$1/task/$1/children" 2>/dev/null || true; }

# Waits, at most 30 s, until processes $@ have exited: nginx's reload only signals the master,
# and the workers of the old configuration accept connections until they exit.
wait_exited() {
  local pid deadline=$((EPOCHSECONDS + 30))
  for pid in "$@"; do
    while [[ -e /proc/$pid ]] && ((EPOCHSECONDS < deadline)); do sleep 0.2; done
  done
}

# nginx's upstream for the app: slot $1, and slot $2 (if given) as the backup nginx retries a
# request on when the first drops it. max_fails=0: neither is ever marked unavailable, so every
# request tries the serving slot, then the backup. With nginx's default (one failure marks a
# server down for 10 s), a release crash-looping during its watch plus one dropped connection to
# the backup leaves no live server, and nginx answers 502 at once
# (https://nginx.org/en/docs/http/ngx_http_upstream_module.html#max_fails).
upstream_conf() {
  echo "# Written by hello-startup: the release slot nginx sends the app's requests to."
  echo "upstream hello_app {"
  echo "    server 127.0.0.1:$1 max_fails=0;"
  if [[ -n ${2:-} ]]; then echo "    server 127.0.0.1:$2 backup max_fails=0;"; fi
  echo "    # Reuse connections to gunicorn instead of one TCP handshake per request, closing idle"
  echo "    # ones before gunicorn does (its --keep-alive is 75 s, app/hello@.service)."
  echo "    keepalive 8;"
  echo "    keepalive_timeout 60s;"
  echo "}"
}

# Points nginx at slot $1 (backup $2), reloading it when that changed and it runs: a reload lets
# requests in flight finish. Not when this converge restarts or reloads nginx next anyway (its
# site changed; a first boot's nginx still serves Debian's default site): a reload here would
# load the new site while the old one's workers still take connections, so for a moment answers
# would alternate between the two, and then load it again.
route_to() {
  upstream_conf "$@" >"$UPSTREAM.new"
  if cmp --silent "$UPSTREAM.new" "$UPSTREAM"; then
    rm -f "$UPSTREAM.new"
    return 0
  fi
  mv "$UPSTREAM.new" "$UPSTREAM"
  if ((!restart_nginx && !reload_nginx)) && systemctl --quiet is-active nginx.service; then
    nginx -t -q
    local old
    old=$(nginx_workers "$(systemctl show -P MainPID nginx.service)")
    systemctl reload nginx.service
    # The front check that follows must reach the new configuration's workers.
    # shellcheck disable=SC2086 # one PID per word
    wait_exited $old
  fi
}

# Lays out the staged app as a release in slot $1 (version $2): its files, its venv, its version.
# Sets $reason and fails when its venv cannot be built (pins PyPI does not match, after the
# network retries): a release like any other that cannot start.
prepare_release() {
  local slot=$1 version=$2 dir=$PREFIX/slot-$1 status=0
  systemctl stop "hello@$slot.service" 2>/dev/null || true
  rm -rf "$dir"
  # In a child (errexit stays on there, unlike in a `||` list), so `fail` ends only this step.
  ensure_venv "$staging/app-requirements" &
  wait "$!" || status=$?
  if ((status != 0)); then
    reason="its venv could not be built from app/requirements.txt (see uv's output above)"
    return 1
  fi
  ensure_venv "$staging/app-requirements" >/dev/null
  install -d --mode 0755 "$dir"
  ln -s "$venv" "$dir/venv"
  install --mode 0644 "$staging/app-py" "$dir/app.py"
  install --mode 0644 "$staging/app-requirements" "$dir/requirements.txt"
  install --mode 0644 "$staging/app-service" "$dir/hello.service"
  echo "$version" >"$dir/version"
  sync
  touch "$dir/.complete"
}

# Records that version $1 (metadata ETag $3) was refused for reason $2, with the time after
# which it may be tried again: RETRY_FIRST, doubling with each refusal of the same version.
refuse() {
  local version=$1 why=$2 etag=$3 attempts=1 previous delay
  previous=$(cat "$STATE_DIR/refused-version" 2>/dev/null || true)
  if [[ ${previous%% *} == "$version" ]]; then
    attempts=$((${previous##* } + 1))
  fi
  delay=$((RETRY_FIRST << (attempts - 1)))
  ((delay <= RETRY_MAX)) || delay=$RETRY_MAX
  python3 - "$REFUSED" "$version" "$why" "$((EPOCHSECONDS + delay))" <<'EOF'
import json, sys

path, version, reason, retry_after = sys.argv[1:]
with open(path + ".tmp", "w") as out:
    json.dump({"version": version, "reason": reason, "retryAfter": int(retry_after)}, out)
EOF
  chmod 0644 "$REFUSED.tmp"
  mv "$REFUSED.tmp" "$REFUSED"
  echo "$version $attempts" >"$STATE_DIR/refused-version"
  echo "$etag $((EPOCHSECONDS + delay))" >"$STATE_DIR/refused-etag"
  sync "$STATE_DIR"
  log "FAILED: release $version refused: $why; serving ${serving_version:-nothing} (retry in" \
    "$((delay / 60)) min, or at the next metadata change)" >&2
}

# Whether version $1 was refused and its retry time has not come.
refused_recently() {
  local version attempts etag until
  read -r version attempts 2>/dev/null <"$STATE_DIR/refused-version" || return 1
  read -r etag until 2>/dev/null <"$STATE_DIR/refused-etag" || return 1
  [[ $version == "$1" ]] && ((EPOCHSECONDS < until))
}

forget_refusal() {
  rm -f "$REFUSED" "$STATE_DIR/refused-version" "$STATE_DIR/refused-etag"
}

# Venvs no slot uses, and any a failed or killed run left half-built.
prune_venvs() {
  local keep=() slot
  for slot in "${SLOTS[@]}"; do
    keep+=("$(readlink -f "$PREFIX/slot-$slot/venv" 2>/dev/null || true)")
  done
  local venv
  for venv in "$PREFIX"/venv-*; do
    [[ -e $venv ]] || continue
    [[ " ${keep[*]} " == *" $venv "* ]] || rm -rf "$venv"
  done
}

# The layout before release slots: one hello.service serving /opt/hello/app on :8080.
retire_single_slot_layout() {
  if [[ -e $UNIT_DIR/hello.service ]]; then
    systemctl disable --now --no-reload --quiet hello.service || true
    rm -f "$UNIT_DIR/hello.service"
    rm -rf "$PREFIX/app" "$PREFIX/venv" "$PREFIX/version"
    mark_pending reload_units
    log "retired the single-slot hello.service"
  fi
}

# The units and script that deliver the next redeploy: installed even when this converge's
# release is refused on a VM with none serving yet, so a fixed deploy still reaches it.
install_converge_units() {
  local unit
  for unit in app-watch-service app-converge-service app-converge-path; do
    install_if_changed "$staging/$unit" "${INSTALLED[$unit]}" 0644 reload_units
  done
  install_if_changed "$staging/startup-script" "$SELF" 0755 reload_units
}

# After a refusal on a VM with no earlier release: the watcher runs, so a fix is delivered.
keep_watching() {
  install_converge_units
  if ((reload_units)); then systemctl daemon-reload; fi
  systemctl enable --now --no-reload --quiet hello-metadata-watch.service hello-converge.path
}

converge() {
  take_lock
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT
  log "converging (pid $$)"
  # Requests made so far are answered by the metadata this run reads next.
  rm -f "$REQUESTS"/*
  local flag
  for flag in reload_units reload_nginx restart_nginx; do
    if [[ -e $STATE_DIR/pending/$flag ]]; then
      log "resuming $flag, left pending by an interrupted converge"
      printf -v "$flag" 1
    fi
  done

  ensure_packages
  # Here, not only with a new venv: hello-cert builds certbot's venv with it, unprivileged.
  ensure_uv
  id hello &>/dev/null ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin hello
  fetch_metadata "$staging"
  local version serving new='' reason=''
  version=$(staged_version "$staging")
  serving=$(serving_slot)
  serving_version=$(cat "$PREFIX/slot-$serving/version" 2>/dev/null || true)
  install -d --mode 0755 "$STATE_DIR"

  # A new release proves itself in the idle slot before anything else of this version changes.
  if release_differs "$serving"; then
    if refused_recently "$version"; then
      log "release $version was refused before ($(cat "$REFUSED")); not retrying it before" \
        "its retry time unless the metadata changes"
      if [[ -n $serving ]]; then systemctl start "hello@$serving.service"; else keep_watching; fi
      exit "$REFUSED_STATUS"
    fi
    new=$(other_slot "$serving")
    log "new release $version: preparing slot $new${serving:+ beside slot $serving}"
    if ! prepare_release "$new" "$version"; then
      refuse "$version" "$reason" "$(<"$staging/.etag")"
      [[ -n $serving ]] || keep_watching
      exit "$REFUSED_STATUS"
    fi
    install_if_changed "$staging/app-service" "$UNIT_DIR/hello@.service" 0644 reload_units
    if ((reload_units)); then systemctl daemon-reload; fi
    if ! start_release "$new" "$version"; then
      systemctl stop "hello@$new.service" || true
      if [[ -n $serving ]]; then
        install --mode 0644 "$PREFIX/slot-$serving/hello.service" "$UNIT_DIR/hello@.service"
        systemctl daemon-reload
      fi
      refuse "$version" "$reason" "$(<"$staging/.etag")"
      [[ -n $serving ]] || keep_watching
      exit "$REFUSED_STATUS"
    fi
  fi

  local unit
  install_converge_units
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
  # --no-reload everywhere: enable and disable otherwise reload all of systemd's configuration
  # (systemd's systemctl-enable.c), seconds of a small VM's CPU each time, at every converge. Their
  # links matter only at the next boot; unit files a converge changed are reloaded above.
  systemctl enable --no-reload --quiet hello-metadata-watch.service hello-converge.path \
    hello-cert.timer
  # Debian's package enables nginx.service when it installs it. Enabling it again is not free:
  # nginx has an init script too, so systemctl runs update-rc.d (Perl) every time: seconds of a
  # small VM's CPU (docs/vm-converge.md).
  [[ $(systemctl is-enabled nginx.service 2>/dev/null) == enabled ]] ||
    systemctl enable --no-reload --quiet nginx.service
  if [[ -n $new ]]; then
    route_to "$new" "$serving"
  else
    systemctl start "hello@$serving.service"
    route_to "$serving"
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
    # Done: from here on (a rollback, the switch after the watch) route_to reloads nginx itself.
    restart_nginx=0 reload_nginx=0
  else
    systemctl start nginx.service
  fi

  if [[ -n $new ]]; then
    # Serving now, with the old release as nginx's backup: keep it only if it stays healthy.
    if ! wait_front_healthy "$version" || { [[ -n $serving ]] && ! watch_release "$new" "$version"; }; then
      if [[ -z $serving ]]; then
        fail "release $version is not healthy and there is no earlier release to go back to: $reason"
      fi
      route_to "$serving"
      systemctl stop "hello@$new.service" || true
      install --mode 0644 "$PREFIX/slot-$serving/hello.service" "$UNIT_DIR/hello@.service"
      systemctl daemon-reload
      log "rolled back to release $serving_version in slot $serving"
      refuse "$version" "$reason" "$(<"$staging/.etag")"
      exit "$REFUSED_STATUS"
    fi
    ln -sfn "$PREFIX/slot-$new" "$SERVING.new"
    mv -T "$SERVING.new" "$SERVING"
    sync
    systemctl enable --no-reload --quiet "hello@$new.service"
    route_to "$new"
    if [[ -n $serving ]]; then
      systemctl disable --now --no-reload --quiet "hello@$serving.service"
      log "release $version replaced $serving_version (slot $serving stopped, kept for going back)"
    fi
    retire_single_slot_layout
    prune_venvs
  else
    if [[ $serving_version != "$version" ]]; then
      echo "$version" >"$PREFIX/slot-$serving/version.new"
      mv "$PREFIX/slot-$serving/version.new" "$PREFIX/slot-$serving/version"
    fi
    wait_front_healthy "$version" ||
      fail "the app is not healthy through nginx after 30 s: $reason (journalctl -u hello@$serving.service -u nginx.service)"
  fi
  forget_refusal
  rm -f "$STATE_DIR/pending/restart_nginx" "$STATE_DIR/pending/reload_nginx"
  # Gets the certificate, or checks it is not yet due, without holding up the converge: until
  # it has one, :80 serves the app.
  systemctl start hello-cert.timer
  systemctl --no-block restart hello-cert.service

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
  log "serving version $version of metadata $(<"$staging/.etag") (converged in ${SECONDS} s)"
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


# /healthz through nginx, for up to 30 s: the app's 200 with version $1. Sets $reason if not.
wait_front_healthy() {
  local attempt
  for attempt in $(seq 1 30); do
    if front_healthy "$1"; then
      log "serving on :80$([[ -e /etc/nginx/hello-tls/https.conf ]] && echo " and :443") (healthy after ${attempt} check(s))"
      return 0
    fi
    sleep 1
  done
  reason="GET /healthz through nginx did not answer 200 with version $1 for 30 s"
  return 1
}

# What a boot runs. GCE runs the startup script once per boot, so when converging fails even
# after the retries above, a transient unit keeps retrying (with backoff) until it converges.
boot() {
  local status=0
  "$BASH" "$0" converge || status=$?
  ((status != 0 && status != REFUSED_STATUS)) || return 0
  install -D --mode 0755 "$0" /run/hello-startup-retry
  systemd-run --quiet --collect --unit=hello-converge-retry \
    --description="Retry converging the VM until it succeeds" \
    --property=StandardOutput=journal+console --property=StandardError=journal+console \
    /bin/bash /run/hello-startup-retry retry
  log "retrying in the background (journalctl -u hello-converge-retry)"
  return "$status"
}

retry_in_background() {
  local attempt delay=30 status
  for ((attempt = 1; ; attempt++)); do
    sleep "$delay"
    log "background retry $attempt"
    status=0
    "$BASH" "$0" converge || status=$?
    if ((status == 0 || status == REFUSED_STATUS)); then
      return 0
    fi
    delay=$((delay * 2 > 600 ? 600 : delay * 2))
  done
}

# Long-polls the instance attributes from the ETag the last converge applied, so a change made
# before the watcher (re)started is seen too; requests a converge for every ETag not yet applied,
# and again every minute while it stays unapplied (a converge that failed is retried).
# A converge holds the lock while it runs (the boot's too).
converge_running() {
  [[ -e $LOCK ]] && ! flock --nonblock "$LOCK" true
}

watch_metadata() {
  local applied requested=NONE since etag headers refused until held='' forgetting=''
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
      # A converge that runs applies other metadata (a deploy, then a rollback before it was
      # kept): what it leaves applied decides. Polling from the ETag it is replacing would wait
      # out the long poll's minute before seeing the rollback.
      if [[ -n $etag ]] && converge_running; then
        flock --wait 900 "$LOCK" true || true
        continue
      fi
      # Back at the applied metadata after a refused release (a deploy of the old version): a
      # converge forgets the refusal, so /healthz stops naming it.
      if [[ -n $etag && -e $STATE_DIR/refused-etag && $forgetting != "$etag" ]]; then
        log "metadata is back at the applied $etag: requesting a converge to forget the refusal"
        echo "$etag" >"$REQUESTS/$etag"
        forgetting=$etag
      fi
      requested=NONE
      continue
    fi
    # Off the applied metadata: a later return to it (after another refusal) forgets again.
    forgetting=''
    # A release the VM refused is not asked for again before its retry time.
    if read -r refused until 2>/dev/null <"$STATE_DIR/refused-etag" &&
      [[ $etag == "$refused" ]] && ((EPOCHSECONDS < until)); then
      if [[ $etag != "$held" ]]; then
        log "metadata $etag holds a refused release: next try $(date -u -d "@$until" +%H:%MZ)" \
          "unless it changes"
        held=$etag
      fi
      requested=$etag
      continue
    fi
    if [[ $etag != "$requested" ]]; then
      log "instance metadata changed ($applied -> $etag): requesting a converge"
    elif converge_running; then
      # A converge still runs (it holds the lock; a slow one takes over a minute) and applies
      # this metadata, or the request already made starts one after it: asking again would only
      # queue a converge that finds nothing to do.
      continue
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
healthy)
  trap - ERR
  healthy "$2" "$3"
  ;;
upstream)
  upstream_conf "$2" "${3:-}"
  ;;
debian-sources)
  debian_sources "$2"
  ;;
venv)
  build_venv "$2" "$3"
  ;;
*) fail "usage: $0 [boot|converge|retry|watch|version KEY=FILE...|healthy URL VERSION|upstream PORT [BACKUP]|debian-sources DIR|venv DIR REQUIREMENTS]" ;;
esac
