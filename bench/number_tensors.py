"""What the privacy walk costs on tensors of long numbers: the long numbers of a number array
scanned together (router/redaction/numbers.py) against each scanned alone (the path a scanner
that cannot join numbers takes, which every version before the joined scan took).

Cases: FP64 millisecond timestamps (13 digits), INT64 7-digit ids, 40k and 200k of each, and
40k timestamps with 1% card numbers planted. One survey walk each (the default bundle's
detectors, no CPU deadline, no leaf limit), best of --repeats, in ms:
  /work/venv/bin/python bench/number_tensors.py               # ≈30 s
  PYTHONPATH=/tmp/before /work/venv/bin/python bench/number_tensors.py --paths joined
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from router.privacy import MemoScanner
from router.redaction.actions import Hasher
from router.redaction.detectors import Detectors
from router.redaction.types import Action
from router.redaction.vault import TokenVault
from router.redaction.walker import RedactionPlan, redact_json

DETECTORS = Detectors.default()
PLAN = RedactionPlan(default=Action.TOKENIZE, max_leaves=10**7)


class OneByOne:
    """A scanner offering no joined scan: each long number is scanned alone."""

    def __init__(self, inner: MemoScanner) -> None:
        self.scan = inner.scan


def walk_ms(data: list[Any], joined: bool) -> float:
    scanner = MemoScanner(DETECTORS, 4 << 20, 600.0)
    chosen: Any = scanner if joined else OneByOne(scanner)
    start = time.perf_counter()
    redact_json({"inputs": [{"data": data}]}, PLAN, chosen, TokenVault(), Hasher(b"k" * 32))
    return (time.perf_counter() - start) * 1000


def card(rng: random.Random) -> int:
    """A Visa number with a valid Luhn check digit."""
    body = "4" + "".join(str(rng.randrange(10)) for _ in range(14))
    total = sum(
        (d * 2 - 9 if d > 4 else d * 2) if i % 2 == 0 else d
        for i, d in enumerate(int(c) for c in reversed(body))
    )
    return int(body + str((10 - total % 10) % 10))


def cases(rng: random.Random) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for n in (40_000, 200_000):
        out[f"{n // 1000}k FP64 ms timestamps"] = [
            float(1_700_000_000_000 + rng.randrange(10**9)) for _ in range(n)
        ]
        out[f"{n // 1000}k INT64 7-digit ids"] = [rng.randrange(10**6, 10**7) for _ in range(n)]
    planted: list[Any] = [1_700_000_000_000 + rng.randrange(10**9) for _ in range(40_000)]
    for i in rng.sample(range(40_000), 400):
        planted[i] = card(rng)
    out["40k INT64 timestamps, 1% cards"] = planted
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", nargs="+", default=["one-by-one", "joined"])
    args = parser.parse_args()
    print("| tensor | " + " | ".join(f"{p} (ms)" for p in args.paths) + " |")
    print("|---" * (len(args.paths) + 1) + "|")
    for name, data in cases(random.Random(1)).items():
        cells = [
            f"{min(walk_ms(data, p == 'joined') for _ in range(args.repeats)):.0f}"
            for p in args.paths
        ]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
