"""The one error type operators see: it always names the file, the field and the fix."""


class ConfigError(Exception):
    """A mistake in a deployment config, template or schema that an operator can fix."""

    def __init__(self, file: str, field: str, message: str):
        super().__init__(f"{file}: {field}: {message}")
        self.file = file
        self.field = field
        self.message = message
