# shellcheck shell=bash
# shellcheck disable=SC2154 # config, deployment, private, ... are set by scripts/deploy.sh
#
# The Deployment Manager engine of scripts/deploy.sh (DEPLOY_ENGINE=dm), sourced by it after
# authentication; it uses deploy.sh's log, die, gcloud_run, with_retries, publish_ip and exit
# codes. scripts/lib/infra-manager.sh is the other engine, with the same verbs:
#   engine_deploy             create or update the deployment from $config; write the public IP
#   engine_preview            DM's server-side preview on the branch's own deployment, and what
#                             changes against the live manifest
#   engine_last_good          print the commit recorded as the last good version (or nothing)
#   engine_record_good SHA    record SHA as the last good version
# A rollback is engine_deploy of an older commit's config (scripts/rollback.sh): Deployment
# Manager has no rollback of its own.
#
# Delete policy: updates run with --delete-policy=DELETE. deployment.yaml is the truth, so a
# resource removed from it (say a firewall rule) is removed from the project; ABANDON would leave
# it live and unmanaged, which for an "allow" rule is an open door nobody sees in code. Nothing
# here deletes the live deployment; the instance carries deletion protection against that.
#
# Previews never touch the live deployment: DM keeps one preview per deployment, so previews on
# its name would cancel each other, and a preview job killed mid-run would leave branch config
# pending there. Each branch previews on its own deployment, which only ever holds preview
# shells; it is deleted with --delete-policy=ABANDON on exit (and, after a SIGKILL, at the start
# of the branch's next preview), so even a mistake there cannot delete a real resource.
#
# The last good version is the deployment's label LAST_GOOD_LABEL, set with a metadata-only
# update (`deployments update NAME --update-labels`, which gcloud sends with no target and the
# X-Cloud-DM-Patch header: no resource is touched, no manifest is made). A config update keeps
# the labels: gcloud sends the live ones back when none are given.

# Classifies the last failure: partial (the operation stopped at a resource: DM reports
# RESOURCE_ERROR located at /deployments/NAME/resources/NAME) or rejected (any other operation
# error: the config failed before a resource was touched), checked first as their text may
# quote anything; shutdown (Google's answer for an API that is turned off for the project, 403
# SERVICE_DISABLED); busy (HTTP 409/412: someone else is deploying), missing (404), or api.
dm_last_failure() {
  if grep -q 'Error in Operation' "$stderr_file"; then
    if grep -Eq 'code: RESOURCE_ERROR|location: /deployments/[^/ ]+/resources/' "$stderr_file"; then
      echo partial
    else
      echo rejected
    fi
  elif grep -q 'code=403' "$stderr_file" &&
    grep -qi 'SERVICE_DISABLED\|accessNotConfigured\|has not been used in project\|it is disabled' "$stderr_file"; then
    echo shutdown
  elif grep -q 'code=409\|code=412' "$stderr_file"; then
    echo busy
  elif grep -q 'code=404\|NOT_FOUND:' "$stderr_file"; then
    echo missing
  else
    echo api
  fi
}

# One create-or-update attempt. Returns 0 on success, 75 when busy (retry), else dies.
# `gcloud ... update` first reads the deployment (GET) and then updates it (PUT); when the read
# says 404 the deployment does not exist and is created instead. That is describe -> update or
# create at the API level, in one gcloud process fewer than a separate describe.
dm_create_or_update() {
  local verb=update
  log "create-or-update of $deployment from $config"
  if hide_not_found=true gcloud_run deployment-manager deployments update "$deployment" \
    --config="$config" --delete-policy=DELETE --create-policy=CREATE_OR_ACQUIRE |
    tee "$private/result"; then
    log "deployment $deployment existed: updated in place"
    return 0
  fi
  if [[ $(dm_last_failure) == missing ]]; then
    verb=create
    log "deployment $deployment does not exist: creating it"
    if gcloud_run deployment-manager deployments create "$deployment" --config="$config" |
      tee "$private/result"; then
      log "deployment $deployment created"
      return 0
    fi
  fi
  dm_fail_operation "$verb"
}

# Dies with the exit code and message that match what the failed operation left behind.
dm_fail_operation() {
  local verb=$1
  case $(dm_last_failure) in
    busy) return 75 ;;
    shutdown) die "$EXIT_DM_SHUT_DOWN" "Deployment Manager answered that its API is turned off for this project (it reached end of support on 2026-03-31); nothing was deployed. Deploy with DEPLOY_ENGINE=infra-manager after moving the stack as docs/migration.md describes; this script never switches engines by itself" ;;
    rejected) die "$EXIT_REJECTED" "Deployment Manager rejected the $verb of $deployment before applying any resource (errors above); the live deployment is unchanged" ;;
    partial) die "$EXIT_PARTIAL" "the $verb of $deployment stopped at a resource error (above). Deployment Manager applies resources in order and does not roll back: the resources before it are already changed. Fix the config and deploy again; see the state with: gcloud deployment-manager deployments describe $deployment" ;;
    *) die "$EXIT_API" "$verb of $deployment failed (see gcloud's message above)" ;;
  esac
}

