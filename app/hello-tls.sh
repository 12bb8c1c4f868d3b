#!/usr/bin/env bash
# HTTPS for the hello-world VM: nginx in front of gunicorn, serving a certificate for the
# instance's external IP that an ACME CA (Let's Encrypt by default) issues by http-01 validation.
# startup.sh installs this script, nginx's site and the units; hello-cert.service runs it:
#
#   hello-tls obtain    as hello-acme, in hello-cert.service: gets the certificate, or renews it
#                       once half its lifetime has passed; retries with backoff and logs each
#                       failure as one FAILED line.
#   hello-tls activate  root, after every obtain: serves a valid certificate on :443 and
#                       redirects :80 to it; without one, :80 serves the app as before. Reloads
#                       nginx (graceful: requests in flight finish) only when something changed.
#   hello-tls expire    root, before nginx starts (app/nginx-hardening.conf): turns HTTPS off
#                       when the served certificate is too close to its expiry, so a VM that was
#                       stopped for longer than the certificate's life never boots into it.
#
# A certificate is served only while it has more than LEAD left. activate runs after every run
# of obtain, and obtain never waits past the moment the served certificate reaches LEAD, so the
# longest time between two activates is the timer's (6 h plus up to 1 h of random delay); LEAD
# adds a margin of 1 h to that, so nginx never serves a certificate in its last hour.
#
# Metadata: acme-directory (empty turns HTTPS off), acme-email, acme-directory-ca (the PEM that
# signs a private ACME server's own HTTPS; empty trusts certbot's public CAs). The identifier is
# network-interfaces/0/access-configs/0/external-ip, the reserved static IP.
#
# HELLO_TLS_ROOT, HELLO_TLS_METADATA, HELLO_TLS_NGINX and HELLO_TLS_STARTUP relocate the files,
# the metadata server, nginx's command and app/startup.sh's, so the host tests run this same
# script without a VM; HELLO_TLS_ATTEMPTS
# and HELLO_TLS_LEAD shorten the retries and the lead time there, for certificates that live
# seconds. HELLO_TLS_FORCE_RENEWAL=1 renews now (docs/https.md). The host tests also source this
# file to feed it CA answers that their CA cannot give (rate limits).
set -Eeuo pipefail

readonly ROOT=${HELLO_TLS_ROOT:-}
readonly METADATA=${HELLO_TLS_METADATA:-http://metadata.google.internal}/computeMetadata/v1/instance
read -r -a NGINX <<<"${HELLO_TLS_NGINX:-nginx}"
read -r -a STARTUP <<<"${HELLO_TLS_STARTUP:-/usr/local/sbin/hello-startup}"
readonly NGINX_PID=$ROOT/run/nginx.pid
readonly STATE=$ROOT/var/lib/hello-acme
readonly WEBROOT=$ROOT/var/www/hello-acme
readonly SERVED=$ROOT/etc/hello-tls
readonly ENABLED=$ROOT/etc/nginx/hello-tls
readonly SHARE=$ROOT/usr/local/share/hello-tls
readonly PROFILE=shortlived
# Backoff between attempts within one run: 15 s doubling to 10 min; after the last attempt
# hello-cert.timer starts a new run within 7 hours.
readonly ATTEMPTS=${HELLO_TLS_ATTEMPTS:-10}
readonly FIRST_WAIT=15 MAX_WAIT=600
# 7 h between two timer runs (app/hello-cert.timer) plus a 1 h margin.
readonly LEAD=${HELLO_TLS_LEAD:-28800}
# Let's Encrypt's "Authorization Failures per Identifier per Account": 5 per hour (a token bucket
# that refills one every 12 minutes; letsencrypt.org/docs/rate-limits, updated 2026-08-05). At
# most FAILURE_LIMIT failed attempts in any FAILURE_WINDOW seconds stays inside it whatever the
# CA counts (a CA that could not be reached counts no failure; this counts every one), across
# runs and reboots: the times are kept in the certificate's directory.
readonly FAILURE_LIMIT=5 FAILURE_WINDOW=3600
# A wait longer than this (a rate limit's "retry after") ends the run; the timer comes back.
readonly LONGEST_WAIT=3600

log() { echo "hello-tls: $*"; }
trap 'log "FAILED: line $LINENO: \"$BASH_COMMAND\" exited $?" >&2' ERR

# Prints instance/$1; prints nothing for a key that is not set (404). Other errors fail.
metadata() {
  local body status
  body=$(mktemp)
  status=$(curl --silent --show-error --retry 5 --retry-connrefused --max-time 30 \
    -H 'Metadata-Flavor: Google' --output "$body" --write-out '%{http_code}' "$METADATA/$1")
  case $status in
  200) cat "$body" ;;
  404) ;;
  *)
    rm -f "$body"
    log "metadata $1: HTTP $status" >&2
    return 1
    ;;
  esac
  rm -f "$body"
}

