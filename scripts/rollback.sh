#!/usr/bin/env bash
# Redeploys the last good version of the stack: the commit recorded on the deployment when its
# smoke test last passed (scripts/deploy.sh --last-good), or the commit given. The commit's tree
# is exported from git into a temp dir; this checkout's scripts/deploy.sh deploys its config with
# the same engine (DEPLOY_ENGINE) and credentials as any deploy; scripts/smoke.sh then waits for
# that commit's greeting and version; the commit is recorded as the last good version again.
#
#   scripts/rollback.sh [--ref COMMIT] [--yes]   by hand (make rollback [REF=COMMIT]): says what
#                                it will redeploy and, on a terminal outside CI, asks first
#   scripts/rollback.sh --after-failed-smoke     the master pipeline's step after `make smoke`
#                                failed (the failure it wrote to DEPLOY_OUT_DIR/smoke-failure):
#                                rolls back, asks nothing, and always ends non-zero, naming the
#                                commit that failed, smoke's reason and the commit now live
#
# Deploys and rollbacks never overlap: in CI the rollback is a step of the deploy job, inside its
# serial group; by hand, deploy.sh's retries wait for a deploy that holds the deployment. What a
# rollback cannot undo (a recreated resource, a released address, hand changes) is in
# docs/deploy-failures.md.
#
# Settings (environment): deploy.sh's (DEPLOY_ENGINE, GCP_PROJECT, DEPLOYMENT_NAME, DM_CONFIG,
# DEPLOY_OUT_DIR, credentials, ...) and smoke.sh's (SMOKE_*); IP, the address smoke-tests
# (default: the IP the deploy wrote); CI (CircleCI sets it: never ask).
# Exit codes:
#   0  rolled back by hand; the commit is live and passed its smoke test
#   1  --after-failed-smoke: rolled back; the job still fails, for the deploy that failed smoke
#   2  usage, or a commit that is not in this clone
#   10 nothing to roll back to: no last good version is recorded yet (the first deploy), or
#      --after-failed-smoke found no smoke failure (the deploy step itself failed)
#   11 the rollback failed: its deploy or its smoke test (the message says what is live now)
#   12 declined at the prompt; nothing was changed
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

readonly EXIT_USAGE=2 EXIT_NOTHING=10 EXIT_FAILED=11 EXIT_DECLINED=12

ref=
after_failed_smoke=false
assume_yes=false
while (($#)); do
  case $1 in
    --ref)
      ref=${2:-}
      [[ -n $ref ]] || {
        echo "rollback: --ref needs a commit" >&2
        exit "$EXIT_USAGE"
      }
      shift
      ;;
    --after-failed-smoke) after_failed_smoke=true ;;
    --yes) assume_yes=true ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "rollback: unknown argument: $1 (try --help)" >&2
      exit "$EXIT_USAGE"
      ;;
  esac
  shift
done

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deployment=${DEPLOYMENT_NAME:-hello}
engine=${DEPLOY_ENGINE:-dm}
config=${DM_CONFIG:-deployment.yaml}
smoke_failure=${DEPLOY_OUT_DIR:-build/deploy}/smoke-failure

message_prefix=rollback
# shellcheck source=scripts/lib/messages.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/messages.sh"
describe() { git log -1 --format='%h "%s" (%an, %cs)' "$1"; }

git rev-parse --git-dir >/dev/null 2>&1 ||
  die "$EXIT_USAGE" "run it in the repository's checkout: it reads the commit to redeploy from git"
[[ $config != /* ]] || die "$EXIT_USAGE" "DM_CONFIG must be a path inside the repository, not $config"
if "$after_failed_smoke"; then
  [[ -z $ref ]] || die "$EXIT_USAGE" "--after-failed-smoke rolls back to the last good version; no --ref"
  [[ -f $smoke_failure ]] ||
    die "$EXIT_NOTHING" "no smoke failure recorded in $smoke_failure: the deploy failed before its smoke test, so nothing is rolled back automatically (see deploy.sh's message above and docs/deploy-failures.md)"
  failed=$(git rev-parse HEAD)
  reason=$(<"$smoke_failure")
fi

if [[ -n $ref ]]; then
  target=$(git rev-parse --verify --quiet "$ref^{commit}") ||
    die "$EXIT_USAGE" "REF=$ref is not a commit in this clone (git fetch, then try again)"
else
  target=$(bash "$scripts/deploy.sh" --last-good) || exit "$?"
  if [[ -z $target ]]; then
    msg="no last good version is recorded on deployment $deployment ($engine): nothing to roll back to (the first deploy, or no deploy has passed its smoke test yet)"
    if "$after_failed_smoke"; then
      msg="commit $failed failed its smoke test ($reason) and stays live; $msg"
    fi
    die "$EXIT_NOTHING" "$msg"
  fi
  git cat-file -e "$target^{commit}" 2>/dev/null ||
    die "$EXIT_USAGE" "the last good version $target is not in this clone: fetch it (git fetch origin $target) and try again"
fi

log "will redeploy $(describe "$target") to deployment $deployment in project ${GCP_PROJECT:-${CLOUDSDK_CORE_PROJECT:-?}} with $engine"
if ! "$after_failed_smoke" && ! "$assume_yes" && [[ -z ${CI:-} && -t 0 ]]; then
  read -r -p "rollback: go ahead? [y/N] " answer
  [[ $answer == [yY]* ]] || die "$EXIT_DECLINED" "declined; nothing was changed"
fi

checkout=$(mktemp -d)
trap 'rm -rf "$checkout"' EXIT
git archive "$target" | tar -x -C "$checkout"
[[ -f $checkout/$config ]] || die "$EXIT_USAGE" "commit $target has no $config"

# What is live after a failed deploy, by deploy.sh's exit code.
live_after() {
  case $1 in
    4 | 9) echo "the deployment is unchanged: ${failed:-the version deployed before} is still live" ;;
    5) echo "whatever the other deploy that held the deployment made it" ;;
    8) echo "the deployment is a mix: the resources before the failing one are ${target:0:12}'s, the rest ${failed:-the previous version}'s" ;;
    *) echo "unknown: check gcloud's message above and the deployment's state" ;;
  esac
}

rc=0
DM_CONFIG=$checkout/$config bash "$scripts/deploy.sh" || rc=$?
if ((rc != 0)); then
  die "$EXIT_FAILED" "the rollback to ${target:0:12} FAILED: its deploy exited $rc (above). Live now: $(live_after "$rc")"
fi
rc=0
SMOKE_CHECKOUT=$checkout bash "$scripts/smoke.sh" ${IP:+"$IP"} || rc=$?
if ((rc != 0)); then
  die "$EXIT_FAILED" "the rollback FAILED: ${target:0:12} is deployed but fails its smoke test too ($(<"$smoke_failure")). Live now: ${target:0:12}'s config, not serving as expected"
fi
DM_CONFIG=$checkout/$config bash "$scripts/deploy.sh" --record-good "$target"

if "$after_failed_smoke"; then
  die 1 "commit $failed failed its smoke test ($reason); rolled back: $target, the last good version, is live again and passed its smoke test"
fi
log "rolled back: $target is live and passed its smoke test"
