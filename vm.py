"""The web VM: one Compute Engine instance and the static public IP it answers on.

Creates
  <name>-ip   compute.v1.address    a reserved external IPv4 address in the zone's region, so the
                                    public IP (and any DNS record or bookmark pointing at it)
                                    survives the instance being deleted and recreated.
  <name>      compute.v1.instance   Debian 12, in `subnetwork`, tagged `networkTag` for the
                                    firewall, with <name>-ip as its NAT IP.
  <name>-uptime        Cloud Monitoring uptime check     probes http(s)://<the static IP>/ every
                                                         minute from three regions and expects
                                                         the greeting (unless `uptimeCheck` is
                                                         false).
  <name>-alert-email   Cloud Monitoring email channel    `alertEmail`, and
  <name>-down-alert    Cloud Monitoring alert policy     fires when more than one region has seen
                                                         the check fail for five minutes (both only
                                                         when `alertEmail` is set).

The instance carries the app in its metadata: app/startup.sh as `startup-script` (GCE runs it on
every boot) and the app files it installs, including nginx's HTTPS front and the ACME client that
gets a certificate for the static IP from `acmeDirectory` (docs/https.md). deployment.yaml
imports those files, so the VM runs exactly the committed app/ directory. Hardening: Shielded VM,
OS Login on, project-wide SSH keys blocked, no service account (the app calls no Google API, so
there is no credential to steal), and deletion protection on by default, because losing the
hand-built VM to a delete is why this repository exists.

The uptime check and its alert live here, beside the address they probe, because whether the
check speaks HTTPS follows this template's `acmeDirectory` (a template cannot read another's
properties, only references resolved at deploy time). They answer "is the site up?" from outside,
whatever broke: the VM, the certificate, the firewall, a zone, a deploy.
"""

# What the app answers on `/` (app/app.py's GREETING); the check passes only when it is there.
GREETING = "Hello World from BenchSci!"
# Three of the four uptime regions: Monitoring needs at least three checker locations, and one
# region failing (a probe's own network trouble) must not page anyone on its own.
UPTIME_REGIONS = ["USA", "EUROPE", "ASIA_PACIFIC"]
# The alert fires when more than this many regions fail the check...
FAILING_REGIONS_THRESHOLD = 1
# ...for this long: five one-minute probes, so a single lost probe or a restart stays quiet.
ALERT_DURATION = "300s"

# Instance metadata key -> the file in deployment.yaml's imports that provides its value.
METADATA_FILES = {
    "startup-script": "app/startup.sh",
    "app-py": "app/app.py",
    "app-requirements": "app/requirements.txt",
    "app-service": "app/hello@.service",
    "app-watch-service": "app/hello-metadata-watch.service",
    "app-converge-service": "app/hello-converge.service",
    "app-converge-path": "app/hello-converge.path",
    # HTTPS: nginx in front of the app and a certificate for the static IP (app/hello-tls.sh).
    "tls-script": "app/hello-tls.sh",
    "tls-nginx-site": "app/nginx-hello.conf",
    "tls-nginx-https": "app/nginx-hello-tls.conf",
    "tls-nginx-hardening": "app/nginx-hardening.conf",
    "tls-cert-service": "app/hello-cert.service",
    "tls-cert-timer": "app/hello-cert.timer",
    "tls-acme-requirements": "app/acme-requirements.txt",
}


def GenerateConfig(context):
    name = context.env["name"]
    properties = context.properties
    zone = properties["zone"]
    region = zone.rsplit("-", 1)[0]
    address = f"{name}-ip"

    missing = [path for path in METADATA_FILES.values() if path not in context.imports]
    if missing:
        raise ValueError(
            "vm.py needs these files imported in the deployment config, under `imports:` as "
            "`- path: <file>`: " + ", ".join(missing)
        )
    metadata = [
        {"key": key, "value": context.imports[path]} for key, path in METADATA_FILES.items()
    ]
    # The CA the VM asks for its certificate; an empty directory turns HTTPS off.
    metadata.append({"key": "acme-directory", "value": properties["acmeDirectory"]})
    for key, prop in (("acme-email", "acmeEmail"), ("acme-directory-ca", "acmeDirectoryCa")):
        if properties[prop]:
            metadata.append({"key": key, "value": properties[prop]})
    metadata += [
        {"key": "enable-oslogin", "value": "TRUE"},
        {"key": "block-project-ssh-keys", "value": "TRUE"},
    ]

    resources = [
        {
            "name": address,
            "type": "compute.v1.address",
            "properties": {
                "region": region,
                "addressType": "EXTERNAL",
                "networkTier": "PREMIUM",
                "description": f"Public IP of {name}; survives the VM being recreated.",
                "labels": dict(properties["labels"]),
            },
        },
        {
            "name": name,
            "type": "compute.v1.instance",
            "properties": {
                "zone": zone,
                "machineType": f"zones/{zone}/machineTypes/{properties['machineType']}",
                "deletionProtection": properties["deletionProtection"],
                "labels": dict(properties["labels"]),
                "tags": {"items": [properties["networkTag"]]},
                "disks": [
                    {
                        "deviceName": "boot",
                        "type": "PERSISTENT",
                        "boot": True,
                        "autoDelete": True,
                        "initializeParams": {
                            "sourceImage": properties["image"],
                            "diskSizeGb": str(properties["bootDiskSizeGb"]),
                            "diskType": f"zones/{zone}/diskTypes/pd-balanced",
                        },
                    }
                ],
                "networkInterfaces": [
                    {
                        "subnetwork": properties["subnetwork"],
                        "accessConfigs": [
                            {
                                "name": "External NAT",
                                "type": "ONE_TO_ONE_NAT",
                                "networkTier": "PREMIUM",
                                "natIP": f"$(ref.{address}.address)",
                            }
                        ],
                    }
                ],
                "serviceAccounts": [],
                "shieldedInstanceConfig": {
                    "enableSecureBoot": True,
                    "enableVtpm": True,
                    "enableIntegrityMonitoring": True,
                },
                "scheduling": {"automaticRestart": True, "onHostMaintenance": "MIGRATE"},
                "metadata": {"items": metadata},
            },
        },
    ]
    if properties["uptimeCheck"]:
        resources += monitoring(context, address)
    elif properties["alertEmail"]:
        raise ValueError(
            "vm.py: alertEmail is set but uptimeCheck is false, and the alert watches the uptime "
            'check: set uptimeCheck: true, or alertEmail: "" for neither'
        )
    return {
        "resources": resources,
        "outputs": [
            {"name": "publicIp", "value": f"$(ref.{address}.address)"},
        ],
    }


