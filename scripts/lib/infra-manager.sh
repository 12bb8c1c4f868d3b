# shellcheck shell=bash
# shellcheck disable=SC2154 # config, deployment, private, ... are set by scripts/deploy.sh
#
# The Infrastructure Manager engine of scripts/deploy.sh (DEPLOY_ENGINE=infra-manager), sourced by
# it after authentication; it uses deploy.sh's log, die, gcloud_run, with_retries, publish_ip and
# exit codes. scripts/lib/dm.sh is the other engine, with the same verbs (engine_deploy,
# engine_preview, engine_last_good, engine_record_good; a rollback is engine_deploy of an older
# commit's config, scripts/rollback.sh).
#
# Deploy: deployment.yaml is expanded and written as Terraform JSON (`dmlocal terraform`, the same
# resources, names, firewall rules, labels and metadata as the Deployment Manager expansion), then
#   gcloud infra-manager deployments apply projects/P/locations/L/deployments/NAME
#     --local-source=DIR --service-account=SA --input-values=project=P
# which uploads DIR to the project's staging bucket and creates or updates the deployment as one
# new revision; gcloud waits for it. The resources and the public IP come from that revision:
# `resources list --revision` and the Terraform output PUBLIC_IP_OUTPUT.
#
# --import-existing-resources is always passed: after a deployment was deleted with the ABANDON
# policy (the incident runbook), its resources still exist, and a plain create would fail on
# each one with "already exists"; with the flag, Infrastructure Manager adopts them instead, so a
# re-run brings the deployment back with the same instance and IP. It only adopts resources with
# the names this config gives them.
#
# The last good version is the deployment's label LAST_GOOD_LABEL. gcloud has no metadata-only
# update for Infrastructure Manager (`deployments apply` is its one write, and the API's PATCH
# always carries a blueprint), so recording it is an apply of the same Terraform with --labels:
# a revision that changes no resource. A plain apply keeps the labels (gcloud sends the live ones
# back when --labels is not given); --labels replaces them all, so the others are passed along.
#
# Preview: `previews create` (against the deployment when it exists), `previews export` of the
# JSON plan, a create/update/replace/delete summary per resource, then `previews delete`.
#
# Settings (environment), besides deploy.sh's:
#   IM_LOCATION         Infrastructure Manager location; default: us-central1
#   IM_SERVICE_ACCOUNT  the service account Terraform runs as (email or
#                       projects/P/serviceAccounts/EMAIL);
#                       default: hello-infra-manager@PROJECT.iam.gserviceaccount.com, the
#                       account scripts/gcp-bootstrap.sh creates
#   IM_TF_VERSION       Terraform version constraint; default: =1.5.7 (the newest it offers that
#                       this Terraform was written for)
#   IM_ADOPT            true: also write import blocks for the resources as Deployment Manager
#                       named them (the migration, docs/migration.md); default: false
#   DMLOCAL             the dmlocal command; default: dmlocal on PATH, else .venv/bin/dmlocal

