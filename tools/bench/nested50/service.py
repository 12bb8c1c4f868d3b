"""One service: a VM with a data disk, its static address, and a rule admitting its subnet."""

IMAGE = "projects/debian-cloud/global/images/family/debian-12"


def GenerateConfig(context):
    name = context.env["name"]
    p = context.properties
    zone = p["zone"]
    return {
        "resources": [
            {
                "name": f"{name}-ip",
                "type": "compute.v1.address",
                "properties": {"region": p["region"]},
            },
            {
                "name": f"{name}-data",
                "type": "compute.v1.disk",
                "properties": {
                    "zone": zone,
                    "sizeGb": 20,
                    "type": f"zones/{zone}/diskTypes/pd-balanced",
                },
            },
            {
                "name": f"{name}-allow-subnet",
                "type": "compute.v1.firewall",
                "properties": {
                    "network": p["network"],
                    "sourceRanges": [p["cidr"]],
                    "targetTags": [name],
                    "allowed": [{"IPProtocol": "tcp", "ports": ["8080"]}],
                },
            },
            {
                "name": f"{name}-vm",
                "type": "compute.v1.instance",
                "properties": {
                    "zone": zone,
                    "machineType": f"zones/{zone}/machineTypes/e2-small",
                    "tags": {"items": [name]},
                    "disks": [
                        {
                            "boot": True,
                            "autoDelete": True,
                            "initializeParams": {"sourceImage": IMAGE},
                        },
                        {"source": f"$(ref.{name}-data.selfLink)"},
                    ],
                    "networkInterfaces": [
                        {
                            "subnetwork": p["subnetwork"],
                            "accessConfigs": [
                                {
                                    "name": "External NAT",
                                    "type": "ONE_TO_ONE_NAT",
                                    "natIP": f"$(ref.{name}-ip.address)",
                                }
                            ],
                        }
                    ],
                },
            },
        ],
        "outputs": [{"name": "ip", "value": f"$(ref.{name}-ip.address)"}],
    }