def monitoring(context, address):
    """The uptime check on the static IP and, with `alertEmail`, the alert that mails it."""
    name = context.env["name"]
    properties = context.properties
    project = f"projects/{context.env['project']}"
    https = bool(properties["acmeDirectory"])
    check = f"{name}-uptime"
    resources = [
        {
            "name": check,
            "type": "gcp-types/monitoring-v3:projects.uptimeCheckConfigs",
            "properties": {
                "parent": project,
                "displayName": f"{name} answers on its public IP",
                "monitoredResource": {
                    "type": "uptime_url",
                    "labels": {
                        "project_id": context.env["project"],
                        "host": f"$(ref.{address}.address)",
                    },
                },
                "httpCheck": {
                    "path": "/",
                    "port": 443 if https else 80,
                    "useSsl": https,
                    # Without HTTPS there is no certificate to validate.
                    "validateSsl": https and properties["uptimeCheckValidatesCertificate"],
                },
                "contentMatchers": [{"content": GREETING, "matcher": "CONTAINS_STRING"}],
                "period": "60s",
                "timeout": "10s",
                "selectedRegions": list(UPTIME_REGIONS),
                "userLabels": dict(properties["labels"]),
            },
        }
    ]
    if not properties["alertEmail"]:
        return resources
    channel = f"{name}-alert-email"
    resources += [
        {
            "name": channel,
            "type": "gcp-types/monitoring-v3:projects.notificationChannels",
            "properties": {
                "name": project,
                "type": "email",
                "displayName": f"{name} alerts to {properties['alertEmail']}",
                "labels": {"email_address": properties["alertEmail"]},
                "userLabels": dict(properties["labels"]),
                "enabled": True,
            },
        },
        {
            "name": f"{name}-down-alert",
            "type": "gcp-types/monitoring-v3:projects.alertPolicies",
            "properties": {
                "name": project,
                "displayName": f"{name} is down",
                "documentation": {
                    "content": (
                        f"The uptime check {check} failed from more than "
                        f"{FAILING_REGIONS_THRESHOLD} region for {ALERT_DURATION}: the public "
                        "IP does not answer with the greeting. docs/deploy-failures.md lists "
                        "what to look at."
                    ),
                    "mimeType": "text/markdown",
                },
                "combiner": "OR",
                "conditions": [
                    {
                        "displayName": f"{check} fails from more than one region",
                        "conditionThreshold": {
                            # By host rather than check_id: DM cannot cut the check's ID out of
                            # its server-assigned name, and only this stack probes this IP.
                            "filter": (
                                'metric.type="monitoring.googleapis.com/uptime_check/check_passed"'
                                ' AND resource.type="uptime_url"'
                                f' AND resource.label.host="$(ref.{address}.address)"'
                            ),
                            "aggregations": [
                                {
                                    "alignmentPeriod": "60s",
                                    "perSeriesAligner": "ALIGN_NEXT_OLDER",
                                    "crossSeriesReducer": "REDUCE_COUNT_FALSE",
                                    "groupByFields": ["resource.label.host"],
                                }
                            ],
                            "comparison": "COMPARISON_GT",
                            "thresholdValue": FAILING_REGIONS_THRESHOLD,
                            "duration": ALERT_DURATION,
                            "trigger": {"count": 1},
                        },
                    }
                ],
                "notificationChannels": [f"$(ref.{channel}.name)"],
                "severity": "CRITICAL",
                "userLabels": dict(properties["labels"]),
                "enabled": True,
            },
        },
    ]
    return resources
