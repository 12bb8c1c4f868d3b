#!/usr/bin/env bash
# Smoke-tests the deployed app: GET http://TARGET/ until the body is exactly
# "Hello World from BenchSci!", with retries and exponential backoff (a fresh VM needs a minute
# or two to boot and install the app).
#
#   scripts/smoke.sh [TARGET]     TARGET is an IP or host[:port]; default: the IP in
#                                 build/deploy/public-ip, written by scripts/deploy.sh
# Settings (environment):
#   SMOKE_ATTEMPTS  default 30; SMOKE_FIRST_WAIT seconds, doubled per try up to SMOKE_MAX_WAIT
#   (defaults 2 and 20: about 8 minutes in all); SMOKE_PATH default /.
# Exit codes: 0 the app answered as expected; 1 it never did; 2 usage.
set -euo pipefail

readonly EXPECTED='Hello World from BenchSci!'

target=${1:-}
if [[ -z $target ]]; then
  ip_file=${DEPLOY_OUT_DIR:-build/deploy}/public-ip
  [[ -f $ip_file ]] || {
    echo "smoke: no TARGET given and $ip_file does not exist (run scripts/deploy.sh first)" >&2
    exit 2
  }
  target=$(<"$ip_file")
fi
attempts=${SMOKE_ATTEMPTS:-30}
delay=${SMOKE_FIRST_WAIT:-2}
max_wait=${SMOKE_MAX_WAIT:-20}
url="http://$target${SMOKE_PATH:-/}"

for ((try = 1; try <= attempts; try++)); do
  status=0
  body=$(curl --silent --show-error --max-time 5 --fail "$url" 2>&1) || status=$?
  if ((status == 0)) && [[ $body == "$EXPECTED" ]]; then
    echo "smoke: $url answered \"$body\" (try $try)"
    exit 0
  fi
  if ((status == 0)); then
    reason="unexpected body: ${body:0:80}"
  else
    reason=${body:-curl exit $status}
  fi
  echo "smoke: try $try/$attempts: $url: $reason; next try in ${delay}s" >&2
  ((try < attempts)) || break
  sleep "$delay"
  delay=$((delay * 2 > max_wait ? max_wait : delay * 2))
done
echo "smoke: FAILED: $url never answered \"$EXPECTED\" in $attempts tries" >&2
exit 1