im_setup() {
  im_project=${GCP_PROJECT:-${CLOUDSDK_CORE_PROJECT:-}}
  if [[ -z $im_project ]]; then
    im_project=$(gcloud config get-value project 2>/dev/null || true)
  fi
  [[ -n $im_project ]] || die "$EXIT_USAGE" "no project: set GCP_PROJECT"
  local location=${IM_LOCATION:-us-central1}
  local account=${IM_SERVICE_ACCOUNT:-hello-infra-manager@$im_project.iam.gserviceaccount.com}
  [[ $account == projects/* ]] || account="projects/$im_project/serviceAccounts/$account"
  im_location_path="projects/$im_project/locations/$location"
  im_deployment="$im_location_path/deployments/$deployment"
  im_flags=(
    --service-account="$account"
    --input-values="project=$im_project"
    --local-source="$private/terraform"
  )
  im_dmlocal=${DMLOCAL:-$(command -v dmlocal || echo "$(dirname "${BASH_SOURCE[0]}")/../../.venv/bin/dmlocal")}
  [[ -x $im_dmlocal ]] || die "$EXIT_USAGE" "dmlocal not found: run make (it installs .venv) or set DMLOCAL"
}

# deployment.yaml as Terraform JSON in $private/terraform; a config error is a rejection.
im_render() {
  local -a adopt=()
  if [[ ${IM_ADOPT:-false} == true ]]; then
    adopt=(--project "$im_project")
    log "IM_ADOPT=true: writing import blocks that adopt $im_project's existing resources"
  fi
  "$im_dmlocal" terraform "$config" --out "$private/terraform" --deployment "$deployment" \
    "${adopt[@]}" >/dev/null 2>"$stderr_file" || {
    cat "$stderr_file" >&2
    die "$EXIT_REJECTED" "could not write Terraform from $config (error above); nothing was deployed"
  }
}

im_busy() {
  grep -q 'ABORTED\|code=409\|HTTPError 409\|is locked' "$stderr_file"
}

# One apply attempt, with any extra flags given. Returns 0 on success, 75 when busy (retry),
# else dies.
im_apply() {
  log "apply of $im_deployment from $config (Terraform in $private/terraform)"
  if gcloud_run infra-manager deployments apply "$im_deployment" "${im_flags[@]}" \
    --tf-version-constraint="${IM_TF_VERSION:-=1.5.7}" --import-existing-resources \
    --format='value(latestRevision)' "$@" >"$private/revision"; then
    return 0
  fi
  im_busy && return 75
  local state
  state=$(gcloud infra-manager deployments describe "$im_deployment" \
    --format='value(state,errorCode,latestRevision)' 2>/dev/null || true)
  if [[ $state == FAILED*REVISION_FAILED* ]]; then
    die "$EXIT_REJECTED" "Infrastructure Manager rejected revision ${state##*/} (errors above); the resources and the last applied revision are unchanged"
  fi
  die "$EXIT_API" "apply of $im_deployment failed (see gcloud's message above)"
}

engine_deploy() {
  im_setup
  im_render
  with_retries im_apply
  local revision
  revision=$(<"$private/revision")
  log "deployment $deployment applied as revision ${revision##*/}"
  gcloud infra-manager resources list --revision="$revision" \
    --format='table(terraformInfo.address:label=RESOURCE,terraformInfo.id:label=ID,intent,state)'
  local ip
  ip=$(gcloud infra-manager revisions describe "$revision" \
    --format="value(applyResults.outputs.$ip_output.value)" 2>"$stderr_file" || true)
  [[ $ip =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    die "$EXIT_NO_IP" "deployed, but revision ${revision##*/} has no Terraform output '$ip_output' holding an IP"
  log "deployment $deployment is up to date"
  publish_ip "$ip"
}

# The deployment's labels, one KEY=VALUE a line; nothing when it does not exist.
im_labels() {
  if ! gcloud infra-manager deployments describe "$im_deployment" --format='json(labels)' \
    >"$private/labels.json" 2>"$stderr_file"; then
    grep -q 'NOT_FOUND\|code=404' "$stderr_file" && return 0
    cat "$stderr_file" >&2
    die "$EXIT_API" "could not read the labels of $im_deployment (see gcloud's message above)"
  fi
  python3 -c 'import json, sys
for key, value in (json.load(sys.stdin).get("labels") or {}).items():
    print(f"{key}={value}")' <"$private/labels.json"
}

engine_last_good() {
  im_setup
  im_labels | sed -n "s/^$LAST_GOOD_LABEL=//p"
}

engine_record_good() {
  im_setup
  local labels
  labels=$(im_labels | sed "/^$LAST_GOOD_LABEL=/d" | tr '\n' ',')
  im_render
  with_retries im_apply --labels="$labels$LAST_GOOD_LABEL=$1"
}

im_preview_create() {
  gcloud_run infra-manager previews create "$im_preview" "${im_against[@]}" "${im_flags[@]}" \
    --format=none && return 0
  im_busy && return 75
  im_preview_delete
  die "$EXIT_REJECTED" "the preview failed (errors above); nothing was changed"
}

im_preview_delete() {
  gcloud infra-manager previews delete "$im_preview" --quiet --format=none 2>"$stderr_file" ||
    log "warning: could not delete $im_preview; delete it by hand: gcloud infra-manager previews delete $im_preview"
}

engine_preview() {
  im_setup
  im_render
  im_against=()
  if gcloud infra-manager deployments describe "$im_deployment" --format='value(name)' \
    >/dev/null 2>"$stderr_file"; then
    im_against=(--deployment="$im_deployment")
  elif grep -q 'NOT_FOUND\|code=404' "$stderr_file"; then
    log "deployment $deployment does not exist: previewing its creation"
  else
    cat "$stderr_file" >&2
    die "$EXIT_API" "could not read $im_deployment (see gcloud's message above)"
  fi
  im_preview="$im_location_path/previews/$deployment-preview-$(date +%s)"
  with_retries im_preview_create
  gcloud_run infra-manager previews export "$im_preview" --file="$private/plan" ||
    {
      im_preview_delete
      die "$EXIT_API" "could not export the preview's plan"
    }
  im_summarize_plan "$private/plan.json"
  im_preview_delete
  log "preview of $deployment done; nothing was changed"
}

# Terraform's JSON plan, one line per resource change, then the totals.
im_summarize_plan() {
  python3 - "$1" <<'PY'
import json
import sys

words = {
    ("create",): "create",
    ("update",): "update",
    ("delete",): "delete",
    ("delete", "create"): "replace",
    ("create", "delete"): "replace",
    ("no-op",): "unchanged",
}
counts = dict.fromkeys(["create", "update", "replace", "delete", "unchanged"], 0)
for change in json.load(open(sys.argv[1])).get("resource_changes", []):
    word = words.get(tuple(change["change"]["actions"]), "/".join(change["change"]["actions"]))
    counts[word] = counts.get(word, 0) + 1
    imported = " (import)" if change["change"].get("importing") else ""
    if word != "unchanged" or imported:
        print(f"  {word:<9} {change['address']}{imported}")
print("Plan: " + ", ".join(f"{n} to {w}" if w != "unchanged" else f"{n} unchanged"
                           for w, n in counts.items()))
PY
}
