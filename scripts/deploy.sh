#!/usr/bin/env bash
# The one place deploy logic lives: CircleCI runs it, and so do people.
#
#   scripts/deploy.sh            update the deployment, or create it when it does not exist;
#                                wait; print the resources and the public IP
#   scripts/deploy.sh --preview  DM's server-side preview of the config on a deployment of the
#                                branch's own (DEPLOYMENT_NAME-preview-BRANCH), removed afterwards,
#                                plus what changes against the live deployment's manifest: in
#                                place, or needing a new resource (production is only read)
#   scripts/deploy.sh --auth-only  authenticate as below, then stop (checks credentials)
#   scripts/deploy.sh --last-good  print the commit recorded as the last good version: the one
#                                live when `make smoke` last passed (nothing when none is)
#   scripts/deploy.sh --record-good COMMIT  record COMMIT (live, and its smoke test passed) as
#                                the last good version; `make rollback` redeploys it
#
# Engines: DEPLOY_ENGINE=dm (the default) deploys with Deployment Manager (scripts/lib/dm.sh);
# DEPLOY_ENGINE=infra-manager deploys the same stack, as Terraform, with Infrastructure Manager
# (scripts/lib/infra-manager.sh: its settings, commands and flags). Each engine file has the same
# verbs; this script authenticates and calls one. Same arguments, same exit codes. The script
# never switches engines by itself: two engines must never manage the same resources by
# accident, so moving a live stack is the runbook in docs/migration.md.
#
# The last good version is a label on the deployment, LAST_GOOD_LABEL=<commit sha>: the next
# CI run reads it with the deploy credentials it already has, it needs no write access to the
# repository, it lives and dies with the deployment it describes, and both engines have labels.
#
# Settings (environment):
#   DEPLOY_ENGINE          dm or infra-manager; default: dm
#   GCP_PROJECT            project id, required (gcloud's own CLOUDSDK_CORE_PROJECT also works)
#   DEPLOYMENT_NAME        default: hello
#   DM_CONFIG              default: deployment.yaml
#   PUBLIC_IP_OUTPUT       the deployment output holding the IP; default: publicIp
#   DEPLOY_OUT_DIR         where public-ip is written for the smoke test; default: build/deploy
#   DEPLOY_RETRIES         retries while another deploy holds the deployment; default: 10
#   DEPLOY_RETRY_SECONDS   first backoff, doubled each retry (capped at 60 s); default: 5
#   CIRCLE_BRANCH          the branch a preview is named after (default: git's current branch)
#   DMLOCAL                the dry-run tool that compares with the live manifest; default:
#                          dmlocal on PATH (without it, the preview says it skipped the comparison)
# Authentication, first that applies:
#   1. Workload Identity Federation (no long-lived key): GCP_WIF_PROVIDER (full provider resource
#      name), GCP_DEPLOYER_SA (service account email) and an OIDC token in CIRCLE_OIDC_TOKEN_V2
#      (CircleCI sets it), CIRCLE_OIDC_TOKEN, or the file named by OIDC_TOKEN_FILE;
#   2. GCP_SA_KEY_B64: a base64 service-account JSON key (the fallback);
#   3. neither: gcloud's active account (or CLOUDSDK_AUTH_ACCESS_TOKEN_FILE, gcloud's own
#      access-token property), for a person running it by hand; unless
#      SKIP_WITHOUT_CREDENTIALS=true (CI's preview job on branches), which makes "no credentials
#      configured" a clear message and exit 0 instead.
# With 1, 2 or a token file, gcloud runs on a config of its own (CLOUDSDK_CONFIG) inside a
# private temp dir, so the login never touches the caller's gcloud config or active account;
# the project must then come from GCP_PROJECT or CLOUDSDK_CORE_PROJECT. Nothing secret is
# printed: keys, tokens and that config are 0600 files in the private temp dir, which is removed
# when the script exits (also on SIGINT/SIGTERM; not on SIGKILL); it never runs with `set -x`.
# WIF_STS_ENDPOINT and WIF_IAMCREDENTIALS_ENDPOINT (unset in CI) point the credential config's
# token exchange and impersonation URLs at local emulators: gcloud's create-cred-config always
# writes Google's, and gcloud has no endpoint property for STS.
#
# Serialized deploys: DM allows one operation per deployment and checks the fingerprint read
# before an update. A deploy that finds another one running (HTTP 409, or 412 for a stale
# fingerprint, or a create that lost the race to create) backs off and retries, re-reading the
# state; after DEPLOY_RETRIES it gives up with exit code 5. CircleCI also queues deploy jobs
# (serial-group), so in CI this is the second line of defence.
#
# Exit codes:
#   0 deployed (or previewed)        4 DM rejected the config before applying any resource
#   2 usage or missing file            (operation error, no resource error): nothing changed
#   3 authentication failed          5 another deploy kept the deployment busy; retries used up
#   6 other gcloud / API failure     7 deployed, but no public IP could be read
#   8 DM stopped at a resource error mid-update: DM applies resources one by one in dependency
#     order and does not roll back, so the resources before the failing one ARE changed and the
#     live deployment is a mix of old and new; with --preview: a change DM cannot apply in place
#   9 Deployment Manager is turned off for the project (or shut down): nothing was deployed;
#     deploy with DEPLOY_ENGINE=infra-manager after the migration in docs/migration.md
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

