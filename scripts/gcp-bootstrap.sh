#!/usr/bin/env bash
# The one setup of a project for the CircleCI pipeline, for either engine: APIs, the deployer,
# preview and drift-check service accounts and their roles, the roles `make repair` needs for the
# people in OPERATORS, Workload Identity Federation for CircleCI's OIDC tokens (no keys), and at
# the end every variable the pipeline reads, per CircleCI context.
#
#   scripts/gcp-bootstrap.sh --engine infra-manager   set up Infrastructure Manager deploys
#   scripts/gcp-bootstrap.sh --engine dm              set up Deployment Manager deploys
#   scripts/gcp-bootstrap.sh --engine ENGINE --dry-run  print every gcloud command, run none
#
# Run it as a project owner, with gcloud logged in. Safe to re-run: each resource is described
# first and created only when missing (a custom role is updated to the permissions below); an
# existing OIDC provider is updated to the mapping and condition below; role bindings are
# idempotent. Every gcloud command is printed before it runs. Set the variables below, or
# export them. Each identity gets only what its engine's deploy or preview calls need (see
# docs/operations.md for the list and the reason for each role).
#
# Exit codes: 0 done (or printed, with --dry-run); 2 usage: an unknown flag, no --engine, or a
# setting left unset; any other: the gcloud command printed last failed (its message is above).
set -euo pipefail

# --- Settings ---------------------------------------------------------------------------------
PROJECT_ID=${PROJECT_ID:-}
PROJECT_NUMBER=${PROJECT_NUMBER:-} # looked up from PROJECT_ID when empty
CIRCLE_ORG_ID=${CIRCLE_ORG_ID:-}   # CircleCI: Organization Settings > Overview
CIRCLE_PROJECT_ID=${CIRCLE_PROJECT_ID:-} # CircleCI: Project Settings > Overview
POOL=${POOL:-circleci}
PROVIDER=${PROVIDER:-circleci}
DEPLOY_REF=${DEPLOY_REF:-refs/heads/master} # the only ref that may impersonate the deployer
DEPLOYER=${DEPLOYER:-hello-deployer}         # service account ids (the part before the @)
PREVIEWER=${PREVIEWER:-hello-previewer}
DRIFT_CHECKER=${DRIFT_CHECKER:-hello-drift-check}
IM_LOCATION=${IM_LOCATION:-us-central1} # Infrastructure Manager's location and the bucket's
# Infrastructure Manager runs Terraform as a service account of ours: deploys as
# IM_RUNNER (rights to change the stack's resources), branch previews as IM_PREVIEW_RUNNER
# (read only), so branch code never runs with rights to change anything.
IM_RUNNER=${IM_RUNNER:-hello-infra-manager}
IM_PREVIEW_RUNNER=${IM_PREVIEW_RUNNER:-hello-infra-manager-preview}

# The uptime check, its email channel and its alert (vm.py): the three predefined roles Google
# names for creating them through the API (https://cloud.google.com/monitoring/uptime-checks/,
# "Before you begin"), each limited to its own object type; they hold the
# monitoring.{uptimeCheckConfigs,notificationChannels,alertPolicies}.{create,get,update,delete}
# permissions the create/patch/delete methods require
# (https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.uptimeCheckConfigs/create).
# Terraform creates them as IM_RUNNER; Deployment Manager as its own service agent.
MONITORING_ROLES=(
  roles/monitoring.uptimeCheckConfigEditor
  roles/monitoring.notificationChannelEditor
  roles/monitoring.alertPolicyEditor
)

# --- Deployment Manager (--engine dm) ---------------------------------------------------------
# DM creates the resources itself, as its Google APIs service agent; the deployer only manages
# deployments.
DM_DEPLOYER_ROLES=(roles/deploymentmanager.editor)
# Branch previews: exactly what `deploy.sh --preview` calls (a DM preview is a deployment of the
# branch's own, created with preview=true, read, compared with production's manifest and
# deleted), and no compute rights.
DM_PREVIEW_ROLE=helloDeploymentPreviewer
DM_PREVIEW_PERMISSIONS=(
  deploymentmanager.deployments.create
  deploymentmanager.deployments.delete
  deploymentmanager.deployments.get
  deploymentmanager.manifests.get
  deploymentmanager.operations.get
  deploymentmanager.resources.list
)

