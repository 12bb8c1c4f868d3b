"""Well-known ports by service name."""

PORTS = {"http": "80", "https": "443", "ssh": "22"}


def for_services(services):
    return [PORTS[service] for service in services]
