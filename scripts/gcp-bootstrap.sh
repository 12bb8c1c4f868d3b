#!/usr/bin/env bash
# One-time GCP setup for the CircleCI pipeline: APIs, the deployer and preview service accounts
# and their roles, and Workload Identity Federation for CircleCI's OIDC tokens (no keys).
#
#   scripts/gcp-bootstrap.sh            run it (as a project owner, with gcloud logged in)
#   scripts/gcp-bootstrap.sh --dry-run  print every gcloud command, run none of them
#
# Safe to re-run: each resource is described first and created only when missing; an existing
# OIDC provider is updated to the mapping and condition below; role bindings are idempotent.
# Every gcloud command is printed before it runs. Set the variables below, or export them.
#
# Exit codes: 0 done (or printed, with --dry-run); 2 usage: an unknown flag or a setting left
# unset; any other: the gcloud command printed last failed (its message is above).
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
INFRA_MANAGER_SA=${INFRA_MANAGER_SA:-hello-infra-manager}

# The uptime check, its email channel and its alert (vm.py): the three predefined roles Google
# names for creating them through the API (https://cloud.google.com/monitoring/uptime-checks/,
# "Before you begin"), each limited to its own object type; they hold the
# monitoring.{uptimeCheckConfigs,notificationChannels,alertPolicies}.{create,get,update,delete}
# permissions the create/patch/delete methods require
# (https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.uptimeCheckConfigs/create).
MONITORING_ROLES=(
  roles/monitoring.uptimeCheckConfigEditor
  roles/monitoring.notificationChannelEditor
  roles/monitoring.alertPolicyEditor
)

# What the deployer holds on the project. Deployment Manager creates the resources itself (as its
# service agent); the compute roles let the same identity read and repair what it deployed.
DEPLOYER_ROLES=(
  roles/deploymentmanager.editor
  roles/compute.networkAdmin
  roles/compute.securityAdmin
  roles/compute.instanceAdmin.v1
  "${MONITORING_ROLES[@]}"
)
# Infrastructure Manager engine: the deployer manages IM deployments; IM runs Terraform as
# INFRA_MANAGER_SA, which needs IM's agent role plus rights on the resources it creates. The
# deployer gets roles/iam.serviceAccountUser on that one account only, to hand it to IM.
DEPLOYER_ROLES_INFRA_MANAGER=(roles/config.admin)
INFRA_MANAGER_SA_ROLES=(
  roles/config.agent
  roles/compute.networkAdmin
  roles/compute.securityAdmin
  roles/compute.instanceAdmin.v1
  "${MONITORING_ROLES[@]}"
)
# Branch previews: a custom role with only what a Deployment Manager preview calls (a preview
# is checked as create/update, so there is no read-only way to ask DM for one), and no compute
# rights and no service-account use.
PREVIEW_ROLE_ID=helloDeploymentPreviewer
PREVIEW_PERMISSIONS=(
  deploymentmanager.deployments.get
  deploymentmanager.deployments.list
  deploymentmanager.deployments.create
  deploymentmanager.deployments.update
  deploymentmanager.deployments.cancelPreview
  deploymentmanager.deployments.delete
  deploymentmanager.manifests.get
  deploymentmanager.operations.get
  deploymentmanager.resources.list
)

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
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=true ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "gcp-bootstrap: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

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
deployer_sa=$DEPLOYER@$PROJECT_ID.iam.gserviceaccount.com
previewer_sa=$PREVIEWER@$PROJECT_ID.iam.gserviceaccount.com
infra_manager_sa=$INFRA_MANAGER_SA@$PROJECT_ID.iam.gserviceaccount.com

# APIs: the two engines and Compute for the stack; IAM, STS and IAM Credentials for WIF.
run gcloud services enable --project "$PROJECT_ID" \
  deploymentmanager.googleapis.com config.googleapis.com compute.googleapis.com \
  cloudresourcemanager.googleapis.com iam.googleapis.com iamcredentials.googleapis.com \
  sts.googleapis.com monitoring.googleapis.com

ensure_service_account() {
  local id=$1 display=$2
  exists gcloud iam service-accounts describe "$id@$PROJECT_ID.iam.gserviceaccount.com" \
    --project "$PROJECT_ID" ||
    run gcloud iam service-accounts create "$id" --project "$PROJECT_ID" --display-name "$display"
}

grant_project_role() {
  run gcloud projects add-iam-policy-binding "$PROJECT_ID" --condition=None --format=none \
    --member "$1" --role "$2"
}

ensure_service_account "$DEPLOYER" "CircleCI deployer (master)"
for role in "${DEPLOYER_ROLES[@]}" "${DEPLOYER_ROLES_INFRA_MANAGER[@]}"; do
  grant_project_role "serviceAccount:$deployer_sa" "$role"
done

ensure_service_account "$INFRA_MANAGER_SA" "Infrastructure Manager runs Terraform as this"
for role in "${INFRA_MANAGER_SA_ROLES[@]}"; do
  grant_project_role "serviceAccount:$infra_manager_sa" "$role"
done
run gcloud iam service-accounts add-iam-policy-binding "$infra_manager_sa" \
  --project "$PROJECT_ID" --format=none \
  --member "serviceAccount:$deployer_sa" --role roles/iam.serviceAccountUser

ensure_service_account "$PREVIEWER" "CircleCI branch previews"
exists gcloud iam roles describe "$PREVIEW_ROLE_ID" --project "$PROJECT_ID" ||
  run gcloud iam roles create "$PREVIEW_ROLE_ID" --project "$PROJECT_ID" \
    --title "Deployment Manager preview" \
    --permissions "$(IFS=,; echo "${PREVIEW_PERMISSIONS[*]}")"
grant_project_role "serviceAccount:$previewer_sa" "projects/$PROJECT_ID/roles/$PREVIEW_ROLE_ID"

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

# Who may become whom: only a token for DEPLOY_REF may impersonate the deployer; any branch of
# this CircleCI project may impersonate the previewer. (The provider's condition already
# admits only this project, so a vcs_ref principal set holds this project's tokens only.)
run gcloud iam service-accounts add-iam-policy-binding "$deployer_sa" \
  --project "$PROJECT_ID" --format=none --role roles/iam.workloadIdentityUser \
  --member "principalSet://iam.googleapis.com/$pool_name/attribute.vcs_ref/$DEPLOY_REF"
run gcloud iam service-accounts add-iam-policy-binding "$previewer_sa" \
  --project "$PROJECT_ID" --format=none --role roles/iam.workloadIdentityUser \
  --member "principalSet://iam.googleapis.com/$pool_name/attribute.project_id/$CIRCLE_PROJECT_ID"

cat <<EOF

CircleCI contexts (Organization Settings > Contexts):
  gcp-deploy   (restrict to: pipeline.git.branch == "master")
    GCP_PROJECT=$PROJECT_ID
    GCP_WIF_PROVIDER=$pool_name/providers/$PROVIDER
    GCP_DEPLOYER_SA=$deployer_sa
  gcp-preview  (no restriction)
    GCP_PROJECT=$PROJECT_ID
    GCP_WIF_PROVIDER=$pool_name/providers/$PROVIDER
    GCP_DEPLOYER_SA=$previewer_sa
EOF
