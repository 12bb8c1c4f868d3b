"""How operators see mistakes: each names the file, the field and the fix.

ConfigError stops the expansion (the config cannot be rendered at all); a Finding is one problem
the validator found in a config that did render, so all of them can be reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass


def yaml_error(file: str, error: Exception) -> ConfigError:
    """A YAML parse error as `FILE: line L, column C: is not valid YAML: problem`."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
    problem = getattr(error, "problem", None) or str(error)
    return ConfigError(file, where, f"is not valid YAML: {problem}")


class ConfigError(Exception):
    """A mistake in a deployment config, template or schema that an operator can fix."""

    notes: tuple[str, ...] = ()  # what could not be checked because of it

    def __init__(self, file: str, field: str, message: str, source: str = ""):
        where = f" [set at {source}]" if source else ""
        super().__init__(f"{file}: {field}: {message}{where}")
        self.file = file
        self.field = field
        self.message = message
        self.source = source  # "deployment.yaml:23": the line to edit, when known

    @property
    def all(self) -> list[ConfigError]:
        return [self]


class ConfigErrors(ConfigError):
    """Several ConfigErrors found in one pass, reported together (the first is the headline)."""

    def __init__(self, errors: list[ConfigError], notes: tuple[str, ...] = ()):
        first = errors[0]
        super().__init__(first.file, first.field, first.message, first.source)
        self.errors = errors
        self.notes = notes

    @property
    def all(self) -> list[ConfigError]:
        return list(self.errors)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


@dataclass(frozen=True)
class Finding:
    """One problem: where it is (file, resource, field path), what is wrong, what is valid."""

    file: str
    resource: str
    field: str
    message: str
    severity: str = "error"
    source: str = ""  # "deployment.yaml:24 (hello-vpc.subnetCidr)" when the value came from there

    @property
    def path(self) -> str:
        return f"{self.resource}.{self.field}" if self.field else self.resource

    def __str__(self) -> str:
        where = f" [set at {self.source}]" if self.source else ""
        return f"{self.file}: {self.path}: {self.message}{where}"

    def as_dict(self) -> dict:
        return {
            "severity": self.severity,
            "file": self.file,
            "resource": self.resource,
            "field": self.field,
            "message": self.message,
            "source": self.source or None,
        }