# --- Infrastructure Manager (--engine infra-manager) -----------------------------------------
# The deployer manages IM deployments and may hand IM_RUNNER to IM (roles/iam.serviceAccountUser
# on that account only).
IM_DEPLOYER_ROLES=(roles/config.admin)
IM_RUNNER_ROLES=(
  roles/config.agent
  roles/compute.networkAdmin
  roles/compute.securityAdmin
  roles/compute.instanceAdmin.v1
  "${MONITORING_ROLES[@]}"
)
IM_PREVIEW_RUNNER_ROLES=(roles/config.agent roles/compute.viewer roles/monitoring.viewer)
# The previewer: a preview against production, exported and deleted; it may hand
# IM_PREVIEW_RUNNER (only) to IM.
IM_PREVIEW_ROLE=helloInfraManagerPreviewer
IM_PREVIEW_PERMISSIONS=(
  config.deployments.get
  config.operations.get
  config.previews.create
  config.previews.delete
  config.previews.export
  config.previews.get
)
# `--local-source` uploads as the caller (gcloud's command_lib/infra_manager/deploy_util.py):
# it gets the staging bucket PROJECT_infra_manager_staging, checks that the project owns it
# (buckets.list on the project), uploads, and after an apply deletes older staged sources. The
# bucket is created here, so nobody needs storage.buckets.create, and the object rights are
# granted on that bucket only. A preview only uploads (no delete: it cannot replace a source).
STAGING_LIST_ROLE=helloStagingBucketList
STAGING_LIST_PERMISSIONS=(storage.buckets.list)
STAGING_WRITE_ROLE=helloStagingSourceWriter
STAGING_WRITE_PERMISSIONS=(
  storage.buckets.get
  storage.objects.create
  storage.objects.delete
  storage.objects.list
)
STAGING_UPLOAD_ROLE=helloStagingSourceUploader
STAGING_UPLOAD_PERMISSIONS=(storage.buckets.get storage.objects.create)

# --- The scheduled drift check (either engine) ----------------------------------------------
# `make drift` in CI (docs/ci.md) compares the live Compute Engine resources with
# deployment.yaml on master; it reads nothing else and changes nothing. Compute Viewer is
# "Read-only access to get and list Compute Engine resources, without being able to read the
# data stored on them" (cloud.google.com/iam/docs/roles-permissions/compute).
DRIFT_CHECKER_ROLES=(roles/compute.viewer)

# --- Who may run `make repair` (either engine) ----------------------------------------------
# Repair changes the live resources through the Compute Engine API with the caller's own
# credentials (docs/deploy-failures.md), which neither engine's deployer holds: firewall rules
# (Compute Security Admin: firewalls.* and networks.updatePolicy), the VM and its disk (Compute
# Instance Admin (v1)), the network, subnet and address (Compute Network Admin). OPERATORS lists
# the members to grant them to, comma-separated (user:you@example.com,group:ops@example.com);
# empty grants nobody.
OPERATORS=${OPERATORS:-}
OPERATOR_ROLES=(roles/compute.securityAdmin roles/compute.instanceAdmin.v1 roles/compute.networkAdmin)

# --- Workload Identity Federation -------------------------------------------------------------
# google.subject is CircleCI's project id (36 bytes): Google caps it at 127 bytes, and the sub
# claim of CIRCLE_OIDC_TOKEN_V2 (org, project, user, repo URL, ref) exceeds that for most repos.
# The ref and origin stay custom attributes (no length cap) for bindings and audit; a token
# without them (a pipeline not started from the repository) maps them to ''.
vcs_claim() { printf "'oidc.circleci.com/%s' in assertion ? assertion['oidc.circleci.com/%s'] : ''" "$1" "$1"; }
ATTRIBUTE_MAPPING="google.subject=assertion['oidc.circleci.com/project-id']"
ATTRIBUTE_MAPPING+=",attribute.project_id=assertion['oidc.circleci.com/project-id']"
ATTRIBUTE_MAPPING+=",attribute.vcs_ref=$(vcs_claim vcs-ref)"
ATTRIBUTE_MAPPING+=",attribute.vcs_origin=$(vcs_claim vcs-origin)"
# Admits tokens of this one CircleCI project of this organization, and no job re-run with SSH
# (a person with a shell must not hold the deploy credentials). The bindings further down decide
# which service account an admitted token may become.
attribute_condition() {
  printf "assertion.aud == '%s' && assertion['oidc.circleci.com/project-id'] == '%s'" \
    "$CIRCLE_ORG_ID" "$CIRCLE_PROJECT_ID"
  printf " && !('oidc.circleci.com/ssh-rerun' in assertion && assertion['oidc.circleci.com/ssh-rerun'])"
}

