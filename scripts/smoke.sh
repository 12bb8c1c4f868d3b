#!/usr/bin/env bash
# Smoke-tests the deployed app: GET http://ADDRESS/ until the body is exactly
# "Hello World from BenchSci!" and GET /healthz names the version just deployed, with retries and
# exponential backoff (a fresh VM needs a minute or two to boot and install the app). The
# version is the digest app/startup.sh computes over the files vm.py deploys: the VM computes it
# from what it installed, this script from this checkout. So a redeploy whose converge failed
# (the old app still greeting) fails here, and at once when /healthz says the VM refused that
# version (its reason is printed).
#
#   scripts/smoke.sh [ADDRESS]    ADDRESS is an IP or host[:port]; default: the IP in
#   make smoke [IP=ADDRESS]       build/deploy/public-ip, written by `make deploy`
# Settings (environment):
#   SMOKE_ATTEMPTS  default 30; SMOKE_FIRST_WAIT seconds, doubled per try up to SMOKE_MAX_WAIT
#   (defaults 2 and 20: about 8 minutes in all); SMOKE_PATH default /.
#   SMOKE_VERSION   the version to wait for; default: computed from SMOKE_CHECKOUT, the checkout
#   that was deployed (default: this one; scripts/rollback.sh sets it to the commit it redeploys).
#   The outcome goes to DEPLOY_OUT_DIR/smoke-failure (default build/deploy): the last reason on a
#   failure, which the pipeline's rollback names; removed on success.
#   HTTPS (SMOKE_HTTPS=0 skips it): http://ADDRESS/ must redirect to https://HOST/, which must
#   answer the greeting with a certificate curl verifies for the IP. SMOKE_CACERT: the root to
#   trust instead of the system's (pebble's, locally); SMOKE_HTTPS_PORT: where HOST's 443 really
#   is (the forwarded port, locally). A fresh VM serves HTTP before its certificate arrives, so
#   these retry like the HTTP check.
# Exit codes: 0 the app answered as expected; 1 it never did; 2 usage, including an ADDRESS
# that cannot be one (not_an_ip, 10.0.0.300, host:70000): only what can heal is retried, such as
# a refused connection or a timeout while the VM boots.
set -euo pipefail

readonly EXPECTED='Hello World from BenchSci!'

usage_error() {
  echo "smoke: $*" >&2
  echo "usage: make smoke [IP=ADDRESS], or scripts/smoke.sh [ADDRESS] (--help for more)" >&2
  exit 2
}

target=
for arg in "$@"; do
  case $arg in
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    -*) usage_error "unknown option: $arg" ;;
    *)
      [[ -z $target ]] || usage_error "one address only, got '$target' and '$arg'"
      target=$arg
      ;;
  esac
done
if [[ -z $target ]]; then
  ip_file=${DEPLOY_OUT_DIR:-build/deploy}/public-ip
  [[ -f $ip_file ]] ||
    usage_error "no address given, and $ip_file (written by \`make deploy\`) does not exist: deploy first, or give the address"
  target=$(<"$ip_file")
  from=" (read from $ip_file)"
fi

