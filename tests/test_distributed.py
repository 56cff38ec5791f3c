"""Several processes under torchrun (gloo on the CPU) give what one process gives.

Each test launches `python -m torch.distributed.run --nproc_per_node 2` for real and
compares with the same run in one process: the data-parallel gradient must be the
single-process gradient of the global batch, so the trained tensors agree up to the order
in which floats were summed (Adam's g/√v magnifies that order for entries whose gradients
are near zero; 1e-5 absolute holds with a wide margin at these sizes).
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def environment() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    # --standalone: a rendezvous on this machine at a free port
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(processes), *args])


def python(*args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, *args])


def run(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `command` in its own process group, so that a hung run's ranks are ended too."""
    process = subprocess.Popen(command, cwd=REPO, env=environment(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def finetune_command(save: Path, method: str = "lora") -> list[str]:
    return ["-m", "minipeft", "finetune", "--size", "small", "--task", "sentiment",
            "--method", method, "--steps", "20", "--batch-size", "16", "--eval-limit", "20",
            "--quiet", "--save", str(save)]


def test_two_processes_train_the_adapter_one_process_trains(tmp_path):
    """The issue's acceptance run: LoRA on sentiment, 20 steps of a global batch of 16."""
    one = python(*finetune_command(tmp_path / "D1"))
    assert one.returncode == 0, one.stderr
    two = torchrun(*finetune_command(tmp_path / "D2"))
    assert two.returncode == 0, two.stderr
    d1 = load_file(tmp_path / "D1" / "adapter_model.safetensors")
    d2 = load_file(tmp_path / "D2" / "adapter_model.safetensors")
    assert max_difference(d1, d2) < TOLERANCE
    assert max_difference(d1, {k: torch.zeros_like(v) for k, v in d1.items()}) > 1e-2  # trained
    assert two.stdout.count("adapter saved to") == 1  # rank 0 alone reports and saves
    report = [line for line in one.stdout.splitlines() if line.startswith("validation")]
    assert report[0].split("answer loss")[0] in two.stdout  # same metric before and after


@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory):
    """tests/ddp_worker.py in one process and in two (gloo): its files, by run."""
    out = tmp_path_factory.mktemp("ddp")
    one = python("tests/ddp_worker.py", str(out / "one"))
    assert one.returncode == 0, one.stderr
    two = torchrun("tests/ddp_worker.py", str(out / "two"))
    assert two.returncode == 0, two.stderr
    return out


@pytest.mark.parametrize("case", ["finetune", "pretrain"])
def test_ranks_end_with_the_single_process_weights_and_loss_curve(worker_runs, case):
    """finetune: answer-only targets of uneven length, so the two halves of a batch hold
    different numbers of target tokens (a plain mean per rank would be another gradient).
    pretrain: every tensor trains (the tied head included) with weight decay."""
    single = torch.load(worker_runs / "one" / f"{case}.rank0.pt")
    rank0 = torch.load(worker_runs / "two" / f"{case}.rank0.pt")
    rank1 = torch.load(worker_runs / "two" / f"{case}.rank1.pt")
    assert max_difference(rank0["tensors"], rank1["tensors"]) == 0  # every rank: same φ
    assert max_difference(single["tensors"], rank0["tensors"]) < TOLERANCE
    # The logged loss is the global batch's, on every rank.
    assert rank0["losses"] == rank1["losses"]
    assert rank0["losses"] == pytest.approx(single["losses"], rel=1e-5)


def test_a_method_ddp_cannot_train_is_refused_before_training(tmp_path):
    """ID3 grows φ from gradients of frozen weights, which DDP does not all-reduce."""
    run = torchrun(*finetune_command(tmp_path / "id3", method="id3"))
    assert run.returncode != 0
    assert "ID3 chooses its entries from gradients of the frozen weights" in run.stderr
    assert "fine-tune" not in run.stderr and not (tmp_path / "id3").exists()
