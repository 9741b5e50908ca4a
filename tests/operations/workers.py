"""``payout-ledger worker`` processes for the tests: started, signalled, their JSON logs read."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLI = "from payout_ledger.cli import main; main()"


def worker_environment(**settings: str) -> dict[str, str]:
    """This process's environment without PAYOUT_LEDGER_ settings, plus ``settings``
    (``store_url=...`` becomes ``PAYOUT_LEDGER_STORE_URL``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYOUT_LEDGER_")}
    env.update({f"PAYOUT_LEDGER_{name.upper()}": value for name, value in settings.items()})
    return env


class WorkerProcess:
    """One ``payout-ledger worker --json-logs`` process, its output in files."""

    def __init__(self, folder: Path, name: str, env: dict[str, str], *args: str) -> None:
        self.name = name
        self.stdout_path = folder / f"{name}.out"
        self.stderr_path = folder / f"{name}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", CLI, "worker", "--json-logs", *args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=err,
            )
        self.pid = self.proc.pid
        self.killed_at: float | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and note when it was dead."""
        self.proc.kill()
        self.proc.wait()
        self.killed_at = time.time()

    def log(self) -> list[dict[str, Any]]:
        """The JSON log records so far (a line torn by SIGKILL is left out)."""
        records = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.log() if r.get("payout_ledger.worker_event") == kind]

    def wait_for(self, kind: str, seconds: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = self.events(kind)
            if found:
                return found[0]
            if not self.alive():
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name} logged no {kind} (exit {self.proc.poll()}):\n"
            + self.stderr_path.read_text(errors="replace")[-3000:]
        )

    def stop(self) -> int:
        """SIGKILL if still running (cleanup); its exit code."""
        if self.alive():
            self.proc.kill()
        return self.proc.wait()


def seconds_of(record: dict[str, Any]) -> float:
    """A log record's time as a Unix timestamp."""
    from datetime import datetime

    return datetime.fromisoformat(record["time"]).timestamp()