# Why ADDRESS cannot be one (IPv4[:PORT] or HOSTNAME[:PORT]), or nothing.
address_problem() {
  local address=$1 host port octet
  local label='[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?'
  host=${address%:*}
  port=${address#"$host"}
  port=${port#:}
  if [[ $address == *:* ]] && ! [[ $port =~ ^[0-9]{1,5}$ ]] || ((10#${port:-1} < 1 || 10#${port:-1} > 65535)); then
    echo "'$port' is not a port (1-65535)"
  elif [[ $host =~ ^[0-9.]+$ ]]; then
    if [[ ! $host =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then
      echo "$host is not an IPv4 address (four numbers 0-255 separated by dots)"
      return
    fi
    IFS=. read -ra octets <<<"$host"
    for octet in "${octets[@]}"; do
      ((10#$octet <= 255)) || echo "$host is not an IPv4 address: $octet is over 255"
    done | head -n 1
  elif [[ ! $host =~ ^($label\.)*$label\.?$ ]]; then
    echo "$host is neither an IPv4 address nor a host name (letters, digits, hyphens and dots)"
  fi
}
problem=$(address_problem "$target")
[[ -z $problem ]] || usage_error "'$target'${from:-} cannot be an address: $problem"
attempts=${SMOKE_ATTEMPTS:-30}
delay=${SMOKE_FIRST_WAIT:-2}
max_wait=${SMOKE_MAX_WAIT:-20}
url="http://$target${SMOKE_PATH:-/}"
failure_file=${DEPLOY_OUT_DIR:-build/deploy}/smoke-failure
# Ends the test failed: fail MESSAGE REASON; REASON is kept for the pipeline's rollback to name.
fail() {
  echo "smoke: FAILED: $1" >&2
  mkdir -p "$(dirname "$failure_file")"
  printf '%s\n' "$2" >"$failure_file"
  exit 1
}
expected_version=${SMOKE_VERSION:-$(
  cd "${SMOKE_CHECKOUT:-$(dirname "$0")/..}"
  python3 -c 'from vm import METADATA_FILES as f; print("\n".join(f"{k}={v}" for k, v in f.items()))' |
    xargs bash app/startup.sh version
)}

host=${target%:*}
# curl's view of HOST's port 443, and the root it verifies the certificate against.
tls=(--connect-to "$host:443:$host:${SMOKE_HTTPS_PORT:-443}")
if [[ -n ${SMOKE_CACERT:-} ]]; then
  tls+=(--cacert "$SMOKE_CACERT")
fi

# Prints why HTTPS is not right yet, or nothing when the redirect and the greeting are.
https_problem() {
  local redirect body
  [[ ${SMOKE_HTTPS:-1} == 0 ]] && return 0
  redirect=$(curl --silent --max-time 5 --output /dev/null \
    --write-out '%{http_code} %{redirect_url}' "http://$target/" 2>&1) || true
  if [[ $redirect != "301 https://$host/" ]]; then
    echo "http://$target/ answered \"$redirect\", not a redirect to https://$host/"
    return 0
  fi
  body=$(curl --silent --show-error --max-time 5 --fail "${tls[@]}" "https://$host/" 2>&1) ||
    true
  [[ $body == "$EXPECTED" ]] || echo "https://$host/: ${body:0:120}"
}

for ((try = 1; try <= attempts; try++)); do
  status=0
  body=$(curl --silent --show-error --max-time 5 --fail --location "${tls[@]}" "$url" 2>&1) ||
    status=$?
  if ((status == 0)) && [[ $body == "$EXPECTED" ]]; then
    health=$(curl --silent --max-time 5 --fail --location "${tls[@]}" "http://$target/healthz" 2>&1) ||
      true
    # The version serving, and the release the VM refused (and why), if it refused one.
    read -r version refused_version refused_reason < <(
      python3 -c 'import json, sys
try:
    health = json.loads(sys.stdin.read())
except ValueError:
    health = {}
refused = health.get("refused") or {}
print(health.get("version") or "-", refused.get("version") or "-", refused.get("reason") or "")' \
        <<<"$health"
    )
    [[ $version != - ]] || version=''
    if [[ $refused_version == "$expected_version" ]]; then
      refusal="the VM refused version $expected_version: $refused_reason"
      fail "$refusal; it still serves version ${version:-unknown}" "$url: $refusal"
    fi
    problem=$(https_problem)
    if [[ $version == "$expected_version" && -z $problem ]]; then
      echo "smoke: $url answered \"$body\", version $version (try $try)"
      if [[ ${SMOKE_HTTPS:-1} != 0 ]]; then
        echo "smoke: http://$target/ redirects to https://$host/, verified, with the same greeting"
      fi
      rm -f "$failure_file"
      exit 0
    fi
    if [[ $version != "$expected_version" ]]; then
      reason="serving version ${version:-unknown}, not the deployed $expected_version (not converged)"
    else
      reason="HTTPS: $problem"
    fi
  elif ((status == 0)); then
    reason="unexpected body: ${body:0:80}"
  else
    reason=${body:-curl exit $status}
  fi
  echo "smoke: try $try/$attempts: $url: $reason; next try in ${delay}s" >&2
  ((try < attempts)) || break
  sleep "$delay"
  delay=$((delay * 2 > max_wait ? max_wait : delay * 2))
done
fail "$url never answered \"$EXPECTED\" at version $expected_version in $attempts tries" \
  "$url: $reason"
