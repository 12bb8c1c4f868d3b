"""The BenchSci hello-world web app.

`/` is what a person types in a browser; `/hello` is the route the original,
hand-built server answered on, kept so existing links and checks still work.
In production gunicorn imports `app` from this module (see hello.service).
"""

from flask import Flask

GREETING = "Hello World from BenchSci!"

app = Flask(__name__)


@app.get("/")
@app.get("/hello")
def hello() -> tuple[str, int, dict[str, str]]:
    return GREETING, 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.get("/healthz")
def healthz() -> tuple[str, int, dict[str, str]]:
    return "ok", 200, {"Content-Type": "text/plain; charset=utf-8"}


if __name__ == "__main__":
    # Local convenience only; production runs gunicorn. Never debug mode.
    app.run(host="127.0.0.1", port=8080, debug=False)
