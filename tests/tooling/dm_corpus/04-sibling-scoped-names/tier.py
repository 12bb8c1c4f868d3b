"""One tier: its own network (`net`), a static address, and a firewall rule for its port."""


def GenerateConfig(context):
    name = context.env["name"]
    properties = context.properties
    return {
        "resources": [
            {
                "name": "net",
                "type": "vpc.py",
                "properties": {
                    "prefix": name,
                    "region": properties["region"],
                    "cidr": properties["cidr"],
                },
            },
            {
                "name": context.env["name"],
                "type": "address.py",
                "properties": {"region": properties["region"]},
            },
            {
                "name": f"{name}-allow-http",
                "type": "compute.v1.firewall",
                "properties": {
                    "network": "$(ref.net.network)",
                    "sourceRanges": ["0.0.0.0/0"],
                    "allowed": [{"IPProtocol": "tcp", "ports": [str(properties["port"])]}],
                },
            },
        ],
        "outputs": [
            {"name": "network", "value": "$(ref.net.network)"},
            {"name": "ip", "value": f"$(ref.{name}.address)"},
        ],
    }
