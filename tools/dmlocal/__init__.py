"""Local Deployment Manager: render, check and explain a DM config without a cloud account.

`dmlocal preview deployment.yaml` expands the config the way Deployment Manager's
server does (imports, schemas and their defaults, `context.env`, template expansion, references)
and prints the result. The same engine backs the local DM API emulator used in the pipeline tests.
"""

from dmlocal.errors import ConfigError
from dmlocal.expand import Expansion, default_env, expand_files, expand_path

__all__ = ["ConfigError", "Expansion", "default_env", "expand_files", "expand_path"]
