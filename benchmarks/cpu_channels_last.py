"""channels_last on the CPU: a training step (forward, backward, SGD) of a zoo network and a teacher's
forward (inference mode), in the default (NCHW) and the channels_last (NHWC) memory format, one thread.

    python benchmarks/cpu_channels_last.py            # the table below, on this machine
    python benchmarks/cpu_channels_last.py --steps 3  # quicker, noisier

``train.channels_last`` is on by default only on CUDA (docs/speed.md); this measures what it would give on the
CPU. Both formats are timed in one run, alternating rounds, by the process's own CPU time
(``time.process_time``), so that other jobs on a shared machine inflate neither; the ratio is what counts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

# (network, classes, input channels, side, batch): the tables' students and teachers
CASES = [("cnn_small", 10, 1, 28, 128), ("cnn_medium", 10, 1, 28, 128), ("resnet8", 10, 3, 32, 64),
         ("unet_w8", 11, 1, 64, 32), ("unet_w16", 11, 1, 64, 32)]


def timed(fn, steps: int) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernels
    t0 = time.process_time()
    for _ in range(steps):
        fn()
    return (time.process_time() - t0) / steps


def measure(name: str, classes: int, channels: int, side: int, batch: int, steps: int, rounds: int
            ) -> dict[str, float]:
    from kdkit.models import create_model

    torch.manual_seed(0)
    x = torch.randn(batch, channels, side, side)
    y = torch.randint(0, classes, (batch,) if not name.startswith("unet") else (batch, side, side))
    out: dict[str, list[float]] = {}
    for _ in range(rounds):
        for fmt in (torch.contiguous_format, torch.channels_last):
            key = "nhwc" if fmt is torch.channels_last else "nchw"
            net = create_model(name, num_classes=classes, in_channels=channels).to(memory_format=fmt)
            xf = x.contiguous(memory_format=fmt)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

            def step(net=net, xf=xf, opt=opt):
                loss = torch.nn.functional.cross_entropy(net(xf), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            def forward(net=net, xf=xf):
                with torch.inference_mode():
                    net(xf)

            net.train()
            out.setdefault(f"step_{key}", []).append(timed(step, steps))
            net.eval()
            out.setdefault(f"fwd_{key}", []).append(timed(forward, steps))
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and format")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {args.steps} steps x {args.rounds} rounds, CPU ms per step")
    print("| network | batch x input | train step NCHW | NHWC | ratio | forward NCHW | NHWC | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, classes, channels, side, batch in CASES:
        m = measure(name, classes, channels, side, batch, args.steps, args.rounds)
        cells = [f"{1e3 * m[f'{k}_nchw']:.0f} | {1e3 * m[f'{k}_nhwc']:.0f} | {m[f'{k}_nhwc'] / m[f'{k}_nchw']:.2f}"
                 for k in ("step", "fwd")]
        print(f"| {name} | {batch} x {channels}x{side}x{side} | {cells[0]} | {cells[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