external_ip() { metadata network-interfaces/0/access-configs/0/external-ip; }

# One directory per (CA, IP): pointing the VM at another CA or IP issues a new certificate at
# once instead of waiting for the old one's renewal date.
cert_name() { printf 'ip-%s-%s' "${2//[.:]/-}" "$(printf '%s' "$1" | sha256sum | cut -c1-8)"; }

# certbot in its own venv, named after the hash of its pins, built the way the app's is (uv,
# hash-checked pins: `hello-startup venv`).
ensure_client() {
  local requirements=$SHARE/acme-requirements.txt digest venv
  digest=$(sha256sum "$requirements" | cut -c1-16)
  venv=$STATE/certbot-$digest
  CERTBOT=$venv/bin/certbot
  [[ -f $venv/.complete ]] && return 0
  # Called as a condition (so errexit is off here): every step checks its own result.
  log "installing the ACME client in $venv"
  "${STARTUP[@]}" venv "$venv" "$requirements" || return 1
  find "$STATE" -maxdepth 1 -name 'certbot-*' ! -path "$venv" -exec rm -rf {} +
}

epoch() { date -d "$(openssl x509 -in "$1" -noout "-$2" | cut -d= -f2)" +%s; }

# Due once half the certificate's lifetime has passed (certbot's own rule for certificates
# shorter than 10 days: about 80 of Let's Encrypt's 160 hours), or when there is none.
renewal_due() {
  local cert=$1 start end
  [[ -f $cert ]] || return 0
  start=$(epoch "$cert" startdate) end=$(epoch "$cert" enddate)
  (($(date +%s) >= start + (end - start) / 2))
}

# certbot with a CSR made here: a fresh P-256 key per certificate, the IP as the only SAN and no
# Common Name (Let's Encrypt rejects an IP there). certbot's lineage mode would also renew by
# itself, but it reads a certificate's Common Name as a DNS name and rejects the IP that Debian
# 12's pebble puts there (certbot issue 10773), so renewal timing is renewal_due's.
certbot_once() {
  local directory=$1 ip=$2 email=$3 dir=$4 output=$5
  rm -f "$dir"/new-*
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
    -out "$dir/new-key.pem") || return 1
  openssl req -new -key "$dir/new-key.pem" -subj / -addext "subjectAltName=IP:$ip" \
    -out "$dir/new-csr.pem" || return 1
  local args=(
    certonly --non-interactive --agree-tos
    --config-dir "$STATE/config" --work-dir "$STATE/work" --logs-dir "$STATE/logs"
    --server "$directory" --csr "$dir/new-csr.pem" --preferred-profile "$PROFILE"
    --webroot --webroot-path "$WEBROOT"
    --cert-path "$dir/new-cert.pem" --chain-path "$dir/new-chain.pem"
    --fullchain-path "$dir/new-fullchain.pem"
  )
  if [[ -n $email ]]; then
    args+=(--email "$email")
  else
    args+=(--register-unsafely-without-email)
  fi
  env "${CA_BUNDLE[@]}" "$CERTBOT" "${args[@]}" >"$output" 2>&1 || return 1
  # The key before the certificate, each by rename: activate checks that the two match.
  mv -f "$dir/new-key.pem" "$dir/key.pem" &&
    mv -f "$dir/new-fullchain.pem" "$dir/fullchain.pem" &&
    rm -f "$dir"/new-* && sync
}

# The one line of certbot's output that says why it failed: the CA's own words when it gave any.
failure_reason() {
  {
    grep -m1 -o 'Detail: .*' "$1" ||
      grep -v -e '^Ask for help' -e '^See the logfile' -e '^Saving debug log' -e '^ *$' "$1" |
      tail -n 1
  } | cut -c1-300
}

# A rate-limit answer: Let's Encrypt's rate-limit details all end "retry after <YYYY-MM-DD
# HH:MM:SS> UTC" (letsencrypt.org/docs/rate-limits, "Retrying After Hitting Rate Limits"), and
# certbot prints the detail of the urn:ietf:params:acme:error:rateLimited problem. Prints that
# time in epoch seconds; fails for any other answer.
rate_limited_until() {
  local when
  when=$(grep -m1 -oE 'retry after [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} UTC' "$1") ||
    return 1
  date -u -d "${when#retry after }" +%s
}

# The failed attempts of the last FAILURE_WINDOW seconds for the certificate in $1, oldest first.
recent_failures() {
  awk -v since=$(($(date +%s) - FAILURE_WINDOW)) '$1 > since' "$1/failures" 2>/dev/null || true
}

