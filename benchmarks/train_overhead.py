"""Training-loop overhead: `trainers.train` against a minimal hand-written PyTorch loop.

    python benchmarks/train_overhead.py [auto|cpu|cuda] [--family mlp] [--data digits] [--epochs 20] [--reps 5] [--threads N]
                                        [--amp]

Both sides get the same data (loaded once, outside the timings), the same model (built with
`trainers.build_model` from the same seed), the same AdamW settings, batch size, device and
number of epochs (early stopping disabled: patience larger than the epoch count). Each side is
timed as one whole call: building the model, moving the data to the device, every epoch, and
what the side does at the end. Repetitions alternate between the sides; medians are reported.

What is counted: samples/second = epochs x training samples / wall seconds of the whole call.
The toolkit does more work than a bare loop, and the figures say which:
- `toolkit`: per-epoch validation pass (early stopping and the LR schedule need it), training
  loss/accuracy bookkeeping, best-weights copy, and final metrics on train/val/test with a
  confusion matrix.
- `bare loop`: forward, loss, backward, optimizer step (AdamW's fused kernel); nothing else.
- `loop + validation`: the bare loop plus one validation pass per epoch and a final test
  evaluation, i.e. the work any loop with early stopping has to do, with AdamW's fused kernel as
  the toolkit uses: the strongest minimal loop, and the headline peer. toolkit / (loop +
  validation) is the loop's own overhead, the same work and the same optimizer kernel; toolkit /
  bare loop is printed as well.
- `same, default AdamW`: loop + validation with PyTorch's default AdamW (on CPU its multi-tensor
  ops), what a hand loop gets when it does not ask for the fused kernel: the ratio to it adds the
  kernel's gain to the loop's overhead, and is no measure of the loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from torch import nn

from trainers import TrainConfig, build_model, load_data, make_config, resolve_device, seed_everything, train
from trainers.loop import amp_dtype, autocast


def hand_loop(data, family, config, device, validate: bool, fused: bool = True, amp=None) -> float:
    """A minimal PyTorch training loop; returns wall seconds of the whole call. `fused`: AdamW's fused kernel, as
    the toolkit's loop uses (False: PyTorch's default); `amp`: the autocast dtype (None: float32)."""
    start = time.perf_counter()
    seed_everything(config.seed)
    model = build_model(family, make_config(family, config.model), data.input_shape, data.num_classes,
                        data.mean, data.std).to(device)
    x, y = torch.from_numpy(data.x_train).to(device), torch.from_numpy(data.y_train).to(device)
    x_val, y_val = torch.from_numpy(data.x_val).to(device), torch.from_numpy(data.y_val).to(device)
    x_test, y_test = torch.from_numpy(data.x_test).to(device), torch.from_numpy(data.y_test).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  **({"fused": True} if fused else {}))
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(y), device=device)
        for i in range(0, len(y), config.batch_size):
            index = order[i:i + config.batch_size]
            with autocast(device, amp):
                loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if validate:
            model.eval()
            with torch.inference_mode(), autocast(device, amp):
                nn.functional.cross_entropy(model(x_val).float(), y_val).item()
    if validate:
        model.eval()
        with torch.inference_mode(), autocast(device, amp):
            (model(x_test).argmax(1) == y_test).float().mean().item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def toolkit(data, family, config) -> float:
    start = time.perf_counter()
    result = train(data, family, config, out=None, progress=False)
    assert result.epochs_run == config.epochs, "early stopping must stay off in this benchmark"
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device", nargs="?", default="auto")
    parser.add_argument("--family", default="mlp")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--amp", action="store_true", help="the toolkit in mixed precision (CUDA; off by default), "
                        "timed beside the hand loop under the same autocast and the toolkit in float32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_data(args.data)
    # No refit: the loop's epochs are compared, not the number of them.
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=str(device), patience=10**6,
                         amp=args.amp, refit=False)
    sides = {"toolkit": lambda: toolkit(data, args.family, config),
             "bare loop": lambda: hand_loop(data, args.family, config, device, validate=False),
             "loop + validation": lambda: hand_loop(data, args.family, config, device, validate=True),
             "same, default AdamW": lambda: hand_loop(data, args.family, config, device, validate=True, fused=False)}
    amp = amp_dtype(device, config.amp)
    if amp is not None:
        # With --amp on CUDA: the hand loop under the same autocast, and the toolkit without it, separate the
        # loop's overhead from what autocast costs or gains on this model.
        sides["same, autocast"] = lambda: hand_loop(data, args.family, config, device, validate=True, amp=amp)
        sides["toolkit, amp off"] = lambda: toolkit(data, args.family, dataclasses.replace(config, amp=False))
    for run in sides.values():  # warm-up: imports, allocator, kernels
        run()
    seconds = {name: [] for name in sides}
    for _ in range(args.reps):
        for name, run in sides.items():
            seconds[name].append(run())
    samples = args.epochs * len(data.y_train)
    rate = {name: samples / statistics.median(values) for name, values in seconds.items()}
    print(f"{args.family} on {args.data}, device {device}, batch {args.batch_size}, {args.epochs} epochs x "
          f"{len(data.y_train)} training samples, median of {args.reps} alternating repetitions, torch threads "
          f"{torch.get_num_threads()}")
    for name, value in rate.items():
        print(f"  {name:<19} {value:>12,.0f} samples/s   (median {statistics.median(seconds[name]):.3f} s)")
    # The ratios are medians of per-repetition ratios (the sides of one repetition ran back to back, so a load
    # change on a shared machine hits both), with the interquartile range of those ratios.
    for other, what in (("loop + validation", "same work and AdamW kernel: the loop's overhead; target >= 0.95"),
                        ("same, default AdamW", "same work, PyTorch's default AdamW: adds the fused kernel's gain"),
                        ("bare loop", "bare loop skips validation"),
                        ("same, autocast", "same work, kernel and autocast dtype"),
                        ("toolkit, amp off", "mixed precision's own gain (> 1: it pays on this model)")):
        if other not in seconds:
            continue
        ratios = [o / t for t, o in zip(seconds["toolkit"], seconds[other])]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        print(f"ratio toolkit / {other:<19} = {statistics.median(ratios):.3f} (IQR {q3 - q1:.3f})  ({what})")


if __name__ == "__main__":
    main()
