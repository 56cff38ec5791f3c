"""Benchmark: minipeft against transformers + peft, same shapes, same machine, same run.

    python -m minipeft bench                 # or: python -m minipeft.course.bench
    python -m minipeft bench --reps 2 --shapes small

For each shape (a GPT-2-small-shaped model, 12 layers × 768 wide with GPT-2's 50,257-token
vocabulary, and minipeft's `small`) and each training mode

    full       every weight trains (AdamW)
    lora_attn  LoRA r=8, α=16 on attention     minipeft q, k, v, o     | peft c_attn, attn.c_proj
    lora_all   LoRA r=8, α=16 on every matrix  + fc, proj              | + c_fc, mlp.c_proj
    frozen     nothing trains; the input embeddings require grad, so backward runs through every
               layer's activations but computes no weight gradient: the floor any method that
               back-propagates to the first block pays (LoRA's cost should sit just above it)

it measures one training step (forward, next-token loss, backward, AdamW step, zero_grad) for
both libraries and prints them side by side with minipeft/peft ratios:

* step time: `reps` timed steps after one warm-up step, the two libraries interleaved step
  by step (alternating which goes first), so load on the machine hits both. Each cell shows
  the median and the min–max of its steps. The time ratio is taken pair by pair (minipeft's
  step over the peft step timed beside it) and shown as the median pair ratio with its
  min–max: a slow moment of the machine slows both halves of a pair, so the pair ratios
  spread far less than the raw times, and a change of a few percent stands out of that range.
  Wall-clock by default; `--clock cpu` measures the process's CPU time instead, which other
  programs on a shared machine disturb much less.
* peak memory: on CPU, in a fresh subprocess per (shape, mode, library): the peak resident set
  size (Linux VmHWM, reset via /proc/self/clear_refs after the model is built) minus the
  resident size before the first step, i.e. what training adds on top of the weights
  (gradients, optimizer state, activations). On a GPU: torch.cuda.max_memory_allocated.

Note on lora_attn: GPT-2 fuses q, k, v into one c_attn layer, so peft's LoRA there is a single
rank-8 update of all three (fewer parameters than minipeft's three rank-8 updates); the table
lists both trainable counts. Finally it times inference on the LoRA-all model: base, LoRA
unmerged and LoRA merged (merge_and_unload), for both libraries. CPU runs in fp32; when a
CUDA GPU is present the whole table is repeated there under bf16 autocast.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from minipeft.model import GPT, GPTConfig

LIBRARIES = ("minipeft", "peft")
MODES = ("full", "lora_attn", "lora_all", "frozen")
MINIPEFT_TARGETS = {"lora_attn": ["q", "k", "v", "o"],
                    "lora_all": ["q", "k", "v", "o", "fc", "proj"]}
PEFT_TARGETS = {"lora_attn": ["c_attn", "attn.c_proj"],
                "lora_all": ["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]}
LORA_R, LORA_ALPHA, LR = 8, 16, 1e-4
SHAPE_NAMES = ("gpt2-small", "small")  # the keys of shapes()


@dataclass(frozen=True)
class Workload:
    config: GPTConfig
    batch_size: int
    seq_len: int
    reps: int  # default number of timed steps (a GPT-2-small step takes seconds on a CPU)


def shapes() -> dict[str, Workload]:
    from minipeft.pretrained import SIZES

    return {
        "gpt2-small": Workload(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12,
                                         n_head=12, d_model=768), batch_size=1, seq_len=128,
                               reps=7),
        "small": Workload(SIZES["small"].config, batch_size=16, seq_len=128, reps=20),
    }


# --------------------------------------------------------------------------------------
# One training step per library and mode
# --------------------------------------------------------------------------------------
@dataclass
class Trainer:
    """A model ready to train plus the function that performs one step on it."""

    model: nn.Module
    step: Callable[[], None]
    trainable: int


def batch(work: Workload, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(0, work.config.vocab_size, (work.batch_size, work.seq_len + 1),
                        generator=generator)
    return idx.to(device)


def make_step(model: nn.Module, loss_fn: Callable[[], torch.Tensor],
              autocast) -> tuple[Callable[[], None], int]:
    """forward + loss + backward (+ AdamW step over the trainable parameters, if any)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR) if params else None

    def step():
        with autocast():
            loss = loss_fn()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def minipeft_trainer(work: Workload, mode: str, device: str, autocast) -> Trainer:
    from minipeft.methods.base import get_peft_model
    from minipeft.methods.lora import LoraConfig

    torch.manual_seed(0)
    model = GPT(work.config).to(device).train()
    idx = batch(work, device)
    inputs, targets = idx[:, :-1], idx[:, 1:]
    if mode in MINIPEFT_TARGETS:
        model = get_peft_model(model, LoraConfig(r=LORA_R, alpha=LORA_ALPHA, dropout=0.0,
                                                 target_modules=MINIPEFT_TARGETS[mode])).train()
    if mode == "frozen":
        model.requires_grad_(False)
        embeddings = model.tok_emb(inputs).detach().requires_grad_(True)  # (B, T, d)
        loss_fn = lambda: model(inputs_embeds=embeddings, targets=targets).loss  # noqa: E731
    else:
        loss_fn = lambda: model(inputs, targets=targets).loss  # noqa: E731
    return Trainer(model, *make_step(model, loss_fn, autocast))


