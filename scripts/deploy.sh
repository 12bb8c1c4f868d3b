#!/usr/bin/env bash
# The one place deploy logic lives: CircleCI runs it, and so do people.
#
#   scripts/deploy.sh            update the deployment, or create it when it does not exist;
#                                wait; print the resources and the public IP
#   scripts/deploy.sh --preview  DM's server-side preview of the same create/update: show what
#                                would change, then cancel the preview (nothing is touched)
#   scripts/deploy.sh --auth-only  authenticate as below, then stop (checks credentials)
#
# Engines: DEPLOY_ENGINE=dm (the default) deploys with Deployment Manager, as below;
# DEPLOY_ENGINE=infra-manager deploys the same stack, as Terraform, with Infrastructure Manager
# (scripts/lib/infra-manager.sh: its settings, commands and flags). Same arguments, same exit
# codes. The script never switches engines by itself: two engines must never manage the same
# resources by accident, so moving a live stack is the runbook in docs/migration.md.
#
# Settings (environment):
#   DEPLOY_ENGINE          dm or infra-manager; default: dm
#   GCP_PROJECT            project id (or CLOUDSDK_CORE_PROJECT / gcloud's configured project)
#   DEPLOYMENT_NAME        default: hello
#   DM_CONFIG              default: deployment.yaml
#   PUBLIC_IP_OUTPUT       the deployment output holding the IP; default: publicIp
#   DEPLOY_OUT_DIR         where public-ip is written for the smoke test; default: build/deploy
#   DEPLOY_RETRIES         retries while another deploy holds the deployment; default: 10
#   DEPLOY_RETRY_SECONDS   first backoff, doubled each retry (capped at 60 s); default: 5
# Authentication, first that applies:
#   1. Workload Identity Federation (no long-lived key): GCP_WIF_PROVIDER (full provider resource
#      name), GCP_DEPLOYER_SA (service account email) and an OIDC token in CIRCLE_OIDC_TOKEN_V2
#      (CircleCI sets it), CIRCLE_OIDC_TOKEN, or the file named by OIDC_TOKEN_FILE;
#   2. GCP_SA_KEY_B64: a base64 service-account JSON key (the fallback);
#   3. neither: gcloud's active account (or CLOUDSDK_AUTH_ACCESS_TOKEN_FILE, gcloud's own
#      access-token property), for a person running it by hand; unless
#      SKIP_WITHOUT_CREDENTIALS=true (CI's preview job on branches), which makes "no credentials
#      configured" a clear message and exit 0 instead.
# Nothing secret is printed: keys and tokens go to 0600 files in a private temp dir that is
# removed on exit, and this script never runs with `set -x`.
#
# Delete policy: updates run with --delete-policy=DELETE. deployment.yaml is the truth, so a
# resource removed from it (say a firewall rule) is removed from the project; ABANDON would leave
# it live and unmanaged, which for an "allow" rule is an open door nobody sees in code. Apart from
# the empty shell a preview of a new deployment leaves behind, nothing here deletes a deployment;
# the instance carries deletion protection against that.
#
# Serialized deploys: DM allows one operation per deployment and checks the fingerprint read
# before an update. A deploy that finds another one running (HTTP 409, or 412 for a stale
# fingerprint, or a create that lost the race to create) backs off and retries, re-reading the
# state; after DEPLOY_RETRIES it gives up with exit code 5. CircleCI also queues deploy jobs
# (serial-group), so in CI this is the second line of defence.
#
# Exit codes:
#   0 deployed (or previewed)        4 DM rejected the config or a resource (operation error);
#   2 usage or missing file            the live manifest is unchanged
#   3 authentication failed          5 another deploy kept the deployment busy; retries used up
#   6 other gcloud / API failure     7 deployed, but no public IP could be read
#   8 Deployment Manager is turned off for the project (or shut down): nothing was deployed;
#     deploy with DEPLOY_ENGINE=infra-manager after the migration in docs/migration.md
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

