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


class LiveService:
    """A Service running its uvloop loop in a background thread, bound to a random port."""

    def __init__(self, data_dir: Path, config=None):
        import uvloop

        from kilat.config import load_config
        from kilat.service import Service

        self.service = Service(config or load_config(TRANSPORT_CONFIG), data_dir, "tcp://127.0.0.1:*")
        self.endpoint = self.service.server.bound_endpoint
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete,
            args=(self.service.run(ready_message=False, install_signals=False),),
            daemon=True,
        )
        self.thread.start()

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

    def __init__(self, data_dir: Path, port: int, config: Path | None = TRANSPORT_CONFIG):
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.data_dir = data_dir
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kilat", "serve", "--endpoint", self.endpoint,
             "--data-dir", str(data_dir), *(["--config", str(config)] if config else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )
        self.ready_line = self.proc.stdout.readline()
        if not self.ready_line.startswith("kilat: ready"):
            self.proc.kill()
            raise RuntimeError(f"kilat serve failed: {self.ready_line}{self.proc.stderr.read()}")

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no handler runs, nothing is flushed
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(10)
