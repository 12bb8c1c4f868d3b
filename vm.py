"""The web VM: one Compute Engine instance and the static public IP it answers on.

Creates
  <name>-ip   compute.v1.address    a reserved external IPv4 address in the zone's region, so the
                                    public IP (and any DNS record or bookmark pointing at it)
                                    survives the instance being deleted and recreated.
  <name>      compute.v1.instance   Debian 12, in `subnetwork`, tagged `networkTag` for the
                                    firewall, with <name>-ip as its NAT IP.

The instance carries the app in its metadata: app/startup.sh as `startup-script` (GCE runs it on
every boot) and the app files it installs, including nginx's HTTPS front and the ACME client that
gets a certificate for the static IP from `acmeDirectory` (docs/https.md). deployment.yaml
imports those files, so the VM runs exactly the committed app/ directory. Hardening: Shielded VM,
OS Login on, project-wide SSH keys blocked, no service account (the app calls no Google API, so
there is no credential to steal), and deletion protection on by default, because losing the
hand-built VM to a delete is why this repository exists.
"""

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

    return {
        "resources": [
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
        ],
        "outputs": [
            {"name": "publicIp", "value": f"$(ref.{address}.address)"},
        ],
    }