readonly EXIT_USAGE=2 EXIT_AUTH=3 EXIT_REJECTED=4 EXIT_BUSY=5 EXIT_API=6 EXIT_NO_IP=7
readonly EXIT_DM_SHUT_DOWN=8

preview=false
auth_only=false
for arg in "$@"; do
  case "$arg" in
    --preview) preview=true ;;
    --auth-only) auth_only=true ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "deploy: unknown argument: $arg (try --help)" >&2
      exit "$EXIT_USAGE"
      ;;
  esac
done

engine=${DEPLOY_ENGINE:-dm}
deployment=${DEPLOYMENT_NAME:-hello}
config=${DM_CONFIG:-deployment.yaml}
ip_output=${PUBLIC_IP_OUTPUT:-publicIp}
out_dir=${DEPLOY_OUT_DIR:-build/deploy}
retries=${DEPLOY_RETRIES:-10}
backoff=${DEPLOY_RETRY_SECONDS:-5}

log() { printf 'deploy: %s\n' "$*" >&2; }
die() {
  local code=$1
  shift
  printf 'deploy: error: %s\n' "$*" >&2
  exit "$code"
}

[[ $engine == dm || $engine == infra-manager ]] ||
  die "$EXIT_USAGE" "DEPLOY_ENGINE must be dm or infra-manager, not '$engine'"
command -v gcloud >/dev/null || die "$EXIT_USAGE" "gcloud is not on PATH"
[[ -f $config ]] || die "$EXIT_USAGE" "config not found: $config"
[[ $retries =~ ^[0-9]+$ && $backoff =~ ^[0-9]+$ ]] ||
  die "$EXIT_USAGE" "DEPLOY_RETRIES and DEPLOY_RETRY_SECONDS must be whole numbers"

export CLOUDSDK_CORE_DISABLE_PROMPTS=1
if [[ -n ${GCP_PROJECT:-} ]]; then
  export CLOUDSDK_CORE_PROJECT=$GCP_PROJECT
fi

private=$(mktemp -d)
trap 'rm -rf "$private"' EXIT
chmod 700 "$private"
stderr_file=$private/gcloud.stderr

# Runs gcloud, showing its stderr live and keeping a copy to classify failures. With
# hide_not_found=true, gcloud's "code=404" error line is kept out of the live output (the
# caller expects that answer and says what it means).
gcloud_run() {
  local rc=0
  if [[ ${hide_not_found:-} == true ]]; then
    gcloud "$@" 2> >(tee "$stderr_file" | grep --line-buffered -v 'code=404' >&2) || rc=$?
  else
    gcloud "$@" 2> >(tee "$stderr_file" >&2) || rc=$?
  fi
  wait # for tee, so the copy is complete
  return "$rc"
}

# Classifies the last failure: rejected (the operation finished with errors; checked first, as
# its text may quote anything), shutdown (Google's answer for an API that is turned off for the
# project, 403 SERVICE_DISABLED), busy (HTTP 409/412: someone else is deploying), missing (404),
# or api (anything else).
last_failure() {
  if grep -q 'Error in Operation' "$stderr_file"; then
    echo rejected
  elif grep -q 'code=403' "$stderr_file" &&
    grep -qi 'SERVICE_DISABLED\|accessNotConfigured\|has not been used in project\|it is disabled' "$stderr_file"; then
    echo shutdown
  elif grep -q 'code=409\|code=412' "$stderr_file"; then
    echo busy
  elif grep -q 'code=404' "$stderr_file"; then
    echo missing
  else
    echo api
  fi
}

