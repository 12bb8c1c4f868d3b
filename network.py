"""The stack's private network: one custom-mode VPC and one regional subnet.

Creates
  <name>          compute.v1.network      custom mode: no auto-created subnets in every region,
                                          so the only address space is the one declared here.
  <name>-subnet   compute.v1.subnetwork   the VM's subnet in `region`, with Private Google
                                          Access, so the VM reaches Google APIs without NAT,
                                          and VPC Flow Logs, so after an incident the logs
                                          say who connected to what (sampling, aggregation and
                                          metadata come from deployment.yaml).

Why its own VPC: the hand-built VM sat in the project's `default` network, whose broad
pre-made firewall rules were part of what nobody could reconstruct. A dedicated network makes
firewall.py the complete statement of who can reach the VM.
"""


def GenerateConfig(context):
    name = context.env["name"]
    properties = context.properties
    subnet = f"{name}-subnet"
    return {
        "resources": [
            {
                "name": name,
                "type": "compute.v1.network",
                "properties": {
                    "description": properties["description"],
                    "autoCreateSubnetworks": False,
                    "routingConfig": {"routingMode": "REGIONAL"},
                },
            },
            {
                "name": subnet,
                "type": "compute.v1.subnetwork",
                "properties": {
                    "description": properties["description"],
                    "network": f"$(ref.{name}.selfLink)",
                    "region": properties["region"],
                    "ipCidrRange": properties["subnetCidr"],
                    "privateIpGoogleAccess": True,
                    "logConfig": {
                        "enable": True,
                        "aggregationInterval": properties["flowLogAggregationInterval"],
                        "flowSampling": properties["flowLogSampling"],
                        "metadata": properties["flowLogMetadata"],
                    },
                },
            },
        ],
        "outputs": [
            {"name": "network", "value": f"$(ref.{name}.selfLink)"},
            {"name": "subnetwork", "value": f"$(ref.{subnet}.selfLink)"},
            {"name": "subnetCidr", "value": f"$(ref.{subnet}.ipCidrRange)"},
        ],
    }