def hf_gpt2(config: GPTConfig):
    import transformers

    transformers.logging.set_verbosity_error()  # no notes about unused config fields
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing",
                            category=FutureWarning)  # transformers' own deprecation, via peft
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.d_model,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=config.d_ff,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    # SDPA attention, as minipeft uses (F.scaled_dot_product_attention)
    return transformers.GPT2LMHeadModel._from_config(hf_config, attn_implementation="sdpa")


def peft_trainer(work: Workload, mode: str, device: str, autocast) -> Trainer:
    import peft

    torch.manual_seed(0)
    model = hf_gpt2(work.config).to(device).train()
    idx = batch(work, device)
    inputs = idx[:, :-1]
    labels = idx[:, :-1]  # transformers shifts labels inside: the same next-token targets
    if mode in PEFT_TARGETS:
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, fan_in_fan_out=True,
            target_modules=PEFT_TARGETS[mode])).train()
    if mode == "frozen":
        model.requires_grad_(False)
        embeddings = model.transformer.wte(inputs).detach().requires_grad_(True)
        loss_fn = lambda: model(inputs_embeds=embeddings, labels=labels).loss  # noqa: E731
    else:
        loss_fn = lambda: model(input_ids=inputs, labels=labels).loss  # noqa: E731
    return Trainer(model, *make_step(model, loss_fn, autocast))


TRAINERS = {"minipeft": minipeft_trainer, "peft": peft_trainer}


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------
def cuda_clock() -> float:
    torch.cuda.synchronize()  # wait for the queued kernels, or their time would be missed
    return time.perf_counter()


# wall: elapsed time, what a user waits (use it on a quiet machine). cpu: CPU seconds of this
# process, which a busy machine disturbs far less (with --threads 1 it is the compute time).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], object], clock: Callable[[], float]) -> float:
    start = clock()
    fn()
    return clock() - start


def interleaved_times(fns: dict[str, Callable[[], object]], reps: int,
                      clock: Callable[[], float]) -> dict[str, list[float]]:
    """Seconds of each timed call, per name; one untimed warm-up call each, then the names
    alternate, so the i-th times of all names form one interleaved pair."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for _ in range(reps):
        for name in order:
            times[name].append(timed(fns[name], clock))
        order.reverse()  # whoever ran second this time runs first next time
    return times


def spread(samples: list[float]) -> tuple[float, float, float]:
    """(min, median, max) of a list of measurements."""
    return min(samples), statistics.median(samples), max(samples)


def pair_ratios(ours: list[float], theirs: list[float]) -> tuple[float, float, float]:
    """(min, median, max) of ours[i] / theirs[i] over the interleaved pairs."""
    return spread([a / b for a, b in zip(ours, theirs, strict=True)])


def rss_now_and_reset_peak() -> int | None:
    """Current resident set size in bytes, after resetting the kernel's peak (Linux only)."""
    try:
        # Hand memory freed while building back to the OS first, so it cannot hide inside
        # the baseline and then be reused by training unseen (glibc keeps small frees).
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM)
        return proc_status_bytes("VmRSS")
    except OSError:
        return None


def proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"{field} not in /proc/self/status")


def training_memory(library: str, shape: str, mode: str, device: str, autocast) -> float | None:
    """MiB that `steps` training steps add on top of the built model (see module docstring)."""
    trainer = TRAINERS[library](shapes()[shape], mode, device, autocast)
    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(2):
            trainer.step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = rss_now_and_reset_peak()
    if before is None:
        return None  # no /proc: peak memory is not measured on this system
    for _ in range(2):  # the second step holds gradients and optimizer state from the start
        trainer.step()
    return (proc_status_bytes("VmHWM") - before) / 2**20