authenticate() {
  local oidc_file=${OIDC_TOKEN_FILE:-}
  if [[ -n ${GCP_WIF_PROVIDER:-} ]]; then
    [[ -n ${GCP_DEPLOYER_SA:-} ]] || die "$EXIT_AUTH" "GCP_WIF_PROVIDER is set but GCP_DEPLOYER_SA is not"
    if [[ -z $oidc_file ]]; then
      local token=${CIRCLE_OIDC_TOKEN_V2:-${CIRCLE_OIDC_TOKEN:-}}
      [[ -n $token ]] || die "$EXIT_AUTH" "no OIDC token: CIRCLE_OIDC_TOKEN_V2 is empty (is this a CircleCI job with OIDC?)"
      oidc_file=$private/oidc-token
      (umask 077 && printf '%s' "$token" >"$oidc_file")
    fi
    log "authenticating with Workload Identity Federation as $GCP_DEPLOYER_SA"
    gcloud_run iam workload-identity-pools create-cred-config "$GCP_WIF_PROVIDER" \
      --service-account="$GCP_DEPLOYER_SA" \
      --credential-source-file="$oidc_file" \
      --output-file="$private/wif-credentials.json" ||
      die "$EXIT_AUTH" "could not write the WIF credential config (check GCP_WIF_PROVIDER)"
    gcloud_run auth login --cred-file="$private/wif-credentials.json" --quiet ||
      die "$EXIT_AUTH" "gcloud auth login --cred-file failed"
  elif [[ -n ${GCP_SA_KEY_B64:-} ]]; then
    local key=$private/sa-key.json
    (umask 077 && printf '%s' "$GCP_SA_KEY_B64" | base64 -d >"$key" 2>/dev/null) ||
      die "$EXIT_AUTH" "GCP_SA_KEY_B64 is not valid base64"
    log "authenticating with the service-account key in GCP_SA_KEY_B64 (fallback; prefer WIF)"
    gcloud_run auth activate-service-account --key-file="$key" ||
      die "$EXIT_AUTH" "gcloud rejected the service-account key (or the token endpoint refused it)"
  else
    if [[ ${SKIP_WITHOUT_CREDENTIALS:-} == true ]]; then
      log "SKIPPED: no GCP credentials configured (GCP_WIF_PROVIDER + GCP_DEPLOYER_SA, or GCP_SA_KEY_B64); nothing was checked against Deployment Manager"
      exit 0
    fi
    if [[ -n ${CLOUDSDK_AUTH_ACCESS_TOKEN_FILE:-} ]]; then
      # gcloud's auth/access_token_file property: a bare token, e.g. for a local emulator.
      log "using the access token in CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"
      return 0
    fi
    local account
    account=$(gcloud config get-value account 2>/dev/null || true)
    [[ -n $account ]] || die "$EXIT_AUTH" "no credentials: set GCP_WIF_PROVIDER + GCP_DEPLOYER_SA, or GCP_SA_KEY_B64, or run gcloud auth login"
    log "using gcloud's active account $account"
  fi
}

# One create-or-update attempt. Returns 0 on success, 75 when busy (retry), else dies.
# `gcloud ... update` first reads the deployment (GET) and then updates it (PUT); when the read
# says 404 the deployment does not exist and is created instead. That is describe -> update or
# create at the API level, in one gcloud process fewer than a separate describe.
create_or_update() {
  local -a mode_flags=()
  local note=""
  if "$preview"; then
    mode_flags=(--preview)
    note=" (preview)"
  fi
  local verb=update
  log "create-or-update of $deployment from $config$note"
  if hide_not_found=true gcloud_run deployment-manager deployments update "$deployment" \
    --config="$config" --delete-policy=DELETE --create-policy=CREATE_OR_ACQUIRE \
    "${mode_flags[@]}" | tee "$private/result"; then
    log "deployment $deployment existed: updated in place$note"
    return 0
  fi
  if [[ $(last_failure) == missing ]]; then
    verb=create
    log "deployment $deployment does not exist: creating it$note"
    created_for_preview=$preview
    if gcloud_run deployment-manager deployments create "$deployment" --config="$config" \
      "${mode_flags[@]}" | tee "$private/result"; then
      log "deployment $deployment created$note"
      return 0
    fi
  fi
  case $(last_failure) in
    busy) return 75 ;;
    shutdown) die "$EXIT_DM_SHUT_DOWN" "Deployment Manager answered that its API is turned off for this project (it reached end of support on 2026-03-31); nothing was deployed. Deploy with DEPLOY_ENGINE=infra-manager after moving the stack as docs/migration.md describes; this script never switches engines by itself" ;;
    rejected) die "$EXIT_REJECTED" "Deployment Manager rejected the $verb of $deployment (errors above); the live deployment is unchanged" ;;
    *) die "$EXIT_API" "$verb of $deployment failed (see gcloud's message above)" ;;
  esac
}