# Keeps the time of a failed attempt. For a rate-limit answer, also keeps the time the CA names
# (next_allowed waits for it) and logs the answer as such; true only then.
record_failure() {
  local dir=$1 output=$2 directory=$3 ip=$4 retry_at
  {
    recent_failures "$dir"
    date +%s
  } >"$dir/.failures.new"
  mv -f "$dir/.failures.new" "$dir/failures"
  retry_at=$(rate_limited_until "$output") || return 1
  printf '%s\n' "$retry_at" >"$dir/not-before"
  log "FAILED: rate limited: $directory accepts no new request for $ip before" \
    "$(utc "$retry_at"): $(failure_reason "$output")" >&2
}

# "<epoch> <why>": the earliest time the next attempt may start, and what holds it back.
next_allowed() {
  local dir=$1 now at not_before failures why=
  now=$(date +%s)
  at=$now
  not_before=$(cat "$dir/not-before" 2>/dev/null || echo 0)
  mapfile -t failures < <(recent_failures "$dir")
  if ((${#failures[@]} >= FAILURE_LIMIT)); then
    at=$((failures[${#failures[@]} - FAILURE_LIMIT] + FAILURE_WINDOW))
    why="$FAILURE_LIMIT failed attempts in the last $FAILURE_WINDOW s (the CA's limit)"
  fi
  if ((not_before > at)); then
    at=$not_before
    why="the CA answered with a rate limit"
  fi
  printf '%s %s\n' "$at" "$why"
}

utc() { date -u -d "@$1" '+%F %T UTC'; }

# When the served certificate reaches LEAD; fails when HTTPS is off.
served_until() {
  [[ -e $ENABLED/https.conf && -f $SERVED/fullchain.pem ]] || return 1
  echo $(($(epoch "$SERVED/fullchain.pem" enddate) - LEAD))
}

# Sleeps until $1 (epoch), unless the served certificate reaches LEAD first: then the run ends at
# that moment, so that activate (hello-cert.service's ExecStopPost) turns HTTPS off in time.
pause_until() {
  local at=$1 deadline now
  now=$(date +%s)
  if deadline=$(served_until) && ((at > deadline)); then
    sleep $((deadline > now ? deadline - now : 0))
    log "FAILED: stopping the retries: the served certificate expires within $LEAD s;" \
      "activate turns HTTPS off, hello-cert.timer tries again later" >&2
    exit 1
  fi
  sleep $((at > now ? at - now : 0))
}

obtain() {
  local directory email ca ip name dir output attempt wait=$FIRST_WAIT next why now rate_limited
  directory=$(metadata attributes/acme-directory)
  if [[ -z $directory ]]; then
    log "HTTPS off: no acme-directory in instance metadata; :80 serves the app"
    return 0
  fi
  email=$(metadata attributes/acme-email)
  ca=$(metadata attributes/acme-directory-ca)
  ip=$(external_ip)
  name=$(cert_name "$directory" "$ip")
  dir=$STATE/certificates/$name
  mkdir -p "$dir"
  if [[ -z ${HELLO_TLS_FORCE_RENEWAL:-} ]] && ! renewal_due "$dir/fullchain.pem"; then
    printf '%s\n' "$name" >"$STATE/current"
    log "certificate for $ip from $directory is not yet due for renewal" \
      "($(openssl x509 -in "$dir/fullchain.pem" -noout -enddate))"
    return 0
  fi
  CA_BUNDLE=()
  if [[ -n $ca ]]; then
    printf '%s\n' "$ca" >"$STATE/directory-ca.pem"
    # For certbot's requests to the CA only: uv must keep verifying PyPI the usual way.
    CA_BUNDLE=("REQUESTS_CA_BUNDLE=$STATE/directory-ca.pem")
  fi
  output=$STATE/certbot-output.txt
  for ((attempt = 1; ; attempt++)); do
    read -r next why < <(next_allowed "$dir")
    now=$(date +%s)
    if ((next > now + LONGEST_WAIT)); then
      log "FAILED: no certificate for $ip from $directory: $why; not asking it before" \
        "$(utc "$next"); hello-cert.timer tries again later" >&2
      exit 1
    elif ((next > now)); then
      log "waiting until $(utc "$next") before asking $directory for $ip: $why"
      pause_until "$next"
    fi
    if ensure_client 2>"$output" && certbot_once "$directory" "$ip" "$email" "$dir" "$output"; then
      # Only now: until the new CA or IP has issued, activate keeps serving the last good one.
      printf '%s\n' "$name" >"$STATE/current"
      rm -f "$dir/failures" "$dir/not-before"
      log "new certificate for $ip from $directory" \
        "($(openssl x509 -in "$dir/fullchain.pem" -noout -serial -enddate | tr '\n' ' '))"
      return 0
    fi
    rate_limited=0
    if record_failure "$dir" "$output" "$directory" "$ip"; then
      rate_limited=1
    fi
    if ((attempt >= ATTEMPTS)); then
      log "FAILED: no certificate for $ip from $directory after $attempt attempts:" \
        "$(failure_reason "$output"); hello-cert.timer tries again later" >&2
      exit 1
    fi
    if ((rate_limited)); then
      continue # next_allowed waits for the time the CA named, or ends the run
    fi
    log "FAILED: certificate for $ip from $directory (attempt $attempt/$ATTEMPTS):" \
      "$(failure_reason "$output"); retrying in ${wait} s" >&2
    pause_until $(($(date +%s) + wait))
    wait=$((wait * 2 > MAX_WAIT ? MAX_WAIT : wait * 2))
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

# Reloads nginx and returns once it serves the new configuration only.
reload_nginx() {
  local old
  "${NGINX[@]}" -t -q
  old=$(nginx_workers "$(cat "$NGINX_PID")")
  "${NGINX[@]}" -s reload
  # shellcheck disable=SC2086 # one PID per word
  wait_exited $old
}

# Serves the newest valid certificate, or turns HTTPS off when there is none: an expired or
# missing certificate must leave :80 serving the app rather than redirecting to a broken :443.
activate() {
  local ip name dir changed=0 serial redirect
  ip=$(external_ip)
  name=$(cat "$STATE/current" 2>/dev/null || true)
  dir=$STATE/certificates/$name
  if [[ -n $name && -f $dir/fullchain.pem && -f $dir/key.pem ]] &&
    openssl x509 -in "$dir/fullchain.pem" -noout -checkend "$LEAD" >/dev/null &&
    openssl x509 -in "$dir/fullchain.pem" -noout -ext subjectAltName | tr -d ' ' |
    grep -Fqx "IPAddress:$ip" &&
    [[ $(openssl x509 -in "$dir/fullchain.pem" -noout -pubkey) == \
      "$(openssl pkey -in "$dir/key.pem" -pubout)" ]]; then
    install -d -m 0755 "$SERVED" "$ENABLED"
    # The key first, both by rename: nginx never sees a certificate without its key.
    if ! cmp --silent "$dir/key.pem" "$SERVED/privkey.pem" ||
      ! cmp --silent "$dir/fullchain.pem" "$SERVED/fullchain.pem"; then
      install -m 0600 "$dir/key.pem" "$SERVED/.privkey.pem.new"
      install -m 0644 "$dir/fullchain.pem" "$SERVED/.fullchain.pem.new"
      mv -f "$SERVED/.privkey.pem.new" "$SERVED/privkey.pem"
      mv -f "$SERVED/.fullchain.pem.new" "$SERVED/fullchain.pem"
      changed=1
    fi
    if [[ ! -e $ENABLED/https.conf ]]; then
      ln -sfn "$SHARE/nginx-https.conf" "$ENABLED/https.conf"
      changed=1
    fi
    # To the address the certificate names, never to the Host header a client sent.
    # shellcheck disable=SC2016 # nginx's variable, expanded per request by nginx
    redirect=$(printf 'return 301 https://%s$request_uri;' "$ip")
    if [[ $(cat "$ENABLED/redirect.conf" 2>/dev/null) != "$redirect" ]]; then
      printf '%s\n' "$redirect" >"$ENABLED/.redirect.conf.new"
      mv -f "$ENABLED/.redirect.conf.new" "$ENABLED/redirect.conf"
      changed=1
    fi
    if ((changed)); then
      reload_nginx
      serial=$(openssl x509 -in "$SERVED/fullchain.pem" -noout -serial -enddate | tr '\n' ' ')
      log "serving https://$ip/ ($serial); :80 redirects to it"
    fi
  elif https_off; then
    reload_nginx
    log "HTTPS off: no valid certificate for $ip (one valid for more than $LEAD s);" \
      ":80 serves the app"
  fi
}

# Removes the :443 server and the redirect; false when they were not there.
https_off() {
  [[ -e $ENABLED/https.conf || -e $ENABLED/redirect.conf ]] || return 1
  rm -f "$ENABLED/https.conf" "$ENABLED/redirect.conf"
}

# Before nginx starts, so it needs neither nginx nor the metadata server (the network may not be
# up yet): what activate would refuse to serve is not served at boot either.
expire() {
  if [[ -f $SERVED/fullchain.pem ]] &&
    openssl x509 -in "$SERVED/fullchain.pem" -noout -checkend "$LEAD" >/dev/null; then
    return 0
  fi
  if https_off; then
    log "HTTPS off: the served certificate expires within $LEAD s" \
      "($(openssl x509 -in "$SERVED/fullchain.pem" -noout -enddate 2>&1)); :80 serves the app"
  fi
}

main() {
  case ${1:-} in
  obtain) obtain ;;
  activate) activate ;;
  expire) expire ;;
  *)
    log "usage: $0 obtain|activate|expire" >&2
    exit 2
    ;;
  esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
