"""`compress --method auto` on digits with and without the attribution drift guard: the choice, its speed-up,
each candidate's drift status and what the guard costs.

Run: python benchmarks/auto_drift_guard.py [--family mlp] [--rounds 2]

Trains one model (toolkit defaults, 20 epochs), then runs auto `rounds` times with the guard on and off,
interleaved, and prints per round: the chosen variant, its batch-256 single-thread speed-up, the wall time,
and (guard on) every candidate's top-k overlap interval and status.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="mlp")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    from compress import compress_model
    from trainers import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train("digits", args.family, TrainConfig(epochs=args.epochs, device="cpu"), out=root / "model", progress=False)
        for r in range(args.rounds):
            for guard in (True, False):
                start = time.perf_counter()
                result = compress_model(root / "model", "digits", methods=["auto"],
                                        options={"auto": {"drift_guard_on": guard}})
                seconds = time.perf_counter() - start
                chosen = result.chosen
                speed = chosen.measurements["speedup"]["b256_t1"] if chosen is not result.baseline else 1.0
                print(f"round {r} guard {'on ' if guard else 'off'}: chose {chosen.name} ({speed:.2f}x at batch 256, "
                      f"single thread) in {seconds:.0f} s", flush=True)
                if guard:
                    cost = sum(v.measurements.get("attribution_drift", {}).get("seconds", 0.0) for v in result.variants)
                    print(f"    drift guard: {cost:.2f} s over the candidates", flush=True)
                    for v in result.variants:
                        d = v.measurements.get("attribution_drift")
                        if d:
                            print(f"    {v.name:34s} top-{d['topk']} overlap {d['topk_overlap']:.2f} "
                                  f"[{d['topk_overlap_lo']:.2f}, {d['topk_overlap_hi']:.2f}] threshold "
                                  f"{d['threshold']:.2f}: {d['status']}", flush=True)


if __name__ == "__main__":
    main()
