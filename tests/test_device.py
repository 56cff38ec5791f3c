"""Devices and precision: choosing a device, bf16 autocast, and the checks that refuse what
this machine cannot do. The tests marked `cuda` run only where a CUDA GPU is present
(scripts/test.sh runs them there); they compare a GPU run with the same run on the CPU."""
import copy

import pytest
import torch

from minipeft import default_device
from minipeft.__main__ import main
from minipeft.device import autocast, check_precision, model_device, resolve_device
from minipeft.distributed import check_batch_fits_world, check_can_wrap
from minipeft.methods import PRESETS, LoraConfig, get_peft_model
from minipeft.model import GPT, GPTConfig
from minipeft.train import lm_windows, train_loop

CONFIG = GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, d_model=16)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def lora_model(seed=0):
    torch.manual_seed(seed)
    return get_peft_model(GPT(CONFIG), LoraConfig(r=2, alpha=4, target_modules=["q", "v"]))


def toy_batches():
    tokens = torch.arange(2000) % CONFIG.vocab_size  # token t+1 = token t + 1 (mod V)
    return lm_windows(tokens, CONFIG.block_size, batch_size=4, seed=0)


# --------------------------------------------------------------------------------------
# Choosing a device
# --------------------------------------------------------------------------------------
def test_auto_is_cuda_exactly_when_a_gpu_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_default_device_follows_the_environment_variable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("MINIPEFT_DEVICE", raising=False)
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv("MINIPEFT_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv("MINIPEFT_DEVICE", "cuda")
    with pytest.raises(ValueError, match="no usable CUDA GPU"):
        default_device()
    monkeypatch.setenv("MINIPEFT_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        default_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("command", [
    ["finetune", "--steps", "1"], ["generate"], ["demo"],
    ["pretrain", "--size", "tiny", "--steps", "1"],
])
def test_cuda_without_a_gpu_is_one_error_before_any_work(command, capsys):
    assert main([*command, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no usable CUDA GPU" in err and "--device cpu" in err


def test_model_device_is_where_the_parameters_are():
    assert model_device(lora_model()) == torch.device("cpu")
    assert model_device(torch.nn.Module()) == torch.device("cpu")  # nothing to move


# --------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------
def test_bf16_needs_a_device_that_has_it(monkeypatch):
    assert check_precision("bf16", torch.device("cpu")) == "bf16"  # torch's CPU autocast
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="not mps; use --precision fp32"):
        check_precision("bf16", torch.device("mps"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(ValueError, match="Tesla V100 has no bfloat16.*--precision fp32"):
        check_precision("bf16", torch.device("cuda"))


def test_bf16_training_keeps_phi_and_adam_in_fp32_and_stays_near_fp32():
    """Autocast computes the matrix products in bfloat16 (8 bits of mantissa: relative
    rounding 2⁻⁸ ≈ 4e-3), so the loss curve moves by about that much, not more; φ, its
    gradients and AdamW's moments stay fp32 (Micikevicius et al., 2018, §3.1)."""
    fp32, bf16 = lora_model(), lora_model()
    curve32 = train_loop(fp32, toy_batches(), 8, lr=1e-2, progress=False).losses
    curve16 = train_loop(bf16, toy_batches(), 8, lr=1e-2, progress=False,
                         precision="bf16").losses
    assert curve16 != curve32  # autocast really ran in bfloat16
    assert curve16 == pytest.approx(curve32, rel=3e-2)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())


def test_bf16_forward_rounds_like_bfloat16():
    """An independent account of what autocast does to a linear layer: inputs and weight
    rounded to bfloat16, products accumulated in fp32."""
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(64, 8), torch.randn(5, 64)
    with autocast(torch.device("cpu"), "bf16"):
        out = layer(x)
    by_hand = (x.bfloat16().float() @ layer.weight.bfloat16().float().T
               + layer.bias.bfloat16().float())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), by_hand, rtol=1e-2, atol=1e-2)
    assert not torch.allclose(out.float(), layer(x), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------
# Several processes: what is refused before training
# --------------------------------------------------------------------------------------
def test_the_global_batch_must_split_evenly_over_the_processes():
    check_batch_fits_world(16, 2)
    with pytest.raises(ValueError, match="4 processes but a global batch of 2"):
        check_batch_fits_world(2, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        check_batch_fits_world(6, 4)


def test_torchrun_with_too_small_a_batch_fails_before_the_model_is_built(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "4")  # as torchrun --nproc_per_node 4 sets it
    assert main(["finetune", "--batch-size", "2", "--device", "cpu"]) == 2
    assert "4 processes but a global batch of 2" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["generate"], ["demo"]])
