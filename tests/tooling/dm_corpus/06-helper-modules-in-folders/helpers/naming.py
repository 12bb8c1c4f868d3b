"""Resource names: ENV-NAME-KIND."""


def resource_name(env, name, kind):
    return f"{env}-{name}-{kind}"
