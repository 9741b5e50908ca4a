"""A host process for the SIGKILL test: releases every service, again and again.

Run as ``python -m tests.reliability.kill_worker CONFIG_JSON`` from the
repository root. It builds its own ledger on the shared store and the
production gateway pointed at the fake Stripe over HTTP, then releases each
service ``rounds`` times in a seeded random order, resuming in-flight payouts
every few releases like an operator's cron would. Each answer is appended to
its own log file as one JSON line, so the test can count them even after a
SIGKILL (a torn last line is ignored).
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

from payout_ledger.stripe import StripeTransferGateway
from tests.reliability.system import build_ledger, release_request


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    rng = random.Random(config["seed"])
    gateway = StripeTransferGateway(
        config["api_key"], api_base=config["api_base"], timeout=10.0, max_network_retries=0
    )
    ledger = build_ledger(config["store_url"], config["account"], gateway)
    with Path(config["log"]).open("a", buffering=1) as log:
        try:
            done = 0
            for _ in range(config["rounds"]):
                services = list(config["services"])
                rng.shuffle(services)
                for service in services:
                    result = ledger.release_payment(release_request(service))
                    line = {"pid": os.getpid(), "op": "release", "out": result.outcome}
                    log.write(json.dumps(line) + "\n")
                    done += 1
                    if done % config["resume_every"] == 0:
                        for settled in ledger.resume_in_flight():
                            log.write(json.dumps({"op": "resume", "out": settled.outcome}) + "\n")
            log.write(json.dumps({"op": "finished"}) + "\n")
        finally:
            ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