def test_one_process_commands_refuse_torchrun(command, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*command, "--device", "cpu"]) == 2
    assert "start it without torchrun" in capsys.readouterr().err


def test_models_ddp_cannot_train_are_named():
    torch.manual_seed(0)
    frozen = GPT(CONFIG).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        check_can_wrap(frozen)
    check_can_wrap(lora_model())  # fine


# --------------------------------------------------------------------------------------
# On a GPU (skipped on a machine without CUDA)
# --------------------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains_on_the_gpu_like_on_the_cpu(preset):
    """A few steps of each method on CUDA follow the CPU's loss curve (the kernels round
    differently: close, not equal)."""
    torch.manual_seed(0)  # the tokenizer's vocabulary: FISH scores the task's real prompts
    base = GPT(GPTConfig(vocab_size=2048, block_size=64, n_layer=2, n_head=2, d_model=32))
    cpu_model = get_peft_model(copy.deepcopy(base), PRESETS[preset]())
    torch.manual_seed(0)
    gpu_model = get_peft_model(copy.deepcopy(base).cuda(), PRESETS[preset]())
    assert {p.device.type for p in gpu_model.parameters()} == {"cuda"}
    tokens = torch.arange(4000) % 2048
    curves = [train_loop(m, lm_windows(tokens, 32, 8, seed=0), 5, lr=1e-3,
                         progress=False).losses for m in (cpu_model, gpu_model)]
    assert curves[1] == pytest.approx(curves[0], rel=1e-3)


@cuda
def test_task_helpers_and_resume_across_devices_on_the_gpu(tmp_path):
    """Fine-tuning, evaluation, answer loss and generation on CUDA agree with the CPU, and a
    checkpoint written on the GPU resumes on the CPU."""
    from minipeft.pretrained import load_pretrained
    from minipeft.train import answer_loss, evaluate_task, train

    def run(device, **kwargs):
        torch.manual_seed(0)
        model = get_peft_model(load_pretrained("small").to(device),
                               LoraConfig(r=8, alpha=16, target_modules=["q", "v"]))
        result = train(model, "sentiment", steps=10, lr=3e-3, eval_limit=40, progress=False,
                       **kwargs)
        return model, result

    cpu_model, cpu_result = run("cpu")
    gpu_model, gpu_result = run("cuda", checkpoint_dir=tmp_path, checkpoint_every=5)
    assert gpu_result.losses == pytest.approx(cpu_result.losses, rel=1e-3)
    assert abs(gpu_result.final_metric - cpu_result.final_metric) <= 0.05
    assert answer_loss(gpu_model, "sentiment", limit=40) == pytest.approx(
        answer_loss(cpu_model, "sentiment", limit=40), rel=1e-3)
    assert evaluate_task(gpu_model, "arithmetic", limit=10) == pytest.approx(
        evaluate_task(cpu_model, "arithmetic", limit=10), abs=0.2)
    resumed, _ = run("cpu", checkpoint_dir=tmp_path, checkpoint_every=5, resume=True)
    gpu_phi, cpu_phi = gpu_model.adapter_state_dict(), resumed.adapter_state_dict()
    assert all(torch.equal(gpu_phi[k].cpu(), cpu_phi[k]) for k in gpu_phi)  # finished run
    bf16_model, bf16_result = run("cuda", precision="bf16")
    assert bf16_result.losses == pytest.approx(cpu_result.losses, rel=5e-2)
