"""The labels every resource carries."""

from helpers import naming


def standard(env, tier):
    assert naming.resource_name(env, tier, "x")
    return {"env": env, "tier": tier}
