"""The stack's firewall: exactly who may reach the VM, and nothing implied.

Creates six compute.v1.firewall rules in `network`, named <name>-<rule>:
  allow-web        INGRESS  1000   tcp:80,443 from anywhere        to VMs tagged `targetTag`
  allow-icmp       INGRESS  1000   icmp from anywhere              to VMs tagged `targetTag`
  allow-ssh        INGRESS  1000   tcp:22 from `sshSourceRanges`   to VMs tagged `targetTag`
  allow-internal   INGRESS  1000   all tcp and udp from `vpcSourceRanges` to the whole network
  deny-ingress     INGRESS  65535  everything else, denied
  allow-egress     EGRESS   65535  everything, to anywhere

GCP already implies the last two at priority 65535; they are written out so the intent is
reviewable in code and survives anyone "helpfully" adding a broad rule at a lower priority in
the console: the explicit deny shows up in every audit. Public rules target the web VM's tag
rather than the whole network, so a VM added to this VPC later gets internal traffic only
until someone decides otherwise.
"""

PUBLIC = "0.0.0.0/0"


def GenerateConfig(context):
    name = context.env["name"]
    properties = context.properties
    network = properties["network"]
    target = [properties["targetTag"]]

    def rule(suffix, description, **fields):
        return {
            "name": f"{name}-{suffix}",
            "type": "compute.v1.firewall",
            "properties": {"network": network, "description": description, **fields},
        }

    return {
        "resources": [
            rule(
                "allow-web",
                "HTTP and HTTPS from anywhere to the web VM.",
                direction="INGRESS",
                priority=1000,
                sourceRanges=[PUBLIC],
                targetTags=list(target),
                allowed=[{"IPProtocol": "tcp", "ports": ["80", "443"]}],
            ),
            rule(
                "allow-icmp",
                "ICMP (ping, path MTU discovery) from anywhere to the web VM.",
                direction="INGRESS",
                priority=1000,
                sourceRanges=[PUBLIC],
                targetTags=list(target),
                allowed=[{"IPProtocol": "icmp"}],
            ),
            rule(
                "allow-ssh",
                "SSH to the web VM from the listed ranges only.",
                direction="INGRESS",
                priority=1000,
                sourceRanges=list(properties["sshSourceRanges"]),
                targetTags=list(target),
                allowed=[{"IPProtocol": "tcp", "ports": ["22"]}],
            ),
            rule(
                "allow-internal",
                "All TCP and UDP between addresses of this VPC's own subnets.",
                direction="INGRESS",
                priority=1000,
                sourceRanges=list(properties["vpcSourceRanges"]),
                allowed=[
                    {"IPProtocol": "tcp", "ports": ["0-65535"]},
                    {"IPProtocol": "udp", "ports": ["0-65535"]},
                ],
            ),
            rule(
                "deny-ingress",
                "Deny all other ingress, explicitly, at the lowest priority.",
                direction="INGRESS",
                priority=65535,
                sourceRanges=[PUBLIC],
                denied=[{"IPProtocol": "all"}],
            ),
            rule(
                "allow-egress",
                "Allow all egress, explicitly, at the lowest priority.",
                direction="EGRESS",
                priority=65535,
                destinationRanges=[PUBLIC],
                allowed=[{"IPProtocol": "all"}],
            ),
        ]
    }
