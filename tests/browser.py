"""Headless Chromium for the tests that look at a page as a browser does: Debian's package, real
TLS verification, a throwaway HOME and profile per call."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def chromium(home: Path, *args: str, trusting: str | None = None) -> str:
    """Runs headless Chromium with HOME=`home` and returns its stdout. Chromium on Linux trusts
    the roots in the user's NSS database, so `trusting` (a PEM root) goes there, as Let's
    Encrypt's is in every browser's store."""
    home.mkdir(parents=True, exist_ok=True)
    if trusting:
        nssdb = home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True)
        (home / "root.pem").write_text(trusting)
        subprocess.run(
            ["certutil", "-A", "-d", f"sql:{nssdb}", "-n", "ca", "-t", "C,,",
             "-i", str(home / "root.pem")],
            check=True,
        )  # fmt: skip
    result = subprocess.run(
        [
            shutil.which("chromium") or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=800,200",
            f"--user-data-dir={home / 'profile'}",
            *args,
        ],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout
