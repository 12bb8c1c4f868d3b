"""Naming helpers shared by templates (imported as a module, not a template)."""


def address(name):
    return f"{name}-ip"


def rule(name, purpose):
    return f"{name}-allow-{purpose}"