dry_run=false
engine=
while (($#)); do
  case "$1" in
    --dry-run) dry_run=true ;;
    --engine)
      engine=${2:-}
      shift
      ;;
    --engine=*) engine=${1#--engine=} ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "gcp-bootstrap: unknown argument: $1 (try --help)" >&2
      exit 2
      ;;
  esac
  shift
done

[[ $engine == dm || $engine == infra-manager ]] || {
  echo "gcp-bootstrap: say which engine: --engine infra-manager or --engine dm (Deployment Manager reached end of support on 2026-03-31)" >&2
  exit 2
}
for name in PROJECT_ID CIRCLE_ORG_ID CIRCLE_PROJECT_ID; do
  [[ -n ${!name} ]] || {
    echo "gcp-bootstrap: set $name (edit the top of $0, or export it)" >&2
    exit 2
  }
done

# Prints a command (shell-quoted, so it can be pasted) and runs it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  "$dry_run" || "$@"
}

# Prints a describe command and runs it quietly: true when the resource exists. In a dry run
# nothing is asked, so every create is printed.
exists() {
  printf '+'
  printf ' %q' "$@"
  printf ' # exists?\n'
  "$dry_run" && return 1
  "$@" >/dev/null 2>&1
}

if [[ -z $PROJECT_NUMBER ]]; then
  if "$dry_run"; then
    PROJECT_NUMBER=PROJECT_NUMBER
  else
    PROJECT_NUMBER=$(gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)')
  fi
