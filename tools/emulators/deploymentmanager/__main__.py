"""`python -m emulators.deploymentmanager`: the emulator in the foreground, for poking by hand."""

from __future__ import annotations

import argparse
import sys
import threading

from emulators.deploymentmanager.api import DeploymentManagerEmulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local Deployment Manager v2 API server")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--address", help="the IP every compute.v1.address gets")
    parser.add_argument("--op-seconds", type=float, default=0.0)
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        help="accept this bearer token (repeatable); without any, every request is accepted",
    )
    args = parser.parse_args(argv)
    tokens = set(args.token)

    def verify(token: str) -> str | None:
        return "operator@example.com" if token in tokens else None

    emulator = DeploymentManagerEmulator(
        verify_token=verify if tokens else None,
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
