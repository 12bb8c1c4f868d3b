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
#
# Metadata: acme-directory (empty turns HTTPS off), acme-email, acme-directory-ca (the PEM that
# signs a private ACME server's own HTTPS; empty trusts certbot's public CAs). The identifier is
# network-interfaces/0/access-configs/0/external-ip, the reserved static IP.
#
# HELLO_TLS_ROOT, HELLO_TLS_METADATA and HELLO_TLS_NGINX relocate the files, the metadata server
# and nginx's command, so the host tests run this same script without a VM; HELLO_TLS_ATTEMPTS
# shortens the retries there. HELLO_TLS_FORCE_RENEWAL=1 renews now (docs/https.md).
set -Eeuo pipefail

readonly ROOT=${HELLO_TLS_ROOT:-}
readonly METADATA=${HELLO_TLS_METADATA:-http://metadata.google.internal}/computeMetadata/v1/instance
read -r -a NGINX <<<"${HELLO_TLS_NGINX:-nginx}"
readonly STATE=$ROOT/var/lib/hello-acme
readonly WEBROOT=$ROOT/var/www/hello-acme
readonly SERVED=$ROOT/etc/hello-tls
readonly ENABLED=$ROOT/etc/nginx/hello-tls
readonly SHARE=$ROOT/usr/local/share/hello-tls
readonly PROFILE=shortlived
# Backoff between attempts within one run: 15 s doubling to 10 min, about an hour in all; after
# that hello-cert.timer starts a new run within 6 hours.
readonly ATTEMPTS=${HELLO_TLS_ATTEMPTS:-10}
readonly FIRST_WAIT=15 MAX_WAIT=600

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

# certbot in its own venv, named after the hash of its pins, installed with --require-hashes.
ensure_client() {
  local requirements=$SHARE/acme-requirements.txt digest venv
  digest=$(sha256sum "$requirements" | cut -c1-16)
  venv=$STATE/certbot-$digest
  CERTBOT=$venv/bin/certbot
  [[ -f $venv/.complete ]] && return 0
  # Called as a condition (so errexit is off here): every step checks its own result.
  log "installing the ACME client in $venv"
  rm -rf "$venv" &&
    python3 -m venv "$venv" &&
    "$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check \
      --require-hashes --only-binary=:all: --requirement "$requirements" &&
    sync && touch "$venv/.complete" || return 1
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

obtain() {
  local directory email ca ip name dir output attempt wait=$FIRST_WAIT
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
    # For certbot's requests to the CA only: pip must keep verifying PyPI the usual way.
    CA_BUNDLE=("REQUESTS_CA_BUNDLE=$STATE/directory-ca.pem")
  fi
  output=$STATE/certbot-output.txt
  for ((attempt = 1; ; attempt++)); do
    if ensure_client 2>"$output" && certbot_once "$directory" "$ip" "$email" "$dir" "$output"; then
      # Only now: until the new CA or IP has issued, activate keeps serving the last good one.
      printf '%s\n' "$name" >"$STATE/current"
      log "new certificate for $ip from $directory" \
        "($(openssl x509 -in "$dir/fullchain.pem" -noout -serial -enddate | tr '\n' ' '))"
      return 0
    fi
    if ((attempt >= ATTEMPTS)); then
      log "FAILED: no certificate for $ip from $directory after $attempt attempts:" \
        "$(failure_reason "$output"); hello-cert.timer tries again later" >&2
      exit 1
    fi
    log "FAILED: certificate for $ip from $directory (attempt $attempt/$ATTEMPTS):" \
      "$(failure_reason "$output"); retrying in ${wait} s" >&2
    sleep "$wait"
    wait=$((wait * 2 > MAX_WAIT ? MAX_WAIT : wait * 2))
  done
}

reload_nginx() {
  "${NGINX[@]}" -t -q
  "${NGINX[@]}" -s reload
}

# Serves the newest valid certificate, or turns HTTPS off when there is none: an expired or
# missing certificate must leave :80 serving the app rather than redirecting to a broken :443.
activate() {
  local ip name dir changed=0 serial
  ip=$(external_ip)
  name=$(cat "$STATE/current" 2>/dev/null || true)
  dir=$STATE/certificates/$name
  if [[ -n $name && -f $dir/fullchain.pem && -f $dir/key.pem ]] &&
    openssl x509 -in "$dir/fullchain.pem" -noout -checkend 3600 >/dev/null &&
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
      # shellcheck disable=SC2016 # nginx's variables, expanded per request by nginx
      printf 'return 301 https://$host$request_uri;\n' >"$ENABLED/redirect.conf"
      changed=1
    fi
    if ((changed)); then
      reload_nginx
      serial=$(openssl x509 -in "$SERVED/fullchain.pem" -noout -serial -enddate | tr '\n' ' ')
      log "serving https://$ip/ ($serial); :80 redirects to it"
    fi
  elif [[ -e $ENABLED/https.conf || -e $ENABLED/redirect.conf ]]; then
    rm -f "$ENABLED/https.conf" "$ENABLED/redirect.conf"
    reload_nginx
    log "HTTPS off: no valid certificate for $ip; :80 serves the app"
  fi
}

case ${1:-} in
obtain) obtain ;;
activate) activate ;;
*)
  log "usage: $0 obtain|activate" >&2
  exit 2
  ;;
esac