readonly EXIT_USAGE=2 EXIT_AUTH=3 EXIT_REJECTED=4 EXIT_BUSY=5 EXIT_API=6 EXIT_NO_IP=7
readonly EXIT_PARTIAL=8 EXIT_DM_SHUT_DOWN=9
readonly LAST_GOOD_LABEL=last-good-commit

action=deploy
while (($#)); do
  case "$1" in
    --preview) action=preview ;;
    --auth-only) action=auth-only ;;
    --last-good) action=last-good ;;
    --record-good)
      action=record-good
      good_commit=${2:-}
      # A label value: lowercase letters, digits, '-' and '_', at most 63 characters.
      [[ $good_commit =~ ^[0-9a-f]{40}$ ]] || {
        echo "deploy: --record-good needs a full commit sha (git rev-parse HEAD), got '$good_commit'" >&2
        exit "$EXIT_USAGE"
      }
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "deploy: unknown argument: $1 (try --help)" >&2
      exit "$EXIT_USAGE"
      ;;
  esac
  shift
done

engine=${DEPLOY_ENGINE:-dm}
deployment=${DEPLOYMENT_NAME:-hello}
config=${DM_CONFIG:-deployment.yaml}
ip_output=${PUBLIC_IP_OUTPUT:-publicIp}
out_dir=${DEPLOY_OUT_DIR:-build/deploy}
retries=${DEPLOY_RETRIES:-10}
backoff=${DEPLOY_RETRY_SECONDS:-5}

message_prefix=deploy
# shellcheck source=scripts/lib/messages.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/messages.sh"

[[ $engine == dm || $engine == infra-manager ]] ||
  die "$EXIT_USAGE" "DEPLOY_ENGINE must be dm or infra-manager, not '$engine'"
command -v gcloud >/dev/null || die "$EXIT_USAGE" "gcloud is not on PATH"
[[ -f $config ]] || die "$EXIT_USAGE" "config not found: $config"
[[ $retries =~ ^[0-9]+$ && $backoff =~ ^[0-9]+$ ]] ||
  die "$EXIT_USAGE" "DEPLOY_RETRIES and DEPLOY_RETRY_SECONDS must be whole numbers"

# The project is checked here, before anything talks to Google: without it gcloud would fail
# later with "property [project] is not currently set", which names neither the variable nor
# the fix. A credential-less skip (below) needs no project.
if [[ -z ${GCP_PROJECT:-${CLOUDSDK_CORE_PROJECT:-}} ]] && [[ $action != auth-only ]] &&
  ! [[ ${SKIP_WITHOUT_CREDENTIALS:-} == true && -z ${GCP_WIF_PROVIDER:-}${GCP_SA_KEY_B64:-} ]]; then
  die "$EXIT_USAGE" "GCP_PROJECT is not set: export GCP_PROJECT=<your project id> and run it again"
fi

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
    gcloud "$@" 2> >(tee "$stderr_file" | grep --line-buffered -v 'code=404\|NOT_FOUND:' >&2) || rc=$?
  else
    gcloud "$@" 2> >(tee "$stderr_file" >&2) || rc=$?
  fi
  wait # for tee, so the copy is complete
  return "$rc"
}


# Gives gcloud a config of its own in the private temp dir: what the script logs in with stays
# there and goes with it, and the caller's config (credentials, active account) is not written.
use_private_gcloud_config() {
  [[ -n ${CLOUDSDK_CORE_PROJECT:-} ]] ||
    die "$EXIT_USAGE" "set GCP_PROJECT (the project to deploy to)"
  export CLOUDSDK_CONFIG=$private/gcloud
  (umask 077 && mkdir "$CLOUDSDK_CONFIG")
}

