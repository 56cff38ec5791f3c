"""`python -m minipeft ...`: the commands work and bad input gets one clear message."""
import subprocess
import sys

import pytest

from minipeft.__main__ import main


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "minipeft", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ["info", "pretrain", "finetune", "generate", "build-data", "demo", "slides"]:
        assert command in out


def test_info_lists_sizes_tasks_and_methods(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ["tiny", "small", "base", "sentiment", "table2text", "lora", "full"]:
        assert word in out


def test_unknown_size_is_rejected_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--size", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--task", "poetry", "--steps", "1"], "unknown task"),
    (["finetune", "--method", "magic", "--steps", "1"], "unknown method 'magic'"),
    (["generate", "--prompt", "the fox " * 100, "--max-new-tokens", "5"], "context window"),
])
def test_bad_input_exits_2_with_one_clear_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_generate_is_reproducible(capsys):
    main(["generate", "--prompt", "the cat", "--seed", "3"])
    first = capsys.readouterr().out
    main(["generate", "--prompt", "the cat", "--seed", "3"])
    assert capsys.readouterr().out == first and first.startswith("the cat")


def test_finetune_prints_the_validation_metric(capsys):
    assert main(["finetune", "--task", "sentiment", "--method", "lora", "--steps", "40",
                 "--eval-limit", "50", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trainable" in out and "validation sentiment, accuracy: before" in out
    assert "answer loss" in out
    assert "note:" not in out  # 40 steps learn sentiment, so no "not learned" hint


def test_finetune_says_when_a_run_ends_at_chance(capsys):
    assert main(["finetune", "--task", "sentiment", "--steps", "1", "--eval-limit", "20",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "(chance 0.500)" in out  # one step at lr 3e-3 does not lift it above chance
    assert "is within 0.02 of chance (0.500): lora has not learned sentiment in 1 step; " \
           "try more steps (--steps 4)" in out


def test_every_task_has_default_finetune_steps_and_paraphrase_gets_600():
    from minipeft.__main__ import FINETUNE_STEPS, not_learned_note
    from minipeft.tasks import TASKS

    assert set(FINETUNE_STEPS) == set(TASKS)
    assert FINETUNE_STEPS["paraphrase"] == 600  # 150 steps leave LoRA at chance there
    assert not_learned_note("t", "m", 10, "bleu", 0.53, 0.5) is None  # 0.03 above chance
    assert not_learned_note("t", "m", 10, "bleu", 0.51, 0.5).startswith("note: bleu 0.510")


@pytest.mark.parametrize("argv, rate", [
    (["--method", "ia3"], "lr 0.03"),  # the method's own rate (ia3.LEARNING_RATES)
    (["--method", "lora"], "lr 0.003"),  # the default rate
    (["--method", "ia3", "--lr", "0.5"], "lr 0.5"),  # an explicit --lr wins
])
def test_finetune_uses_the_methods_learning_rate_unless_given(capsys, argv, rate):
    assert main(["finetune", *argv, "--steps", "1", "--eval-limit", "4", "--quiet"]) == 0
    result_line = next(line for line in capsys.readouterr().out.splitlines()
                       if line.startswith("validation "))
    assert result_line.endswith(rate)


def test_finetune_seed_fixes_the_adapter_initialisation(tmp_path):
    """Same --seed, same adapter file; another seed draws another LoRA A."""
    from safetensors.torch import load_file

    def adapter(seed, name):
        argv = ["finetune", "--steps", "1", "--eval-limit", "4", "--quiet", "--seed", str(seed),
                "--save", str(tmp_path / name)]
        assert main(argv) == 0
        return load_file(str(tmp_path / name / "adapter_model.safetensors"))

    first, again, other = adapter(0, "a"), adapter(0, "b"), adapter(1, "c")
    assert first.keys() == again.keys() == other.keys()
    assert all(first[k].equal(again[k]) for k in first)
    assert not all(first[k].equal(other[k]) for k in first)


def test_demo_trains_lora_merges_exactly_and_lowers_the_answer_loss(capsys):
    from minipeft.demo import run_demo

    report = run_demo(steps=30)
    assert report["merge_gap"] < 1e-4
    assert report["answer_loss_after"] < 0.5 * report["answer_loss_before"]
    assert report["adapter_kib"] < 100  # 16,384 fp32 values + config
    assert "trainable: 16,384" in capsys.readouterr().out
