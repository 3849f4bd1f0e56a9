"""Shared fixtures: a live service on a real ZeroMQ socket, and a `kilat serve` subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Permissive limits, no compliance rules and a user with every role: for the tests of transport,
#: recovery and the CLI (the limits and rules have their own tests, with the default config too).
TRANSPORT_CONFIG = ROOT / "tests" / "data" / "transport.toml"
# Every client and `kilat` subprocess acts as that user unless a test says otherwise.
os.environ.setdefault("KILAT_USER", "tester")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated(config, keys_dir: Path):
    """``config`` with its CurveZMQ keys in ``keys_dir`` (a test's own), not the repo's var/."""
    import msgspec

    return msgspec.structs.replace(
        config, security=msgspec.structs.replace(config.security, keys_dir=str(keys_dir)))


class LiveService:
    """A Service running its uvloop loop in a background thread, bound to a random port."""

    def __init__(self, data_dir: Path, config=None):
        import uvloop

        from kilat.config import load_config
        from kilat.service import Service

        self.config = isolated(config or load_config(TRANSPORT_CONFIG), data_dir.parent / "keys")
        self.service = Service(self.config, data_dir, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*",
                               "tcp://127.0.0.1:*")
        self.endpoint = self.service.server.bound_endpoint
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete,
            args=(self.service.run(ready_message=False, install_signals=False),),
            daemon=True,
        )
        self.thread.start()

    def client(self, user: str, **kwargs):
        """A client of this service acting as ``user`` (over CurveZMQ when the config says so)."""
        from kilat.cli import client_for

        return client_for(self.config, self.endpoint, user, **kwargs)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.service.server.stop)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the service did not stop"


@pytest.fixture
def live(tmp_path):
    svc = LiveService(tmp_path / "data")
    yield svc
    svc.stop()


class ServeProcess:
    """`kilat serve` as a real subprocess; waits for its ready line."""

    def __init__(self, data_dir: Path, port: int, config: Path | None = TRANSPORT_CONFIG,
                 venue_port: int | None = None):
        from kilat.config import load_config

        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.data_dir = data_dir
        self.keys_dir = data_dir.parent / "keys"  # CurveZMQ keys of this server (when on)
        self.config_path = config
        self.config = isolated(load_config(config), self.keys_dir)
        self.venue_endpoint = f"tcp://127.0.0.1:{venue_port or free_port()}"
        self.drop_copy_endpoint = f"tcp://127.0.0.1:{free_port()}"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kilat", "serve", "--endpoint", self.endpoint,
             "--data-dir", str(data_dir), "--keys-dir", str(self.keys_dir),
             "--venue-endpoint", self.venue_endpoint, "--drop-copy-endpoint", self.drop_copy_endpoint,
             *(["--config", str(config)] if config else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )
        self.ready_line = self.proc.stdout.readline()
        if not self.ready_line.startswith("kilat: ready"):
            self.proc.kill()
            raise RuntimeError(f"kilat serve failed: {self.ready_line}{self.proc.stderr.read()}")

    def client(self, user: str, **kwargs):
        """A client acting as ``user`` (over CurveZMQ with this server's keys when on)."""
        from kilat.cli import client_for

        return client_for(self.config, self.endpoint, user, **kwargs)

    def cli_args(self) -> list[str]:
        """What a `kilat` client command needs to reach this server."""
        return ["--endpoint", self.endpoint, "--keys-dir", str(self.keys_dir),
                *(["--config", str(self.config_path)] if self.config_path else [])]

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no handler runs, nothing is flushed
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(10)
