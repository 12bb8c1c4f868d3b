"""A local Deployment Manager v2 API server: the real `gcloud` deploys with nothing in the cloud.

This is test infrastructure: it stands in for Google's servers, never for anything this repo
ships. Four parts, one job each:

  api.py      HTTP: the v2 routes gcloud calls, bearer-token checks, Google's JSON errors; the
              same server routes /compute/v1/ to compute.py;
  state.py    DM itself: deployments, manifests, operations, fingerprints, and applying a
              manifest resource by resource (unchanged resources left alone, no rollback);
  cloud.py    the emulated Compute Engine behind it, and Compute Engine's rules: valid bodies,
              creation-only fields, stopped-only changes, resources in use, deletion protection;
              listeners hear every change;
  compute.py  the Compute Engine v1 REST API over the same state, for `gcloud compute`.

Each module's docstring lists what follows DM's documentation and what is an emulator choice.
`python -m emulators.deploymentmanager` runs it in the foreground: it prints the DM endpoint URL;
the Compute Engine endpoint is that URL + "compute/v1/".
"""

from emulators.deploymentmanager.api import DeploymentManagerEmulator
from emulators.deploymentmanager.cloud import TestNetAddresses
from emulators.deploymentmanager.errors import ApiError

__all__ = ["ApiError", "DeploymentManagerEmulator", "TestNetAddresses"]
