"""A local Deployment Manager v2 API server: the real `gcloud` deploys with nothing in the cloud.

This is test infrastructure: it stands in for Google's server, never for anything this repo
ships. Three parts, one job each:

  api.py    HTTP: the v2 routes gcloud calls, bearer-token checks, Google's JSON errors;
  state.py  DM itself: deployments, manifests, operations, fingerprints, and applying a manifest
            resource by resource (unchanged resources left alone, no rollback on an error);
  cloud.py  the emulated Compute Engine behind it: resources created, acquired, updated in
            place, deleted, and the API's refusals (deletion protection, fields that cannot
            change on a live resource, a resource that is gone).

Each module's docstring lists what follows DM's documentation and what is an emulator choice.
`python -m emulators.deploymentmanager` runs it in the foreground.
"""

from emulators.deploymentmanager.api import DeploymentManagerEmulator
from emulators.deploymentmanager.cloud import TestNetAddresses
from emulators.deploymentmanager.errors import ApiError

__all__ = ["ApiError", "DeploymentManagerEmulator", "TestNetAddresses"]