with_retries() {
  local attempt=0 delay=$backoff rc
  while true; do
    rc=0
    "$@" || rc=$?
    [[ $rc -eq 75 ]] || return "$rc"
    if ((attempt >= retries)); then
      die "$EXIT_BUSY" "deployment $deployment is busy with another deploy; gave up after $retries retries"
    fi
    attempt=$((attempt + 1))
    log "another deploy holds $deployment; retry $attempt/$retries in ${delay}s"
    sleep "$delay"
    delay=$((delay * 2 > 60 ? 60 : delay * 2))
  done
}

cancel_preview() {
  gcloud_run deployment-manager deployments cancel-preview "$deployment" --format=none && return 0
  [[ $(last_failure) == busy ]] && return 75
  die "$EXIT_API" "cancel-preview of $deployment failed; cancel it by hand: gcloud deployment-manager deployments cancel-preview $deployment"
}

public_ip() {
  local ip
  # gcloud's create/update print the deployment's outputs after the resources
  # ("OUTPUTS  VALUE" table); read the IP there rather than spend another API round trip.
  ip=$(awk -v name="$ip_output" '$1 == "OUTPUTS" { outputs = 1; next }
    outputs && $1 == name { print $2; exit }' "$private/result")
  if [[ -z $ip ]]; then
    ip=$(gcloud deployment-manager deployments describe "$deployment" --flatten=outputs \
      --format='csv[no-heading](outputs.name,outputs.finalValue)' 2>"$stderr_file" |
      awk -F, -v name="$ip_output" '$1 == name { print $2 }')
  fi
  if [[ -z $ip ]]; then
    # No output: read the static address's final properties instead.
    ip=$(gcloud deployment-manager resources list --deployment="$deployment" \
      --filter='type=compute.v1.address' --format='value(finalProperties)' 2>"$stderr_file" |
      awk '/^address:/ { print $2; exit }')
  fi
  [[ $ip =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] && echo "$ip"
}

created_for_preview=false
authenticate
if "$auth_only"; then
  log "authenticated; --auth-only: stopping here"
  exit 0
fi

if [[ $engine == infra-manager ]]; then
  # shellcheck source=scripts/lib/infra-manager.sh
  source "$(dirname "${BASH_SOURCE[0]}")/lib/infra-manager.sh"
  if "$preview"; then
    im_preview
  else
    im_deploy
  fi
  exit 0
fi

if "$preview"; then
  with_retries create_or_update
  log "preview above (INTENT column); cancelling it, nothing was changed"
  with_retries cancel_preview
  if "$created_for_preview"; then
    # The preview created an empty shell deployment; remove it so the next real deploy is a
    # plain create. ABANDON: it holds no resources, and nothing real can be deleted by a preview.
    gcloud_run deployment-manager deployments delete "$deployment" --delete-policy=ABANDON \
      --quiet --format=none || log "warning: could not remove the empty preview deployment"
  fi
  log "preview of $deployment done"
  exit 0
fi

with_retries create_or_update
ip=$(public_ip) || die "$EXIT_NO_IP" "deployed, but found no public IP (output '$ip_output' or a compute.v1.address)"
mkdir -p "$out_dir"
printf '%s\n' "$ip" >"$out_dir/public-ip"
log "deployment $deployment is up to date"
echo "Public IP: $ip"
echo "URL: http://$ip/"
