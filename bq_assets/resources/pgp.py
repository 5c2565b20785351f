"""PGP decryption of delivered files with the ``gpg`` binary (Debian's ``gnupg`` package).

BigQuery cannot load PGP files, so an encrypted delivery is decrypted before the load. The
private key comes from the environment (``BQ_ASSETS_PGP_PRIVATE_KEY``, through ``dg.EnvVar``)
and is imported into a temporary ``GNUPGHOME`` that exists only while a step decrypts; it is
passed to gpg through a pipe and never logged, written to our own files or put in a message.
Data streams through gpg's pipes in chunks, so memory stays flat whatever the file size.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field

from bq_assets.errors import BqAssetsError

GPG = "/usr/bin/gpg"
PGP_KEY_VARIABLE = "BQ_ASSETS_PGP_PRIVATE_KEY"
GPG_TIMEOUT_S = 600


class DecryptionError(BqAssetsError):
    """A delivered file cannot be decrypted (wrong key, not PGP, gpg missing)."""


def gpg_binary() -> str:
    found = GPG if os.access(GPG, os.X_OK) else shutil.which("gpg")
    if not found:
        raise DecryptionError(
            "the delivery is PGP encrypted but gpg is not installed (apt-get install gnupg)"
        )
    return found


@contextlib.contextmanager
def gnupg_home() -> Iterator[Path]:
    """A private, temporary GNUPGHOME (mode 700), removed with everything in it afterwards."""
    with tempfile.TemporaryDirectory(prefix="bq_assets_gnupg_") as home:
        os.chmod(home, 0o700)
        try:
            yield Path(home)
        finally:
            # The agent gpg started for this home would otherwise outlive it for a while.
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )


def gpg(home: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run gpg in ``home`` without a terminal or agent prompts; its output is returned."""
    return subprocess.run(
        [gpg_binary(), "--homedir", str(home), "--batch", "--no-tty", "--quiet", *args],
        input=stdin,
        capture_output=True,
        timeout=GPG_TIMEOUT_S,
        check=False,
    )


def _gpg_says(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    useful = [line for line in lines if line.startswith("gpg:")]
    return "; ".join(useful[-2:]) or "no reason given"


class PgpKeyResource(dg.ConfigurableResource):
    """The private key that decrypts PGP deliveries: ASCII armored, without a passphrase (keep
    it in your secret store and hand it over as ``BQ_ASSETS_PGP_PRIVATE_KEY``)."""

    private_key: str = Field(
        description="ASCII-armored PGP private key (set from BQ_ASSETS_PGP_PRIVATE_KEY)"
    )

    @contextlib.contextmanager
    def keyring(self) -> Iterator[Path]:
        """A temporary GNUPGHOME holding the key, for the duration of the block."""
        with gnupg_home() as home:
            imported = gpg(home, "--import", stdin=self.private_key.encode())
            if imported.returncode != 0:
                raise DecryptionError(
                    f"{PGP_KEY_VARIABLE} does not hold a usable PGP private key "
                    f"({_gpg_says(imported.stderr)})"
                )
            yield home

    def decrypt_stream(self, home: Path, source, destination: Path, what: str) -> None:
        """Decrypt what ``source(pipe)`` writes into gpg's stdin to ``destination``.

        ``source`` streams the encrypted bytes (e.g. a GCS download) into the pipe; gpg writes
        the plaintext to ``destination``. A wrong key or a file that is not PGP raises
        ``DecryptionError`` naming ``what`` (and never the key)."""
        process = subprocess.Popen(
            [
                gpg_binary(),
                "--homedir",
                str(home),
                "--batch",
                "--no-tty",
                "--quiet",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--output",
                str(destination),
                "--decrypt",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stdin and process.stderr
        try:
            try:
                source(process.stdin)
            except BrokenPipeError:
                pass  # gpg stopped reading (it failed): its exit status says why
            finally:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
            stderr = process.stderr.read()
            code = process.wait(timeout=GPG_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
        if code != 0:
            destination.unlink(missing_ok=True)
            raise DecryptionError(
                f"{what}: cannot be decrypted with the key in {PGP_KEY_VARIABLE} "
                f"({_gpg_says(stderr)}); nothing was loaded"
            )
