"""`python -m emulators.deploymentmanager`: the emulator in the foreground, for poking by hand."""

from __future__ import annotations

import argparse
import sys
import threading

from emulators.deploymentmanager.api import DeploymentManagerEmulator
from emulators.iam import Identity, Policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local Deployment Manager v2 API server")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--address", help="the IP every compute.v1.address gets")
    parser.add_argument("--op-seconds", type=float, default=0.0)
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        help="accept this bearer token (repeatable), as an operator holding "
        "roles/deploymentmanager.editor on --project; without any, every request is accepted",
    )
    parser.add_argument("--project", default="local-project")
    args = parser.parse_args(argv)
    tokens = set(args.token)

    operator = Identity("operator@example.com", ("https://www.googleapis.com/auth/cloud-platform",))
    policy = Policy()
    editor = "roles/deploymentmanager.editor"
    policy.grant(f"projects/{args.project}", "user:" + operator.principal, editor)

    def verify(token: str) -> Identity | None:
        return operator if token in tokens else None

    emulator = DeploymentManagerEmulator(
        verify_token=verify if tokens else None,
        policy=policy,
        address_allocator=(lambda *_: args.address) if args.address else None,
        op_seconds=args.op_seconds,
    )
    print(emulator.serve(port=args.port), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
