"""Nothing lost, nothing silent: atomic saves, exact resume, strict adapter files, guards.

Each test plays a user who kills a run, edits a file or mistypes an argument, and checks
that the result is either the intact old state, the complete new one, or one clear error.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minipeft.__main__ import main
from minipeft.methods import (AdaLoraConfig, IA3Config, LoraConfig, LoraModel, MaskConfig,
                              PromptTuningConfig, get_peft_model)
from minipeft.methods.base import CannotMergeError, PeftModel
from minipeft.train import NonFiniteLossError, train_loop
from helpers import tiny_gpt, tokens

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def lora(seed: int = 0, **config) -> LoraModel:
    model = get_peft_model(tiny_gpt(), LoraConfig(r=2, **config))
    with torch.no_grad():  # B ≠ 0, so the adapter changes the logits
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    return model


def logits(model) -> torch.Tensor:
    return model(tokens()).logits


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------
# Saves are atomic
# --------------------------------------------------------------------------------------
KILL_POINTS = {
    # while the weights are half written into the temporary folder
    "weights": "Path.write_bytes",
    # after the weights, while the config is half written
    "config": "Path.write_text",
    # both files complete in the temporary folder, before it replaces the old one
    "swap": "minipeft.files.swap_in_directory",
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_save_killed_at_any_point_leaves_the_old_adapter_complete(tmp_path, point):
    target = tmp_path / "adapter"
    old = lora(seed=1)
    old.save_pretrained(target)
    expected = logits(old)
    result = run_python(f"""
        import os, signal, torch
        from pathlib import Path
        import minipeft.files
        from test_reliability import lora
        point = {point!r}
        def die(*args, **kwargs):
            if point != "swap":  # write part of the file first, as a kill mid-write would
                path, data = args[0], args[1]
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2].encode() if isinstance(data, str)
                            else data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        if point == "weights":
            Path.write_bytes = die
        elif point == "config":
            Path.write_text = die
        else:
            minipeft.files.swap_in_directory = die
        lora(seed=2).save_pretrained({str(target)!r})
    """)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert sorted(p.name for p in target.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    reloaded = PeftModel.from_pretrained(tiny_gpt(), target)
    assert torch.equal(logits(reloaded), expected)


def test_a_completed_save_replaces_the_old_adapter_and_files_are_0644(tmp_path):
    lora(seed=1).save_pretrained(tmp_path / "a")
    new = lora(seed=2)
    new.save_pretrained(tmp_path / "a")
    assert torch.equal(logits(PeftModel.from_pretrained(tiny_gpt(), tmp_path / "a")),
                       logits(new))
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary folder left


def test_saving_over_another_methods_adapter_is_refused(tmp_path):
    lora().save_pretrained(tmp_path / "a")
    ia3 = get_peft_model(tiny_gpt(), IA3Config(target_modules=["k", "v", "proj"]))
    with pytest.raises(ValueError, match="holds a LORA adapter"):
        ia3.save_pretrained(tmp_path / "a")
    assert json.loads((tmp_path / "a" / CONFIG_FILE).read_text())["peft_type"] == "LORA"


def test_saving_into_a_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("my notes")
    with pytest.raises(ValueError, match="other files"):
        lora().save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "my notes"


def test_saving_after_merge_and_unload_is_refused(tmp_path):
    model = lora()
    model.merge_and_unload()
    with pytest.raises(RuntimeError, match="merge_and_unload"):
        model.save_pretrained(tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_finetune_checks_the_save_path_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["finetune", "--steps", "5", "--save", str(blocker / "adapter"),
                 "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "trainable" not in captured.out  # stopped before the model was even described
    assert captured.err.startswith("error: cannot save") and captured.err.count("\n") == 1


# --------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------
FINETUNE = ["-m", "minipeft", "finetune", "--method", "lora", "--steps", "60",
            "--eval-limit", "20", "--quiet"]


def test_a_finetune_killed_after_a_checkpoint_resumes_bit_identically(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, *FINETUNE, "--save", str(tmp_path / "whole")], env=env,
                   check=True, capture_output=True, cwd=REPO, timeout=300)
    checkpoints = tmp_path / "ckpt"
    resumable = [*FINETUNE, "--checkpoint-dir", str(checkpoints), "--checkpoint-every", "5",
                 "--save", str(tmp_path / "resumed")]
    run = subprocess.Popen([sys.executable, *resumable], env=env, cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (checkpoints / "checkpoint.pt").exists():
        assert run.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL  # killed mid-run, before saving
    assert not (tmp_path / "resumed").exists()
    subprocess.run([sys.executable, *resumable, "--resume"], env=env, check=True,
                   capture_output=True, cwd=REPO, timeout=300)
    whole = load_file(str(tmp_path / "whole" / WEIGHTS_FILE))
    resumed = load_file(str(tmp_path / "resumed" / WEIGHTS_FILE))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


class Interrupted(Exception):
    pass


def batches(stop_at: int | None = None, seed: int = 3):
    """A deterministic batch stream; raising at `stop_at` plays the part of a kill."""
    generator = torch.Generator().manual_seed(seed)
    for i in range(10_000):
        if i == stop_at:
            raise Interrupted
        x = torch.randint(0, 64, (4, 12), generator=generator)
        yield x, torch.roll(x, -1, dims=1)


@pytest.mark.parametrize("config", [
    AdaLoraConfig(init_r=4, target_r=2, target_modules=["q", "v"], t_init=0.2, t_final=0.3),
    MaskConfig(selector="id3", budget=0.05),
    LoraConfig(r=2, dropout=0.1),  # dropout draws from the global RNG: it is restored too
], ids=["adalora", "id3", "lora_dropout"])
def test_resume_restores_every_piece_of_training_state(tmp_path, config):
    def fresh():
        torch.manual_seed(0)
        return get_peft_model(tiny_gpt(), config)

    args = dict(steps=20, lr=1e-2, progress=False, checkpoint_dir=tmp_path,
                checkpoint_every=4)
    whole = fresh()
    train_loop(whole, batches(), steps=20, lr=1e-2, progress=False)
    with pytest.raises(Interrupted):
        train_loop(fresh(), batches(stop_at=14), **args)
    resumed = fresh()
    result = train_loop(resumed, batches(), resume=True, **args)
    assert len(result.losses) == 20
    a, b = whole.adapter_state_dict(), resumed.adapter_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_settings_is_refused(tmp_path):
    train_loop(lora(), batches(), steps=4, lr=1e-2, progress=False, checkpoint_dir=tmp_path,
               checkpoint_every=2)
    with pytest.raises(ValueError, match="other settings"):
        train_loop(lora(), batches(), steps=8, lr=1e-2, progress=False,
                   checkpoint_dir=tmp_path, resume=True)


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_loop(lora(), batches(), steps=4, progress=False, checkpoint_dir=tmp_path,
                   resume=True)


# --------------------------------------------------------------------------------------
# Adapter files are read strictly
# --------------------------------------------------------------------------------------
def saved(tmp_path, model=None) -> Path:
    return (model or lora()).save_pretrained(tmp_path / "adapter")


def edit_config(folder: Path, change) -> None:
    meta = json.loads((folder / CONFIG_FILE).read_text())
    change(meta)
    (folder / CONFIG_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("alpha"), "missing fields \\['alpha'\\]"),
    (lambda m: m.pop("use_rslora"), "missing fields \\['use_rslora'\\]"),
    (lambda m: m.update(use_rslora="false"), "use_rslora='false'"),
    (lambda m: m.update(target_modules="qv"), "target_modules='qv'"),
    (lambda m: m.update(r=True), "r=True"),
    (lambda m: m.update(alpha="16"), "alpha='16'"),
    (lambda m: m.update(alpha=float("inf")), "alpha=inf"),
    (lambda m: m.update(alpha=-1.0), "alpha .* must be positive"),
    (lambda m: m.update(surprise=1), "unknown fields \\['surprise'\\]"),
    (lambda m: m.pop("format_version"), "format_version None"),
    (lambda m: m.update(format_version=99), "format_version 99"),
    (lambda m: m.pop("weights_sha256"), "weights_sha256"),
])
def test_a_damaged_config_is_one_clear_error(tmp_path, change, message):
    folder = saved(tmp_path)
    edit_config(folder, change)
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(tiny_gpt(), folder)


def test_adapter_fields_that_change_the_computation_are_all_required(tmp_path):
    folder = saved(tmp_path, get_peft_model(tiny_gpt(), AdaLoraConfig(init_r=2, target_r=1)))
    for field in ("alpha", "init_r", "orth_reg_weight"):
        meta = json.loads((folder / CONFIG_FILE).read_text())
        meta.pop(field)
        (tmp_path / "edited").mkdir(exist_ok=True)
        (tmp_path / "edited" / CONFIG_FILE).write_text(json.dumps(meta))
        (tmp_path / "edited" / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes())
        with pytest.raises(ValueError, match=f"missing fields \\['{field}'\\]"):
            PeftModel.from_pretrained(tiny_gpt(), tmp_path / "edited")


def rewrite_weights(folder: Path, change) -> None:
    """Replace the weights and fix the checksum, as a deliberate edit would."""
    import hashlib

    tensors = load_file(str(folder / WEIGHTS_FILE))
    save_file(change(tensors), str(folder / WEIGHTS_FILE))
    digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    edit_config(folder, lambda m: m.update(weights_sha256=digest))


@pytest.mark.parametrize("change, message", [
    (lambda t: {k: v.long() for k, v in t.items()}, "torch.int64"),
    (lambda t: {k: torch.full_like(v, float("nan")) for k, v in t.items()}, "NaN"),
])
def test_weights_must_be_finite_floats(tmp_path, change, message):
    folder = saved(tmp_path)
    rewrite_weights(folder, change)
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(tiny_gpt(), folder)


def test_a_flipped_byte_in_the_weights_is_caught_by_the_checksum(tmp_path):
    folder = saved(tmp_path)
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-3] ^= 0x01  # one bit of one float: the file still parses
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        PeftModel.from_pretrained(tiny_gpt(), folder)


@pytest.mark.parametrize("name, content", [
    (CONFIG_FILE, b"{not json"), (CONFIG_FILE, b"\xff\xfe"), (CONFIG_FILE, b"[1, 2]"),
    (WEIGHTS_FILE, b"\x08\x00\x00\x00\x00\x00\x00\x00{}"), (WEIGHTS_FILE, b""),
])
def test_a_file_that_does_not_parse_names_itself(tmp_path, name, content):
    folder = saved(tmp_path)
    (folder / name).write_bytes(content)
    with pytest.raises(ValueError, match=str(folder / name)):
        PeftModel.from_pretrained(tiny_gpt(), folder)


def test_repeated_mask_indices_are_refused(tmp_path):
    model = get_peft_model(tiny_gpt(), MaskConfig(selector="random", budget=0.01))
    folder = saved(tmp_path, model)
    rewrite_weights(folder, lambda t: {**t, "mask_indices": torch.zeros_like(t["mask_indices"])})
    with pytest.raises(ValueError, match="same entry twice"):
        PeftModel.from_pretrained(tiny_gpt(), folder)


def test_loading_another_methods_folder_with_a_method_class_is_refused(tmp_path):
    folder = saved(tmp_path, get_peft_model(tiny_gpt(), PromptTuningConfig(
        num_virtual_tokens=2, init="random")))
    with pytest.raises(ValueError, match="PROMPT_TUNING adapter.*LoraModel.from_pretrained"):
        LoraModel.from_pretrained(tiny_gpt(), folder)


# --------------------------------------------------------------------------------------
# Numbers and arguments
# --------------------------------------------------------------------------------------
def test_a_diverging_run_stops_with_an_error_naming_the_learning_rate():
    with pytest.raises(NonFiniteLossError, match="learning rate"):
        train_loop(lora(), batches(), steps=30, lr=1e30, progress=False)


def test_finetune_with_a_huge_learning_rate_saves_nothing(tmp_path, capsys):
    assert main(["finetune", "--steps", "20", "--lr", "1e30", "--eval-limit", "10",
                 "--save", str(tmp_path / "adapter"), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("argv", [
    ["pretrain", "--size", "tiny", "--steps", "0"],
    ["finetune", "--steps", "-3"],
    ["finetune", "--eval-limit", "-1"],
    ["finetune", "--batch-size", "0"],
    ["finetune", "--lr", "inf"],
    ["finetune", "--lr", "0"],
    ["finetune", "--checkpoint-every", "0"],
    ["generate", "--max-new-tokens", "0"],
    ["generate", "--top-k", "0"],
    ["generate", "--temperature", "-1"],
    ["pretrain", "--size", "tiny", "--threads", "0"],
])
def test_counts_and_rates_reject_zero_negative_and_infinite_values(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error: argument" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps must be a positive integer"),
    (dict(steps=True), "steps must be a positive integer"),
    (dict(eval_limit=-1), "eval_limit must be a positive integer"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(checkpoint_every=5), "need checkpoint_dir"),
])
def test_the_api_rejects_the_same_values(kwargs, message):
    from minipeft.train import train

    with pytest.raises(ValueError, match=message):
        train(lora(), "sentiment", **{"steps": 1, **kwargs})


def test_an_unforeseen_failure_is_still_one_error_line(capsys, monkeypatch):
    import minipeft.__main__ as cli

    def broken(args):
        raise IndexError("list index out of range")

    monkeypatch.setattr(cli, "cmd_info", broken)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: IndexError") and err.count("\n") == 1


# --------------------------------------------------------------------------------------
# Misuse
# --------------------------------------------------------------------------------------
def test_get_peft_model_refuses_a_peft_model_and_an_adapted_base():
    base = tiny_gpt()
    first = get_peft_model(base, LoraConfig(r=2))
    with pytest.raises(ValueError, match="not a LoraModel"):
        get_peft_model(first, LoraConfig(r=2))
    with pytest.raises(ValueError, match="already carries an adapter"):
        get_peft_model(base, LoraConfig(r=2, target_modules=["k"]))


def test_merge_and_unload_checks_every_layer_before_touching_any():
    model = lora(target_modules=["q", "head"])
    q_before = model.base_model.blocks[0].attn.q.base_layer.weight.clone()
    out_before = logits(model)
    with pytest.raises(CannotMergeError, match="head"):
        model.merge_and_unload()
    assert torch.equal(model.base_model.blocks[0].attn.q.base_layer.weight, q_before)
    assert not model.merged
    assert torch.equal(logits(model), out_before)


def test_merge_inside_disable_adapter_is_refused():
    model = lora()
    with model.disable_adapter(), pytest.raises(RuntimeError, match="disable_adapter"):
        model.merge()
    assert not model.merged


def test_training_a_merged_model_is_refused():
    model = lora()
    model.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        train_loop(model, batches(), steps=2, progress=False)


# --------------------------------------------------------------------------------------
# CI runs what the README says
# --------------------------------------------------------------------------------------
def test_ci_runs_the_readmes_two_commands_as_written():
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci, command
    test_script = (REPO / "scripts" / "test.sh").read_text()
    assert "pip install" not in test_script  # installing is the set-up command's job


@pytest.mark.parametrize("field, value, message", [
    ("num_virtual_tokens", 10**12, "no room for input"),
    ("bottleneck_size", 10**12, "wider than the model"),
])
def test_sizes_in_a_config_file_are_checked_before_allocating(tmp_path, field, value,
                                                               message):
    from minipeft.methods import AdapterConfig

    config = (PromptTuningConfig(num_virtual_tokens=2, init="random")
              if field == "num_virtual_tokens" else AdapterConfig(bottleneck_size=2))
    folder = saved(tmp_path, get_peft_model(tiny_gpt(), config))
    edit_config(folder, lambda m: m.update({field: value}))
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(tiny_gpt(), folder)


@pytest.mark.parametrize("make", [
    lambda: LoraConfig(alpha=0.0), lambda: LoraConfig(alpha=float("nan")),
    lambda: __import__("minipeft").AdapterConfig(scale=0.0),
    lambda: __import__("minipeft").AdapterConfig(scale=float("inf")),
], ids=["lora_alpha_0", "lora_alpha_nan", "adapter_scale_0", "adapter_scale_inf"])
def test_non_positive_or_non_finite_scales_are_config_errors(make):
    with pytest.raises(ValueError):
        make()