fi
pool_name=projects/$PROJECT_NUMBER/locations/global/workloadIdentityPools/$POOL
sa_email() { echo "$1@$PROJECT_ID.iam.gserviceaccount.com"; }
deployer_sa=$(sa_email "$DEPLOYER")
previewer_sa=$(sa_email "$PREVIEWER")
drift_checker_sa=$(sa_email "$DRIFT_CHECKER")
# gcloud's default staging bucket name (command_lib/infra_manager/staging_bucket_util.py)
staging_bucket=gs://${PROJECT_ID//[.:]/_}_infra_manager_staging
staging_bucket=${staging_bucket//google/elgoog}

# APIs: the engine, Compute and Monitoring for the stack; IAM, STS and IAM Credentials for WIF.
apis=(compute.googleapis.com monitoring.googleapis.com cloudresourcemanager.googleapis.com
  iam.googleapis.com iamcredentials.googleapis.com sts.googleapis.com)
if [[ $engine == dm ]]; then
  apis+=(deploymentmanager.googleapis.com)
else
  apis+=(config.googleapis.com storage.googleapis.com)
fi
run gcloud services enable --project "$PROJECT_ID" "${apis[@]}"

ensure_service_account() {
  local id=$1 display=$2
  exists gcloud iam service-accounts describe "$(sa_email "$id")" --project "$PROJECT_ID" ||
    run gcloud iam service-accounts create "$id" --project "$PROJECT_ID" --display-name "$display"
}

# A custom role with exactly these permissions (updated to them when it exists).
ensure_custom_role() {
  local id=$1 title=$2 permissions
  shift 2
  permissions=$(IFS=,; echo "$*")
  if exists gcloud iam roles describe "$id" --project "$PROJECT_ID"; then
    run gcloud iam roles update "$id" --project "$PROJECT_ID" --quiet --format=none \
      --permissions "$permissions"
  else
    run gcloud iam roles create "$id" --project "$PROJECT_ID" --title "$title" --format=none \
      --permissions "$permissions"
  fi
}

grant_project_role() {
  grant_member_role "serviceAccount:$1" "$2"
}

grant_member_role() {
  run gcloud projects add-iam-policy-binding "$PROJECT_ID" --condition=None --format=none \
    --member "$1" --role "$2"
}

# $1 may hand the service account $2 to a Google service (IM runs Terraform as $2).
grant_account_use() {
  run gcloud iam service-accounts add-iam-policy-binding "$2" \
    --project "$PROJECT_ID" --format=none \
    --member "serviceAccount:$1" --role roles/iam.serviceAccountUser
}

grant_bucket_role() {
  run gcloud storage buckets add-iam-policy-binding "$staging_bucket" --format=none \
    --member "serviceAccount:$1" --role "projects/$PROJECT_ID/roles/$2"
}

ensure_service_account "$DEPLOYER" "CircleCI deployer (master)"
ensure_service_account "$PREVIEWER" "CircleCI branch previews"
ensure_service_account "$DRIFT_CHECKER" "CircleCI scheduled drift check (read only)"
for role in "${DRIFT_CHECKER_ROLES[@]}"; do
  grant_project_role "$drift_checker_sa" "$role"
done

IFS=, read -r -a operators <<<"$OPERATORS"
for member in "${operators[@]}"; do
  for role in "${OPERATOR_ROLES[@]}"; do
    grant_member_role "$member" "$role"
  done
done

if [[ $engine == dm ]]; then
  for role in "${DM_DEPLOYER_ROLES[@]}"; do
    grant_project_role "$deployer_sa" "$role"
  done
  ensure_custom_role "$DM_PREVIEW_ROLE" "Deployment Manager branch preview" \
    "${DM_PREVIEW_PERMISSIONS[@]}"
  grant_project_role "$previewer_sa" "projects/$PROJECT_ID/roles/$DM_PREVIEW_ROLE"
else
  im_runner_sa=$(sa_email "$IM_RUNNER")
  im_preview_runner_sa=$(sa_email "$IM_PREVIEW_RUNNER")
  ensure_service_account "$IM_RUNNER" "Infrastructure Manager runs Terraform as this"
  for role in "${IM_RUNNER_ROLES[@]}"; do
    grant_project_role "$im_runner_sa" "$role"
  done
  ensure_service_account "$IM_PREVIEW_RUNNER" "Infrastructure Manager plans branch previews as this"
  for role in "${IM_PREVIEW_RUNNER_ROLES[@]}"; do
    grant_project_role "$im_preview_runner_sa" "$role"
  done

  for role in "${IM_DEPLOYER_ROLES[@]}"; do
    grant_project_role "$deployer_sa" "$role"
  done
  grant_account_use "$deployer_sa" "$im_runner_sa"
  ensure_custom_role "$IM_PREVIEW_ROLE" "Infrastructure Manager branch preview" \
    "${IM_PREVIEW_PERMISSIONS[@]}"
  grant_project_role "$previewer_sa" "projects/$PROJECT_ID/roles/$IM_PREVIEW_ROLE"
  grant_account_use "$previewer_sa" "$im_preview_runner_sa"

  exists gcloud storage buckets describe "$staging_bucket" --project "$PROJECT_ID" ||
    run gcloud storage buckets create "$staging_bucket" --project "$PROJECT_ID" \
      --location "$IM_LOCATION" --uniform-bucket-level-access
  ensure_custom_role "$STAGING_LIST_ROLE" "Find the Infrastructure Manager staging bucket" \
    "${STAGING_LIST_PERMISSIONS[@]}"
  ensure_custom_role "$STAGING_WRITE_ROLE" "Stage and clean up Terraform sources" \
    "${STAGING_WRITE_PERMISSIONS[@]}"
  ensure_custom_role "$STAGING_UPLOAD_ROLE" "Stage Terraform sources for a preview" \
    "${STAGING_UPLOAD_PERMISSIONS[@]}"
  for sa in "$deployer_sa" "$previewer_sa"; do
    grant_project_role "$sa" "projects/$PROJECT_ID/roles/$STAGING_LIST_ROLE"
  done
  grant_bucket_role "$deployer_sa" "$STAGING_WRITE_ROLE"
  grant_bucket_role "$previewer_sa" "$STAGING_UPLOAD_ROLE"
fi

# The pool and CircleCI's OIDC provider (issuer and audience as CircleCI documents them: the
# issuer is per organization, the audience is the organization id).
exists gcloud iam workload-identity-pools describe "$POOL" --project "$PROJECT_ID" \
  --location global ||
  run gcloud iam workload-identity-pools create "$POOL" --project "$PROJECT_ID" \
    --location global --display-name "CircleCI"
provider_verb=update-oidc
exists gcloud iam workload-identity-pools providers describe "$PROVIDER" \
  --project "$PROJECT_ID" --location global --workload-identity-pool "$POOL" ||
  provider_verb=create-oidc
run gcloud iam workload-identity-pools providers "$provider_verb" "$PROVIDER" \
  --project "$PROJECT_ID" --location global --workload-identity-pool "$POOL" \
  --issuer-uri "https://oidc.circleci.com/org/$CIRCLE_ORG_ID" \
  --allowed-audiences "$CIRCLE_ORG_ID" \
  --attribute-mapping "$ATTRIBUTE_MAPPING" \
  --attribute-condition "$(attribute_condition)"

# Who may become whom: only a token for DEPLOY_REF may impersonate the deployer or the drift
# checker (the schedule runs on it); any branch of this CircleCI project may impersonate the
# previewer. (The provider's condition already
# admits only this project, so a vcs_ref principal set holds this project's tokens only.)
run gcloud iam service-accounts add-iam-policy-binding "$deployer_sa" \
  --project "$PROJECT_ID" --format=none --role roles/iam.workloadIdentityUser \
  --member "principalSet://iam.googleapis.com/$pool_name/attribute.vcs_ref/$DEPLOY_REF"
run gcloud iam service-accounts add-iam-policy-binding "$drift_checker_sa" \
  --project "$PROJECT_ID" --format=none --role roles/iam.workloadIdentityUser \
  --member "principalSet://iam.googleapis.com/$pool_name/attribute.vcs_ref/$DEPLOY_REF"
run gcloud iam service-accounts add-iam-policy-binding "$previewer_sa" \
  --project "$PROJECT_ID" --format=none --role roles/iam.workloadIdentityUser \
  --member "principalSet://iam.googleapis.com/$pool_name/attribute.project_id/$CIRCLE_PROJECT_ID"

# Every variable deploy.sh reads that is not its default, per context.
context() { # name, restriction, the identity, IM's runner for it
  printf '  %s  (%s)\n' "$1" "$2"
  printf '    %s\n' "DEPLOY_ENGINE=$engine" "GCP_PROJECT=$PROJECT_ID" \
    "GCP_WIF_PROVIDER=$pool_name/providers/$PROVIDER" "GCP_DEPLOYER_SA=$3"
  if [[ $engine == infra-manager && -n ${4:-} ]]; then
    printf '    %s\n' "IM_SERVICE_ACCOUNT=$4" "IM_LOCATION=$IM_LOCATION"
  fi
}
echo
echo "CircleCI contexts (Organization Settings > Contexts):"
context gcp-deploy 'restrict to: pipeline.git.branch == "master"' "$deployer_sa" \
  "${im_runner_sa:-}"
context gcp-preview 'no restriction' "$previewer_sa" "${im_preview_runner_sa:-}"
context gcp-drift 'restrict to: pipeline.git.branch == "master"; the drift-check schedule' \
  "$drift_checker_sa"
if [[ $engine == infra-manager ]]; then
  cat <<EOF

Branch previews: deploy.sh --preview uploads the branch's Terraform to $staging_bucket and
asks Infrastructure Manager for a preview against the live deployment, planned as
$im_preview_runner_sa (read only); the plan is exported, summarised and the preview
deleted. The previewer cannot create, change or delete a deployment, nor hand IM the
account that deploys.
EOF
fi