def memory_in_subprocess(library: str, shape: str, mode: str, threads: int) -> float | None:
    """Run `training_memory` in a fresh Python, so no earlier allocation hides the peak."""
    command = [sys.executable, "-m", "minipeft.course.bench", "--memory-worker", library, shape,
               mode, "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory worker {library}/{shape}/{mode} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])["mib"]


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------
@dataclass
class Row:
    shape: str
    mode: str
    trainable: dict[str, int]
    seconds: dict[str, list[float]]  # every timed step, per library
    mib: dict[str, float | None]


def progress(message: str) -> None:
    """A timestamped line on stderr, so a long run shows where it is (stdout has the tables)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def training_rows(shape: str, reps: int, device: str, autocast, clock, threads: int,
                  measure_memory: bool = True) -> list[Row]:
    rows = []
    for mode in MODES:
        progress(f"{shape} {mode} on {device}: step time, {reps} reps per library")
        trainers = {lib: TRAINERS[lib](shapes()[shape], mode, device, autocast)
                    for lib in LIBRARIES}
        seconds = interleaved_times({lib: t.step for lib, t in trainers.items()}, reps, clock)
        trainable = {lib: t.trainable for lib, t in trainers.items()}
        del trainers
        gc.collect()
        progress(f"{shape} {mode} on {device}: peak memory")
        if not measure_memory:
            mib = {lib: None for lib in LIBRARIES}
        elif device == "cuda":
            mib = {lib: training_memory(lib, shape, mode, device, autocast) for lib in LIBRARIES}
        else:
            mib = {lib: memory_in_subprocess(lib, shape, mode, threads) for lib in LIBRARIES}
        rows.append(Row(shape, mode, trainable, seconds, mib))
    return rows


def inference_times(shape: str, reps: int, device: str, autocast,
                    clock) -> dict[str, dict[str, float]]:
    """Seconds per forward pass (no grad) of the LoRA-all model: base, unmerged, merged."""
    progress(f"{shape} on {device}: inference latency")
    work = shapes()[shape]
    ours = minipeft_trainer(work, "lora_all", device, autocast).model.eval()
    theirs = peft_trainer(work, "lora_all", device, autocast).model.eval()
    randomize_lora(ours)  # B = 0 at init would let a lazy implementation skip the branch
    randomize_lora(theirs)
    idx = batch(work, device)[:, :-1]

    def forward(model, **kwargs):
        def run():
            with torch.no_grad(), autocast():
                model(**kwargs)
        return run

    result = {}
    with ours.disable_adapter(), theirs.disable_adapter():
        result["base"] = interleaved_times({"minipeft": forward(ours, idx=idx),
                                            "peft": forward(theirs, input_ids=idx)}, reps, clock)
    result["LoRA unmerged"] = interleaved_times({"minipeft": forward(ours, idx=idx),
                                                 "peft": forward(theirs, input_ids=idx)},
                                                reps, clock)
    ours, theirs = ours.merge_and_unload(), theirs.merge_and_unload()
    result["LoRA merged"] = interleaved_times({"minipeft": forward(ours, idx=idx),
                                               "peft": forward(theirs, input_ids=idx)},
                                              reps, clock)
    return result


def randomize_lora(model: nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01)


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b <= 0 else f"{a / b:.2f}"


def mib(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def ms_spread(samples: list[float]) -> str:
    """'median (min–max)' in milliseconds."""
    low, median, high = spread(samples)
    return f"{1e3 * median:.1f} ({1e3 * low:.1f}–{1e3 * high:.1f})"


def ratio_spread(ours: list[float], theirs: list[float]) -> str:
    """'median (min–max)' of the pair ratios."""
    low, median, high = pair_ratios(ours, theirs)
    return f"{median:.2f} ({low:.2f}–{high:.2f})"


def over_frozen(row: Row, frozen: Row) -> tuple[float, float, float]:
    """(min, median, max) of minipeft's step over its frozen step, in percent: the rows ran
    apart, so their steps are not pairs; the range spans the medians of one row against the
    extremes of the other."""
    low, median, high = spread(row.seconds["minipeft"])
    f_low, f_median, f_high = spread(frozen.seconds["minipeft"])
    return 100 * (low / f_high - 1), 100 * (median / f_median - 1), 100 * (high / f_low - 1)


def training_table(rows: list[Row]) -> str:
    lines = ["| shape | mode | trainable minipeft / peft | step ms minipeft | step ms peft "
             "| time ratio (pairs) | peak MiB minipeft | peak MiB peft | memory ratio "
             "| minipeft over its frozen step |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    frozen = {r.shape: r for r in rows if r.mode == "frozen"}
    for r in rows:
        s, m = r.seconds, r.mib
        low, median, high = over_frozen(r, frozen[r.shape])
        lines.append(
            f"| {r.shape} | {r.mode} | {r.trainable['minipeft']:,} / {r.trainable['peft']:,} "
            f"| {ms_spread(s['minipeft'])} | {ms_spread(s['peft'])} "
            f"| {ratio_spread(s['minipeft'], s['peft'])} | {mib(m['minipeft'])} "
            f"| {mib(m['peft'])} | {ratio(m['minipeft'], m['peft'])} "
            f"| {median:+.0f}% ({low:+.0f}…{high:+.0f}%) |")
    return "\n".join(lines)


def inference_table(shape: str, times: dict[str, dict[str, list[float]]]) -> str:
    base = times["base"]
    lines = [f"| {shape} inference | ms minipeft | ms peft | time ratio (pairs) "
             "| minipeft / its base | peft / its base |", "|---|---:|---:|---:|---:|---:|"]
    for name, t in times.items():
        lines.append(f"| {name} | {ms_spread(t['minipeft'])} | {ms_spread(t['peft'])} "
                     f"| {ratio_spread(t['minipeft'], t['peft'])} "
                     f"| {ratio(spread(t['minipeft'])[1], spread(base['minipeft'])[1])} "
                     f"| {ratio(spread(t['peft'])[1], spread(base['peft'])[1])} |")
    return "\n".join(lines)


def closing_note(rows: list[Row]) -> str:
    """One line per mode: minipeft's time as a ratio of peft's, plus the frozen bound."""
    lines = []
    frozen = {r.shape: r for r in rows if r.mode == "frozen"}
    for r in rows:
        line = (f"- {r.shape} {r.mode}: minipeft/peft step time "
                f"{ratio_spread(r.seconds['minipeft'], r.seconds['peft'])}, "
                f"memory {ratio(r.mib['minipeft'], r.mib['peft'])}")
        if r.mode.startswith("lora"):
            low, median, high = over_frozen(r, frozen[r.shape])
            line += (f"; {median:+.0f}% ({low:+.0f}…{high:+.0f}%) relative to the frozen "
                     "bound (target ≤ +15%)")
        lines.append(line)
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def run_benchmark(shape_names: list[str], reps: int | None, threads: int, clock: str = "wall",
                  measure_memory: bool = True, out=print) -> list[Row]:
    """Print the tables for `shape_names` (reps=None: each shape's default) and return rows."""
    for library in ("transformers", "peft"):
        if importlib.util.find_spec(library) is None:
            raise RuntimeError(f"the benchmark compares minipeft with transformers + peft, and "
                               f"{library} is not installed: pip install -r requirements-dev.txt")
    torch.set_num_threads(threads)
    devices = [("cpu", f"fp32, {clock} clock", nullcontext, CLOCKS[clock])]
    if torch.cuda.is_available():
        devices.append(("cuda", "bf16 autocast, wall clock",
                        lambda: torch.autocast("cuda", dtype=torch.bfloat16), cuda_clock))
    out(f"machine: {machine()}")
    started = time.perf_counter()
    rows = []
    for device, precision, autocast, clock_fn in devices:
        for shape in shape_names:
            shape_reps = reps or shapes()[shape].reps
            shape_rows = training_rows(shape, shape_reps, device, autocast, clock_fn, threads,
                                       measure_memory)
            inference = inference_times(shape, shape_reps, device, autocast, clock_fn)
            out(f"\n### {shape} on {device} ({precision}): median (min–max) of {shape_reps} "
                "timed reps\n")
            out(training_table(shape_rows) + "\n")
            out(inference_table(shape, inference))
            rows += shape_rows
        out(f"\nratios on {device} ({precision}):\n" +
            closing_note(rows[-len(shape_names) * len(MODES):]))
    out(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return rows


def main(argv: list[str] | None = None,
         prog: str = "python -m minipeft.course.bench") -> None:
    """Parse the benchmark's options and run it; `python -m minipeft bench` hands its
    arguments here, so the options are defined once, in this file."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--memory-worker", nargs=3, metavar=("LIBRARY", "SHAPE", "MODE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        torch.set_num_threads(args.threads)
        library, shape, mode = args.memory_worker
        print(json.dumps({"mib": training_memory(library, shape, mode, "cpu", nullcontext)}))
        return
    run_benchmark(args.shapes, args.reps, args.threads, args.clock)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shapes, repetitions, threads, clock)."""
    parser.add_argument("--shapes", nargs="+", default=list(SHAPE_NAMES), choices=SHAPE_NAMES)
    parser.add_argument("--reps", type=int, default=None,
                        help="timed steps per library and mode (default: 7 for gpt2-small, "
                             "20 for small)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch CPU threads (default: torch's default)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="CPU timings: wall-clock (default) or process CPU time, steadier "
                             "on a shared machine (best with --threads 1)")


if __name__ == "__main__":
    main()
