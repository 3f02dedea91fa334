"""How long `compress --method auto` takes on an idle machine and with k CPU-bound processes beside it.

    python benchmarks/auto_under_load.py [--families mlp cnn lstm] [--loads 0 1 2] [--quick] [--out DIR]

Data: 4,000 synthetic 1-D samples of 40 values (4 classes of noisy waveforms, shape (1, 40)), which every
family reads (the MLP flattens them). Each family is trained once (outside the timings); then, for each
load k, k background processes spin on pure-Python arithmetic (one core each) while `compress_model(...,
methods=["auto"])` runs in this process, timed wall-clock as one whole call. Loads alternate within each
round (k = 0, 1, 2, then 1, 2, 0: the order rotates), medians are reported with the ratio loaded / idle, the
target (k+1) and the fair share of c cores, (c+k)/c, which a process using every core would slow to. With one
core free auto does less work (the all-threads settings are the one-thread ones, timed once): the table counts
the runs that timed the all-threads settings, so a loaded run that did less is visible.
The choice (the chosen variant's name, speed-up and agreement with the original) is printed for each run,
so a faster auto that chose worse is visible.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path



def make_waves(path: Path, n: int = 4000, length: int = 40, seed: int = 0) -> Path:
    """n noisy 1-D waveforms (1, length) in 4 classes (sine, square, sawtooth, chirp), random phase and frequency."""
    from compress_vs_peers import make_signals

    return make_signals(path, n, length, seed, freq=(1.5, 4), sweep=3, noise=0.8)


def _hog() -> None:
    """A CPU-bound process: pure-Python arithmetic, forever (one core)."""
    x = 0.0
    while True:
        x = x * 0.999 + 1.0


class Hogs:
    """Context: `k` CPU-bound background processes, ended (by their own handles) on exit."""

    def __init__(self, k: int):
        self.k, self.procs = k, []

    def __enter__(self):
        context = multiprocessing.get_context("spawn")
        self.procs = [context.Process(target=_hog, daemon=True) for _ in range(self.k)]
        for p in self.procs:
            p.start()
        time.sleep(1.0 if self.k else 0.0)  # let them reach the run queue
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join()


def run_auto(model, data, options: dict) -> dict:
    from compress import compress_model
    from compress.auto import free_cores

    load_before, free = os.getloadavg()[0], free_cores()
    t0 = time.perf_counter()
    result = compress_model(model, data, methods=["auto"], options={"auto": options} if options else None)
    seconds = time.perf_counter() - t0
    m = result.chosen.measurements
    return {"seconds": round(seconds, 1), "load_before": round(load_before, 2), "free_cores_seen": free,
            "chosen": result.chosen.name, "speedup_b256_t1": round(m["speedup"]["b256_t1"], 2),
            "noisy": m.get("noisy", []), "accuracy_drop": m["accuracy_drop"],
            "agreement": round(m["fidelity"]["agreement"], 4), "variants_timed": len(result.variants),
            # with one core free auto times the all-threads settings as the one-thread ones, once: less work than
            # an idle run, so a loaded run's time is not the same work's (compare like with like)
            "all_threads_timed": not any("they are the one-thread settings" in n for n in result.search_notes),
            "rejected": sum(1 for s in result.skipped if s["reason"].startswith(("rejected", "not tried", "not chained")))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn", "lstm"])
    parser.add_argument("--loads", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the original model")
    parser.add_argument("--quick", action="store_true",
                        help="one round, 10 training epochs, auto with 3 fine-tuning and 5 distillation epochs")
    parser.add_argument("--out", type=Path, default=None, help="folder for data, models and results.json")
    args = parser.parse_args()
    from trainers import TrainConfig, load_data, load_model, train

    options = {"finetune_epochs": 3, "distill_epochs": 5} if args.quick else {}
    rounds, epochs = (1, 10) if args.quick else (args.rounds, args.epochs)
    root = args.out or Path(tempfile.mkdtemp(prefix="auto-under-load-"))
    root.mkdir(parents=True, exist_ok=True)
    data = load_data(str(make_waves(root / "waves.npz")))
    results = {"cpu_count": os.cpu_count(), "options": options, "epochs": epochs, "rounds": rounds, "runs": []}
    for family in args.families:
        out = root / f"model-{family}"
        if not (out / "model.json").exists():
            train(data, family, TrainConfig(epochs=epochs, device="cpu", seed=0), out=out, overwrite=True,
                  progress=False)
        model = load_model(out)
        for r in range(rounds):
            for k in args.loads[r % len(args.loads):] + args.loads[:r % len(args.loads)]:  # order rotated per round
                with Hogs(k):
                    run = {"family": family, "round": r, "hogs": k, **run_auto(model, data, options)}
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
    cores = os.cpu_count() or 1
    print("\n| family | hogs k | auto s (median) | ratio to k=0 | target (k+1) | fair share (c+k)/c | all-threads timed "
          "| load avg before | chosen |")
    print("|---|---|---|---|---|---|---|---|---|")
    for family in args.families:
        runs = [r for r in results["runs"] if r["family"] == family]
        idle = statistics.median(r["seconds"] for r in runs if r["hogs"] == 0) if 0 in args.loads else None
        for k in args.loads:
            mine = [r for r in runs if r["hogs"] == k]
            med = statistics.median(r["seconds"] for r in mine)
            ratio = f"{med / idle:.2f}" if idle else "-"
            timed = sum(r["all_threads_timed"] for r in mine)
            print(f"| {family} | {k} | {med:.1f} | {ratio} | {k + 1} | {(cores + k) / cores:.2f} | {timed}/{len(mine)} | "
                  f"{statistics.median(r['load_before'] for r in mine):.1f} | "
                  f"{', '.join(sorted({r['chosen'] for r in mine}))} |")
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults: {root / 'results.json'}")


if __name__ == "__main__":
    main()