# Points the URLs in a credential config at WIF_STS_ENDPOINT / WIF_IAMCREDENTIALS_ENDPOINT.
override_wif_endpoints() {
  local file=$1 content old new
  content=$(<"$file")
  for pair in "https://sts.googleapis.com=${WIF_STS_ENDPOINT:-}" \
    "https://iamcredentials.googleapis.com=${WIF_IAMCREDENTIALS_ENDPOINT:-}"; do
    old="\"${pair%%=*}/" new="\"${pair#*=}/"
    [[ $new != '"/' ]] || continue
    [[ $content == *"$old"* ]] || die "$EXIT_AUTH" "no ${old#\"} URL in $file to override"
    content=${content//"$old"/"$new"}
  done
  (umask 077 && printf '%s\n' "$content" >"$file")
}

authenticate() {
  local oidc_file=${OIDC_TOKEN_FILE:-}
  if [[ -n ${GCP_WIF_PROVIDER:-} ]]; then
    [[ -n ${GCP_DEPLOYER_SA:-} ]] || die "$EXIT_AUTH" "GCP_WIF_PROVIDER is set but GCP_DEPLOYER_SA is not"
    use_private_gcloud_config
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
    override_wif_endpoints "$private/wif-credentials.json"
    gcloud_run auth login --cred-file="$private/wif-credentials.json" --quiet ||
      die "$EXIT_AUTH" "gcloud auth login --cred-file failed"
    # The login is offline; the token exchange and impersonation happen on first use. Do that
    # now, so a refusal is an authentication failure here, not an API error mid-deploy.
    gcloud_run auth print-access-token --quiet >/dev/null ||
      die "$EXIT_AUTH" "Google refused the OIDC token or the impersonation of $GCP_DEPLOYER_SA (message above): check the provider's attribute condition and the service account's roles/iam.workloadIdentityUser binding for this project and branch"
  elif [[ -n ${GCP_SA_KEY_B64:-} ]]; then
    use_private_gcloud_config
    local key=$private/sa-key.json
    (umask 077 && printf '%s' "$GCP_SA_KEY_B64" | base64 -d >"$key" 2>/dev/null) ||
      die "$EXIT_AUTH" "GCP_SA_KEY_B64 is not valid base64"
    log "authenticating with the service-account key in GCP_SA_KEY_B64 (fallback; prefer WIF)"
    gcloud_run auth activate-service-account --key-file="$key" ||
      die "$EXIT_AUTH" "gcloud rejected the service-account key (or the token endpoint refused it)"
  else
    if [[ ${SKIP_WITHOUT_CREDENTIALS:-} == true ]]; then
      service="Deployment Manager"
      [[ $engine == infra-manager ]] && service="Infrastructure Manager"
      log "SKIPPED: no GCP credentials configured (GCP_WIF_PROVIDER + GCP_DEPLOYER_SA, or GCP_SA_KEY_B64); nothing was checked against $service"
      exit 0
    fi
    if [[ -n ${CLOUDSDK_AUTH_ACCESS_TOKEN_FILE:-} ]]; then
      # gcloud's auth/access_token_file property: a bare token, e.g. for a local emulator.
      use_private_gcloud_config
      log "using the access token in CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"
      return 0
    fi
    local account
    account=$(gcloud config get-value account 2>/dev/null || true)
    [[ -n $account ]] || die "$EXIT_AUTH" "no credentials: set GCP_WIF_PROVIDER + GCP_DEPLOYER_SA, or GCP_SA_KEY_B64, or run gcloud auth login"
    log "using gcloud's active account $account"
  fi
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


# The IP a deploy ends with: written for the smoke test, and printed.
publish_ip() {
  mkdir -p "$out_dir"
  printf '%s\n' "$1" >"$out_dir/public-ip"
  echo "Public IP: $1"
  echo "URL: http://$1/"
}

authenticate
if [[ $action == auth-only ]]; then
  log "authenticated; --auth-only: stopping here"
  exit 0
fi

# shellcheck source=scripts/lib/dm.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/$engine.sh"
case $action in
  deploy) engine_deploy ;;
  preview) engine_preview ;;
  last-good) engine_last_good ;;
  record-good)
    engine_record_good "$good_commit"
    log "recorded $good_commit as the last good version of $deployment ($LAST_GOOD_LABEL label)"
    ;;
esac
