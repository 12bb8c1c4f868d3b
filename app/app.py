"""The BenchSci hello-world web app.

`/` is what a person types in a browser; `/hello` is the route the original,
hand-built server answered on, kept so existing links and checks still work.
In production gunicorn imports `app` from this module (see hello.service).
`/healthz` also names the version the VM runs: the digest startup.sh records once a converge
has completed, which scripts/smoke.sh compares with the digest of what was just deployed.
"""

import os
from pathlib import Path

from flask import Flask, jsonify

GREETING = "Hello World from BenchSci!"
VERSION_FILE = Path(os.environ.get("HELLO_VERSION_FILE", "/opt/hello/version"))

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
    return jsonify(status="ok", version=version)


if __name__ == "__main__":
    # Local convenience only; production runs gunicorn. Never debug mode.
    app.run(host="127.0.0.1", port=8080, debug=False)