# The branch's own preview deployment: DEPLOYMENT_NAME-preview-<branch slug>-<hash>, within DM's
# name rule [a-z]([-a-z0-9]{0,61}[a-z0-9])?; the hash keeps branches that slug alike apart.
dm_preview_deployment_name() {
  local branch=${CIRCLE_BRANCH:-}
  [[ -n $branch ]] || branch=$(git rev-parse --abbrev-ref HEAD 2>/dev/null) || branch=local
  local prefix=$deployment-preview- slug hash
  hash=$(printf '%s' "$branch" | sha256sum | cut -c1-6)
  slug=$(printf '%s' "$branch" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9' '-' | tr -s '-')
  slug=${slug#-}
  slug=${slug:0:$((63 - ${#prefix} - ${#hash} - 1))}
  slug=${slug%-}
  echo "$prefix${slug:+$slug-}$hash"
}

# One attempt at DM's server-side preview on the branch's deployment: expands and checks the
# config on DM itself and lists the resources (all new there, so the INTENT is CREATE_OR_ACQUIRE;
# dm_show_changes compares with the live deployment). A deployment of that name left by a killed
# run (or the branch's other preview) is removed first.
dm_create_preview() {
  log "server-side preview of $config on $deployment (production $production is not touched)"
  local try
  for try in first second; do
    if gcloud_run deployment-manager deployments create "$deployment" --config="$config" \
      --preview | tee "$private/result"; then
      return 0
    fi
    if [[ $try == second ]] || ! grep -q 'already exists' "$stderr_file"; then
      break
    fi
    log "$deployment is left from an earlier preview; removing it"
    dm_remove_preview_deployment || break
  done
  dm_fail_operation "preview"
}

# Deletes the branch's preview deployment, if any. It only ever holds preview shells, and ABANDON
# means that even so, nothing real can be deleted through it.
dm_remove_preview_deployment() {
  local attempt
  for attempt in 1 2 3 4 5; do
    if hide_not_found=true gcloud_run deployment-manager deployments delete "$deployment" \
      --delete-policy=ABANDON --quiet --format=none 2>/dev/null; then
      log "removed preview deployment $deployment"
      return 0
    fi
    [[ $(dm_last_failure) == missing ]] && return 0
    sleep "$attempt"
  done
  log "warning: could not remove preview deployment $deployment; remove it with: gcloud deployment-manager deployments delete $deployment --delete-policy=ABANDON"
  return 1
}

# What the config changes against the live deployment's last manifest (read only), and whether
# DM can apply each change in place. Returns 3 when a change needs a new resource.
dm_show_changes() {
  local live=$private/live-manifest.yaml tool=${DMLOCAL:-dmlocal}
  if ! hide_not_found=true gcloud_run deployment-manager manifests describe \
    --deployment="$production" --format=yaml >"$live"; then
    if [[ $(dm_last_failure) == missing ]]; then
      log "$production has no deployed manifest yet: every resource above would be created"
    else
      log "warning: could not read the live manifest of $production; no comparison"
    fi
    return 0
  fi
  if ! command -v "$tool" >/dev/null; then
    log "warning: $tool not found (make installs it into .venv/bin); skipped the comparison with $production"
    return 0
  fi
  local rc=0
  "$tool" changes "$config" --against "$live" || rc=$?
  case $rc in
    0) return 0 ;;
    3) return 3 ;;
    *) die "$EXIT_API" "$tool changes failed (exit $rc)" ;;
  esac
}

dm_public_ip() {
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

engine_deploy() {
  with_retries dm_create_or_update
  local ip
  ip=$(dm_public_ip) || die "$EXIT_NO_IP" "deployed, but found no public IP (output '$ip_output' or a compute.v1.address)"
  log "deployment $deployment is up to date"
  publish_ip "$ip"
}

engine_preview() {
  production=$deployment
  deployment=$(dm_preview_deployment_name)
  # Removed on every exit; INT/TERM (a cancelled CI job) become exits so the trap runs.
  trap 'dm_remove_preview_deployment || true; rm -rf "$private"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  with_retries dm_create_preview
  local changes=0
  dm_show_changes || changes=$?
  if ((changes == 3)); then
    die "$EXIT_PARTIAL" "a change above cannot be applied in place: deployed as is, the update would stop at that resource after changing the ones before it"
  fi
  log "preview of $production done (on $deployment, now removed)"
}

engine_last_good() {
  if hide_not_found=true gcloud_run deployment-manager deployments describe "$deployment" \
    --flatten=deployment.labels \
    --format='value(deployment.labels.key,deployment.labels.value)' >"$private/labels"; then
    awk -v key="$LAST_GOOD_LABEL" '$1 == key { print $2 }' "$private/labels"
  elif [[ $(dm_last_failure) != missing ]]; then
    die "$EXIT_API" "could not read the labels of $deployment (see gcloud's message above)"
  fi
}

# One attempt at the label update. Returns 0 on success, 75 when busy (retry), else dies.
dm_label() {
  gcloud_run deployment-manager deployments update "$deployment" \
    --update-labels="$LAST_GOOD_LABEL=$1" --format=none && return 0
  [[ $(dm_last_failure) == busy ]] && return 75
  die "$EXIT_API" "could not label $deployment (see gcloud's message above)"
}

engine_record_good() {
  with_retries dm_label "$1"
}
