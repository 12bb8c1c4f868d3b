"""The BenchSci hello-world web app.

`/` is what a person types in a browser; `/hello` is the route the original,
hand-built server answered on, kept so existing links and checks still work.
In production gunicorn imports `app` from this module (see hello@.service).
`/healthz` also names the version this release is (the digest startup.sh records with it,
which scripts/smoke.sh compares with the digest of what was just deployed) and, when the VM
refused a later release, that release's version and why, so a deploy's check fails at once.
"""

import json
import os
from pathlib import Path

from flask import Flask, jsonify

GREETING = "Hello World from BenchSci!"
VERSION_FILE = Path(os.environ.get("HELLO_VERSION_FILE", "/opt/hello/serving/version"))
REFUSED_FILE = Path(os.environ.get("HELLO_REFUSED_FILE", "/var/lib/hello/refused.json"))

app = Flask(__name__)


@app.get("/")
@app.get("/hello")
def hello() -> tuple[str, int, dict[str, str]]:
    return GREETING, 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.get("/healthz")
def healthz():
    try:
        version = VERSION_FILE.read_text().strip()
    except OSError:
        version = "unknown"
    health = {"status": "ok", "version": version}
    try:
        refused = json.loads(REFUSED_FILE.read_text())
    except (OSError, ValueError):
        refused = None
    if isinstance(refused, dict) and refused.get("version") not in (None, version):
        health["refused"] = {"version": refused["version"], "reason": refused.get("reason", "")}
    return jsonify(health)


if __name__ == "__main__":
    # Local convenience only; production runs gunicorn. Never debug mode.
    app.run(host="127.0.0.1", port=8080, debug=False)
