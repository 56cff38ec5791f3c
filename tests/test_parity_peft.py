"""minipeft's methods against Hugging Face peft on the same GPT-2: same adapter, same logits.

Each test builds a small random GPT-2 with transformers, saves it, loads it into minipeft
(`minipeft.gpt2.load_gpt2`), gives both libraries the *same* adapter weights (copied by hand
here, from minipeft's module to peft's, so the copy does not use minipeft.gpt2's own mapping)
and compares the logits in fp32. minipeft's o, fc, proj are GPT-2's attn.c_proj, mlp.c_fc,
mlp.c_proj.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip(
    "transformers", reason="the peft parity tests need transformers (pip install -r "
                           "requirements-dev.txt)")
peft = pytest.importorskip("peft", reason="the peft parity tests need peft (pip install -r "
                                          "requirements-dev.txt)")

from minipeft.course import bench  # noqa: E402
from minipeft.gpt2 import load_gpt2, load_peft_adapter, save_peft_adapter  # noqa: E402
from minipeft.methods.adalora import AdaLoraConfig  # noqa: E402
from minipeft.methods.base import PeftModel, get_peft_model  # noqa: E402
from minipeft.methods.dora import DoraConfig  # noqa: E402
from minipeft.methods.ia3 import IA3Config  # noqa: E402
from minipeft.methods.lora import LoraConfig, loraplus_param_groups  # noqa: E402
from minipeft.methods.prompts import PrefixTuningConfig, PromptTuningConfig  # noqa: E402
from minipeft.model import GPTConfig  # noqa: E402

GPT2_SHAPE = dict(vocab_size=96, n_positions=40, n_embd=24, n_layer=2, n_head=3,
                  bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0)
ATOL = 1e-4
pytestmark = pytest.mark.filterwarnings(  # transformers' own deprecation, raised inside peft
    "ignore:.*is_gradient_checkpointing.*:FutureWarning")
# minipeft target → the GPT-2 module inside block h[i] (also its peft target name)
GPT2_PATH = {"o": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"}
OURS_PATH = {"o": "attn.o", "fc": "mlp.fc", "proj": "mlp.proj"}  # inside minipeft's block


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    config = transformers.GPT2Config(**GPT2_SHAPE)
    model = transformers.GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # biases and LayerNorms random too
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    return folder


def hf_base(folder):
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


def ours_base(folder):
    return load_gpt2(folder).eval()


def tokens(n=2, length=9, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, GPT2_SHAPE["vocab_size"], (n, length), generator=generator)


def randomize_adapter(model, seed):
    """Random trainable tensors (LoRA's B starts at 0, which would hide a wrong B)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)


def hf_block_module(hf_peft, layer, path):
    return hf_peft.base_model.model.transformer.h[layer].get_submodule(path)


def logits(model, idx):
    with torch.no_grad():
        return model(idx).logits if not isinstance(model, peft.PeftModel) \
            else model(input_ids=idx).logits


# --------------------------------------------------------------------------------------
# LoRA and rsLoRA
# --------------------------------------------------------------------------------------
def lora_pair(folder, targets=("o", "fc", "proj"), r=4, alpha=6.0, rslora=False,
              layers_to_transform=None):
    """(minipeft LoRA, peft LoRA) with identical random A, B."""
    ours = get_peft_model(ours_base(folder), LoraConfig(
        r=r, alpha=alpha, target_modules=list(targets), use_rslora=rslora,
        layers_to_transform=layers_to_transform))
    randomize_adapter(ours, seed=2)
    hf_config = peft.LoraConfig(
        r=r, lora_alpha=alpha, use_rslora=rslora, fan_in_fan_out=True,
        target_modules=[GPT2_PATH[t] for t in targets], layers_to_transform=layers_to_transform,
        layers_pattern=None if layers_to_transform is None else "h")
    theirs = peft.get_peft_model(hf_base(folder), hf_config)
    with torch.no_grad():
        for layer in (layers_to_transform or range(GPT2_SHAPE["n_layer"])):
            for t in targets:
                mine = ours.base_model.blocks[layer].get_submodule(OURS_PATH[t])
                other = hf_block_module(theirs, layer, GPT2_PATH[t])
                other.lora_A["default"].weight.copy_(mine.lora_A["default"])  # (r, d_in)
                other.lora_B["default"].weight.copy_(mine.lora_B["default"])  # (d_out, r)
    return ours, theirs.eval()


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_lora_logits_equal_peft(gpt2_folder, rslora):
    ours, theirs = lora_pair(gpt2_folder, rslora=rslora)
    idx = tokens()
    torch.testing.assert_close(logits(ours, idx), logits(theirs, idx), atol=ATOL, rtol=0)
    # and the adapter matters: without it both are the base again, and differ from above
    with ours.disable_adapter(), theirs.disable_adapter():
        base_ours, base_theirs = logits(ours, idx), logits(theirs, idx)
    torch.testing.assert_close(base_ours, base_theirs, atol=ATOL, rtol=0)
    assert (base_ours - logits(ours, idx)).abs().max() > 1e-2


def test_rslora_scale_differs_from_lora(gpt2_folder):
    """α/√r vs α/r: with r = 4 the rsLoRA update is twice as large; peft agrees on both."""
    plain, _ = lora_pair(gpt2_folder, rslora=False)
    rs, theirs_rs = lora_pair(gpt2_folder, rslora=True)
    layer = rs.base_model.blocks[0].attn.o
    assert layer.scaling["default"] == pytest.approx(2 * plain.base_model.blocks[0].attn.o
                                                     .scaling["default"])
    assert hf_block_module(theirs_rs, 0, "attn.c_proj").scaling["default"] == \
        pytest.approx(layer.scaling["default"])


def test_lora_on_some_layers_and_gradients_equal_peft(gpt2_folder):
    """Top block only; one loss and its gradients w.r.t. A and B agree too."""
    ours, theirs = lora_pair(gpt2_folder, targets=("fc",), layers_to_transform=[1])
    idx = tokens(length=10, seed=5)
    targets = tokens(length=10, seed=6)
    loss_ours = ours(idx, targets=targets).loss
    loss_theirs = theirs(input_ids=idx, labels=targets).loss  # HF shifts labels inside
    loss_theirs_unshifted = torch.nn.functional.cross_entropy(
        theirs(input_ids=idx).logits.reshape(-1, GPT2_SHAPE["vocab_size"]), targets.reshape(-1))
    torch.testing.assert_close(loss_ours, loss_theirs_unshifted, atol=1e-5, rtol=0)
    assert not torch.isclose(loss_ours, loss_theirs)  # the two label conventions differ
    loss_ours.backward()
    loss_theirs_unshifted.backward()
    mine = ours.base_model.blocks[1].mlp.fc
    other = hf_block_module(theirs, 1, "mlp.c_fc")
    torch.testing.assert_close(mine.lora_A["default"].grad, other.lora_A["default"].weight.grad,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mine.lora_B["default"].grad, other.lora_B["default"].weight.grad,
                               atol=1e-5, rtol=1e-4)


def test_merged_lora_equals_peft_merged(gpt2_folder):
    ours, theirs = lora_pair(gpt2_folder)
    idx = tokens(seed=7)
    merged_ours = ours.merge_and_unload()
    merged_theirs = theirs.merge_and_unload()
    torch.testing.assert_close(logits(merged_ours, idx), logits(merged_theirs, idx),
                               atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------
# Weighted combination of adapters: the same combined ΔW for "cat", "linear" and "svd"
# --------------------------------------------------------------------------------------
def two_adapter_pair(folder, second_r=4):
    """(minipeft, peft), both with adapters "default" (r=4, α=6) and "other" (α=3), equal."""
    ours, theirs = lora_pair(folder)
    ours.add_adapter("other", LoraConfig(r=second_r, alpha=3.0,
                                         target_modules=["o", "fc", "proj"]))
    ours.set_adapter("other")
    randomize_adapter(ours, seed=20)
    theirs.add_adapter("other", peft.LoraConfig(
        r=second_r, lora_alpha=3.0, fan_in_fan_out=True,
        target_modules=[GPT2_PATH[t] for t in ("o", "fc", "proj")]))
    with torch.no_grad():
        for layer, t in [(i, t) for i in range(GPT2_SHAPE["n_layer"]) for t in GPT2_PATH]:
            mine = ours.base_model.blocks[layer].get_submodule(OURS_PATH[t])
            other = hf_block_module(theirs, layer, GPT2_PATH[t])
            other.lora_A["other"].weight.copy_(mine.lora_A["other"])
            other.lora_B["other"].weight.copy_(mine.lora_B["other"])
    return ours, theirs


@pytest.mark.parametrize("combination, options, second_r, exact", [
    ("cat", {}, 2, True), ("linear", {}, 4, False), ("svd", {}, 4, False),
    ("svd", {"rank": 8}, 4, True), ("svd", {"rank": 5, "svd_clamp": 0.8}, 2, False)],
    ids=["cat", "linear", "svd-default-rank", "svd-rank8", "svd-rank5-clamp"])
def test_weighted_adapter_gives_peft_delta_weight(gpt2_folder, combination, options, second_r,
                                                  exact):
    """Same combined ΔW as peft in every layer; exact where the combination promises it
    (cat; svd keeping rank ≥ r₁ + r₂), measurably not where it does not (linear's cross
    terms BᵢAⱼ; svd truncated to rank 4 < 8, or clamped)."""
    ours, theirs = two_adapter_pair(gpt2_folder, second_r)
    weights = [0.8, -1.7]
    ours.add_weighted_adapter(["default", "other"], weights, "mix", combination=combination,
                              **options)
    theirs.add_weighted_adapter(["default", "other"], weights, "mix",
                                combination_type=combination,
                                svd_rank=options.get("rank"), svd_clamp=options.get("svd_clamp"))
    ours.set_adapter("mix")
    for layer, t in [(i, t) for i in range(GPT2_SHAPE["n_layer"]) for t in GPT2_PATH]:
        mine = ours.base_model.blocks[layer].get_submodule(OURS_PATH[t])
        other = hf_block_module(theirs, layer, GPT2_PATH[t])
        assert mine.lora_A["mix"].shape == other.lora_A["mix"].weight.shape
        # peft's GPT-2 Conv1D keeps W as (d_in, d_out), so its ΔW is the transpose
        theirs_delta = other.get_delta_weight("mix").T
        torch.testing.assert_close(mine.delta_weight(), theirs_delta, atol=1e-5, rtol=1e-5)
        weighted_sum = sum(w * mine.scaling[n] * mine.lora_B[n] @ mine.lora_A[n]
                           for n, w in zip(["default", "other"], weights))
        error = (mine.delta_weight() - weighted_sum).abs().max().item()
        assert error < 1e-5 if exact else error > 1e-3


# --------------------------------------------------------------------------------------
# LoRA+: the same learning rate for every tensor as peft's create_loraplus_optimizer
# --------------------------------------------------------------------------------------
PEFT_NAME = {"lora_A": "lora_A", "lora_B": "lora_B", "lora_magnitude": "lora_magnitude_vector",
             "Q": "lora_A", "P": "lora_B", "lambda_": "lora_E"}  # minipeft → peft tensor


def peft_loraplus_rates(hf_peft, lr, ratio):
    """{peft parameter name without '.weight': learning rate} from peft's LoRA+ optimizer."""
    from peft.optimizers import create_loraplus_optimizer
    optimizer = create_loraplus_optimizer(hf_peft, torch.optim.AdamW, lr=lr,
                                          loraplus_lr_ratio=ratio)
    name_of = {id(p): n.removesuffix(".weight") for n, p in hf_peft.named_parameters()}
    return {name_of[id(p)]: group["lr"] for group in optimizer.param_groups
            for p in group["params"]}


def ours_loraplus_rates(model, lr, ratio):
    """{peft's name for the tensor: learning rate} from minipeft's loraplus_param_groups."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    rates = {}
    for group in loraplus_param_groups(model, lr=lr, ratio=ratio):
        for p in group["params"]:  # base_model.blocks.1.mlp.fc.lora_B.default → peft's name
            _, layer, *path = name_of[id(p)].removesuffix(".default").split(".")[1:]
            module, role = ".".join(path[:-1]), path[-1]
            gpt2_module = GPT2_PATH[next(t for t, o in OURS_PATH.items() if o == module)]
            rates[f"base_model.model.transformer.h.{layer}.{gpt2_module}."
                  f"{PEFT_NAME[role]}.default"] = group["lr"]
    return rates


@pytest.mark.parametrize("method", ["lora", "dora", "adalora"])
def test_loraplus_rates_equal_peft(gpt2_folder, method):
    """Every trainable tensor gets the rate peft gives it: A (and AdaLoRA's λ, which peft
    stores as an (r, 1) matrix) at lr, B and DoRA's 1-D magnitude at ratio · lr."""
    targets = [GPT2_PATH[t] for t in ("o", "fc", "proj")]
    if method == "adalora":
        ours = get_peft_model(ours_base(gpt2_folder), AdaLoraConfig(
            init_r=4, target_r=2, target_modules=["o", "fc", "proj"]))
        theirs = peft.get_peft_model(hf_base(gpt2_folder), peft.AdaLoraConfig(
            init_r=4, target_r=2, total_step=10, fan_in_fan_out=True, target_modules=targets))
    else:
        config = LoraConfig if method == "lora" else DoraConfig
        ours = get_peft_model(ours_base(gpt2_folder), config(
            r=4, target_modules=["o", "fc", "proj"]))
        theirs = peft.get_peft_model(hf_base(gpt2_folder), peft.LoraConfig(
            r=4, use_dora=method == "dora", fan_in_fan_out=True, target_modules=targets))
    expected = peft_loraplus_rates(theirs, lr=2e-4, ratio=16)
    assert ours_loraplus_rates(ours, lr=2e-4, ratio=16) == pytest.approx(expected)
    assert sorted(set(expected.values())) == pytest.approx([2e-4, 16 * 2e-4])


# --------------------------------------------------------------------------------------
# AdaLoRA's orthogonality loss: "mean_norm" is peft's, on the same P, Q
# --------------------------------------------------------------------------------------
def test_adalora_mean_norm_orthogonality_loss_equals_peft(gpt2_folder):
    """peft adds γ · mean of ‖BᵀB − I‖_F, ‖AAᵀ − I‖_F (B = P, A = Q) to the loss in forward;
    its size is the loss with γ = 1 minus the loss with γ = 0."""
    targets = ("o", "fc", "proj")
    ours = get_peft_model(ours_base(gpt2_folder), AdaLoraConfig(
        init_r=4, target_r=2, target_modules=list(targets), orth_reg_weight=1.0,
        orth_reg_form="mean_norm"))
    randomize_adapter(ours, seed=21)  # P, Q far from orthonormal
    theirs = peft.get_peft_model(hf_base(gpt2_folder), peft.AdaLoraConfig(
        task_type="CAUSAL_LM",  # without a task type peft's forward skips AdaLoraModel's
        init_r=4, target_r=2, total_step=10, fan_in_fan_out=True,
        target_modules=[GPT2_PATH[t] for t in targets])).eval()
    with torch.no_grad():
        for layer, t in [(i, t) for i in range(GPT2_SHAPE["n_layer"]) for t in targets]:
            mine = ours.base_model.blocks[layer].get_submodule(OURS_PATH[t])
            other = hf_block_module(theirs, layer, GPT2_PATH[t])
            other.lora_A["default"].copy_(mine.Q)  # (r, d_in)
            other.lora_B["default"].copy_(mine.P)  # (d_out, r)
            other.lora_E["default"].copy_(mine.lambda_[:, None])  # (r, 1)
    idx = tokens(seed=22)
    losses = []
    for weight in (1.0, 0.0):
        theirs.peft_config["default"].orth_reg_weight = weight
        with torch.no_grad():
            losses.append(theirs(input_ids=idx, labels=idx).loss.double())
    theirs_penalty = (losses[0] - losses[1]).item()
    ours_penalty = ours.regularization_loss().item()
    assert ours_penalty == pytest.approx(theirs_penalty, rel=1e-5)
    ours.config.orth_reg_form = "squared_sum"  # the paper's form is another number
    assert ours.regularization_loss().item() > 2 * theirs_penalty


# --------------------------------------------------------------------------------------
# Adapter files: minipeft ↔ peft
# --------------------------------------------------------------------------------------
def test_minipeft_saves_what_peft_loads(gpt2_folder, tmp_path):
    ours, _ = lora_pair(gpt2_folder, targets=("o", "proj"), layers_to_transform=[1])
    save_peft_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(hf_base(gpt2_folder), tmp_path).eval()
    idx = tokens(seed=8)
    torch.testing.assert_close(logits(ours, idx), logits(theirs, idx), atol=ATOL, rtol=0)
    assert (logits(ours, idx) - logits(hf_base(gpt2_folder), idx)).abs().max() > 1e-2


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_peft_saves_what_minipeft_loads(gpt2_folder, tmp_path, rslora):
    _, theirs = lora_pair(gpt2_folder, rslora=rslora)
    theirs.save_pretrained(tmp_path)
    ours = load_peft_adapter(ours_base(gpt2_folder), tmp_path)
    assert ours.config.use_rslora == rslora and ours.config.r == 4
    idx = tokens(seed=9)
    torch.testing.assert_close(logits(ours, idx), logits(theirs, idx), atol=ATOL, rtol=0)
    # and back again: minipeft → peft → the same logits
    save_peft_adapter(ours, tmp_path / "again")
    back = peft.PeftModel.from_pretrained(hf_base(gpt2_folder), tmp_path / "again").eval()
    torch.testing.assert_close(logits(back, idx), logits(theirs, idx), atol=ATOL, rtol=0)


def test_peft_adapter_on_fused_c_attn_is_refused(gpt2_folder, tmp_path):
    theirs = peft.get_peft_model(hf_base(gpt2_folder), peft.LoraConfig(
        r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    theirs.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="c_attn.*cannot map"):
        load_peft_adapter(ours_base(gpt2_folder), tmp_path)


def test_peft_setting_without_counterpart_is_refused(gpt2_folder, tmp_path):
    theirs = peft.get_peft_model(hf_base(gpt2_folder), peft.LoraConfig(
        r=2, target_modules=["mlp.c_fc"], fan_in_fan_out=True, bias="lora_only"))
    theirs.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="bias='lora_only' has no minipeft counterpart"):
        load_peft_adapter(ours_base(gpt2_folder), tmp_path)


def test_each_loader_refuses_the_other_format_and_names_the_right_one(gpt2_folder, tmp_path):
    """PeftModel.from_pretrained reads minipeft folders only, load_peft_adapter peft's only."""
    ours, theirs = lora_pair(gpt2_folder, targets=("o",))
    theirs.save_pretrained(tmp_path / "peft")
    ours.save_pretrained(tmp_path / "minipeft")
    with pytest.raises(ValueError, match=r"Hugging Face peft adapter.*minipeft\.gpt2\."
                                         r"load_peft_adapter\(base_model, directory\)"):
        PeftModel.from_pretrained(ours_base(gpt2_folder), tmp_path / "peft")
    with pytest.raises(ValueError, match=r"minipeft adapter.*PeftModel\.from_pretrained"):
        load_peft_adapter(ours_base(gpt2_folder), tmp_path / "minipeft")


def test_minipeft_lora_on_q_cannot_be_written_for_peft(gpt2_folder, tmp_path):
    ours = get_peft_model(ours_base(gpt2_folder), LoraConfig(r=2, target_modules=["q", "o"]))
    with pytest.raises(ValueError, match="attn.q.lora_A.*fuses q, k, v"):
        save_peft_adapter(ours, tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()  # nothing half-written


# --------------------------------------------------------------------------------------
# Which blocks: layers_to_transform as in peft, top_layers minipeft's own
# --------------------------------------------------------------------------------------
DEEP_SHAPE = {**GPT2_SHAPE, "n_layer": 4}  # deep enough that "block i" ≠ "the top i blocks"


@pytest.fixture(scope="module")
def deep_gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2_deep")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**DEEP_SHAPE)).save_pretrained(folder)
    return folder


def peft_adapted(hf_peft) -> set[tuple[int, str]]:
    """{(block, GPT-2 module path)} that carry a LoRA layer in a peft model."""
    found = set()
    for name, module in hf_peft.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            block, path = name.split(".transformer.h.")[1].split(".", 1)
            found.add((int(block), path))
    return found


def ours_adapted(model) -> set[tuple[int, str]]:
    """The same set for a minipeft LoRA model, in GPT-2's module names."""
    gpt2_path = {OURS_PATH[t]: GPT2_PATH[t] for t in GPT2_PATH}
    return {(int(name.split(".")[1]), gpt2_path[name.split(".", 2)[2]])
            for name, _ in model.lora_layers()}


def peft_lora(folder, targets, layers_to_transform):
    return peft.get_peft_model(hf_base(folder), peft.LoraConfig(
        r=2, fan_in_fan_out=True, target_modules=[GPT2_PATH[t] for t in targets],
        layers_to_transform=layers_to_transform, layers_pattern="h"))


@pytest.mark.parametrize("layers_to_transform, blocks", [(1, [1]), (0, [0]), ([0, 2], [0, 2]),
                                                         ([3], [3])])
def test_layers_to_transform_adapts_the_blocks_peft_adapts(deep_gpt2_folder, tmp_path,
                                                           layers_to_transform, blocks):
    """An int is one block index in both libraries (block 1, not the top block); a list is
    those blocks. The exported file names the same tensors as peft's own file, and each
    library reads the other's file onto the same modules."""
    targets = ("o", "fc")
    expected = {(b, GPT2_PATH[t]) for b in blocks for t in targets}
    ours = get_peft_model(ours_base(deep_gpt2_folder), LoraConfig(
        r=2, target_modules=list(targets), layers_to_transform=layers_to_transform))
    theirs = peft_lora(deep_gpt2_folder, targets, layers_to_transform)
    assert ours_adapted(ours) == peft_adapted(theirs) == expected

    save_peft_adapter(ours, tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    assert (load_file(str(tmp_path / "ours" / "adapter_model.safetensors")).keys()
            == load_file(str(tmp_path / "theirs" / "adapter_model.safetensors")).keys())
    read_by_peft = peft.PeftModel.from_pretrained(hf_base(deep_gpt2_folder), tmp_path / "ours")
    assert peft_adapted(read_by_peft) == expected
    read_by_us = load_peft_adapter(ours_base(deep_gpt2_folder), tmp_path / "theirs")
    assert ours_adapted(read_by_us) == expected


def test_top_layers_is_peft_layers_to_transform_of_the_top_blocks(deep_gpt2_folder, tmp_path):
    """top_layers=2 on 4 blocks means blocks 2 and 3, which peft writes [2, 3]."""
    ours = get_peft_model(ours_base(deep_gpt2_folder), LoraConfig(
        r=2, target_modules=["proj"], top_layers=2))
    expected = {(2, "mlp.c_proj"), (3, "mlp.c_proj")}
    assert ours_adapted(ours) == peft_adapted(peft_lora(deep_gpt2_folder, ["proj"], [2, 3])) \
        == expected
    save_peft_adapter(ours, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["layers_to_transform"] \
        == [2, 3]
    assert peft_adapted(peft.PeftModel.from_pretrained(hf_base(deep_gpt2_folder), tmp_path)) \
        == expected


# --------------------------------------------------------------------------------------
# DoRA
# --------------------------------------------------------------------------------------
def dora_pair(folder, targets=("o", "fc", "proj")):
    """(minipeft DoRA, peft DoRA) with identical random A, B and magnitude m."""
    ours = get_peft_model(ours_base(folder), DoraConfig(r=4, alpha=6.0,
                                                        target_modules=list(targets)))
    randomize_adapter(ours, seed=3)
    with torch.no_grad():  # a magnitude near ‖W₀‖ (as after training), not a random sign
        for name, p in ours.named_parameters():
            if "lora_magnitude" in name:
                p.abs_().add_(1.0)
    theirs = peft.get_peft_model(hf_base(folder), peft.LoraConfig(
        r=4, lora_alpha=6.0, use_dora=True, fan_in_fan_out=True,
        target_modules=[GPT2_PATH[t] for t in targets]))
    with torch.no_grad():
        for layer in range(GPT2_SHAPE["n_layer"]):
            for t in targets:
                mine = ours.base_model.blocks[layer].get_submodule(OURS_PATH[t])
                other = hf_block_module(theirs, layer, GPT2_PATH[t])
                other.lora_A["default"].weight.copy_(mine.lora_A["default"])
                other.lora_B["default"].weight.copy_(mine.lora_B["default"])
                other.lora_magnitude_vector["default"].weight.copy_(
                    mine.lora_magnitude["default"])  # m: (d_out,)
    return ours, theirs.eval()


def test_dora_logits_and_gradients_equal_peft(gpt2_folder):
    ours, theirs = dora_pair(gpt2_folder)
    idx, targets = tokens(seed=10), tokens(seed=11)
    loss_ours = ours(idx, targets=targets).loss
    out_theirs = theirs(input_ids=idx)
    torch.testing.assert_close(ours(idx).logits.detach(), out_theirs.logits.detach(),
                               atol=ATOL, rtol=0)
    loss_theirs = torch.nn.functional.cross_entropy(
        out_theirs.logits.reshape(-1, GPT2_SHAPE["vocab_size"]), targets.reshape(-1))
    loss_ours.backward()
    loss_theirs.backward()  # both treat ‖W₀ + ΔW‖ as a constant (DoRA paper, section 4.3)
    mine = ours.base_model.blocks[0].mlp.fc
    other = hf_block_module(theirs, 0, "mlp.c_fc")
    torch.testing.assert_close(mine.lora_magnitude["default"].grad,
                               other.lora_magnitude_vector["default"].weight.grad,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mine.lora_B["default"].grad, other.lora_B["default"].weight.grad,
                               atol=1e-5, rtol=1e-4)


def test_dora_at_init_is_the_base_in_both(gpt2_folder):
    """m₀ = ‖W₀‖ per output row: minipeft's initial magnitude equals peft's."""
    ours = get_peft_model(ours_base(gpt2_folder), DoraConfig(r=4, target_modules=["fc"]))
    theirs = peft.get_peft_model(hf_base(gpt2_folder), peft.LoraConfig(
        r=4, use_dora=True, fan_in_fan_out=True, target_modules=["mlp.c_fc"]))
    torch.testing.assert_close(ours.base_model.blocks[1].mlp.fc.lora_magnitude["default"],
                               hf_block_module(theirs, 1, "mlp.c_fc")
                               .lora_magnitude_vector["default"].weight)


def test_dora_files_round_trip_with_peft(gpt2_folder, tmp_path):
    ours, theirs = dora_pair(gpt2_folder, targets=("o", "proj"))
    idx = tokens(seed=12)
    save_peft_adapter(ours, tmp_path / "ours")
    loaded_by_peft = peft.PeftModel.from_pretrained(hf_base(gpt2_folder), tmp_path / "ours")
    torch.testing.assert_close(logits(loaded_by_peft.eval(), idx), logits(theirs, idx),
                               atol=ATOL, rtol=0)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded_by_us = load_peft_adapter(ours_base(gpt2_folder), tmp_path / "theirs")
    assert isinstance(loaded_by_us.config, DoraConfig)
    torch.testing.assert_close(logits(loaded_by_us, idx), logits(theirs, idx), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------
# IA³
# --------------------------------------------------------------------------------------
def test_ia3_logits_equal_peft(gpt2_folder):
    """minipeft's IA³ targets are k, v (output scaled) and proj (input scaled, l_ff).

    proj maps one to one: peft's IA³ on mlp.c_proj declared a feed-forward module scales its
    *input*, as minipeft does. k and v have no module of their own in GPT-2: peft's IA³ on
    the fused c_attn learns one vector of length 3d for [q | k | v]. minipeft's l_k, l_v are
    that vector with the q third fixed at 1, so that is what peft gets here. (IA³ on o or fc
    is not offered by minipeft: the paper rescales keys, values and the MLP hidden state.)
    """
    ours = get_peft_model(ours_base(gpt2_folder), IA3Config(target_modules=["k", "v", "proj"]))
    randomize_adapter(ours, seed=4)
    theirs = peft.get_peft_model(hf_base(gpt2_folder), peft.IA3Config(
        target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
        fan_in_fan_out=True)).eval()
    d = GPT2_SHAPE["n_embd"]
    with torch.no_grad():
        for layer in range(GPT2_SHAPE["n_layer"]):
            attn = ours.base_model.blocks[layer].attn
            fused = torch.cat([torch.ones(d), attn.k.ia3_l, attn.v.ia3_l])  # [1 | l_k | l_v]
            hf_block_module(theirs, layer, "attn.c_attn").ia3_l["default"].copy_(fused[:, None])
            l_ff = ours.base_model.blocks[layer].mlp.proj.ia3_l  # (d_ff,)
            hf_block_module(theirs, layer, "mlp.c_proj").ia3_l["default"].copy_(l_ff[None, :])
    idx = tokens(seed=13)
    torch.testing.assert_close(logits(ours, idx), logits(theirs, idx), atol=ATOL, rtol=0)
    assert (logits(ours, idx) - logits(hf_base(gpt2_folder), idx)).abs().max() > 1e-2


# --------------------------------------------------------------------------------------
# Prompt tuning and prefix tuning
# --------------------------------------------------------------------------------------
N_VIRTUAL = 3


def test_prompt_tuning_logits_equal_peft(gpt2_folder):
    """Same soft prompt P (k, d). peft returns logits for the k prompt positions too,
    (B, k+T, V); minipeft returns those of the T input tokens only. Both place the prompt
    at positions 0..k-1, so peft's logits[:, k:] must equal minipeft's."""
    ours = get_peft_model(ours_base(gpt2_folder),
                          PromptTuningConfig(num_virtual_tokens=N_VIRTUAL, init="random"))
    theirs = peft.get_peft_model(hf_base(gpt2_folder), peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL)).eval()
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(ours.prompt)  # (k, d)
    idx = tokens(seed=14)
    full = logits(theirs, idx)
    assert full.shape[1] == N_VIRTUAL + idx.shape[1]
    torch.testing.assert_close(logits(ours, idx), full[:, N_VIRTUAL:], atol=ATOL, rtol=0)


def test_prefix_tuning_logits_equal_peft_up_to_positions(gpt2_folder):
    """Same per-layer keys and values. peft's table is (P, L·2·d) with columns
    [K₀ | V₀ | K₁ | V₁ | …]; minipeft's is (L, 2, P, d).

    The two libraries differ in one convention: minipeft's prefix occupies no position, real
    tokens keep positions 0..T-1 (Li & Liang's prefix is no token); peft hands the prefix to
    GPT-2 as P cached past tokens, so real tokens sit at positions P..P+T-1 (peft adds P to any
    position_ids it is given). Passing position_ids = arange(T) − P to peft cancels its shift;
    then the logits must agree, and without it they must not.
    """
    ours = get_peft_model(ours_base(gpt2_folder), PrefixTuningConfig(
        num_virtual_tokens=N_VIRTUAL, reparameterize=False))
    randomize_adapter(ours, seed=5)
    theirs = peft.get_peft_model(hf_base(gpt2_folder), peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL, prefix_projection=False)).eval()
    L, P, d = GPT2_SHAPE["n_layer"], N_VIRTUAL, GPT2_SHAPE["n_embd"]
    with torch.no_grad():
        table = ours.prefix_kv.permute(2, 0, 1, 3).reshape(P, L * 2 * d)  # (P, L·2·d)
        theirs.prompt_encoder["default"].embedding.weight.copy_(table)
    idx = tokens(seed=15)
    T = idx.shape[1]
    with torch.no_grad():
        aligned = theirs(input_ids=idx, position_ids=torch.arange(T)[None] - P).logits
        shifted = theirs(input_ids=idx).logits
    torch.testing.assert_close(logits(ours, idx), aligned, atol=ATOL, rtol=0)
    assert (logits(ours, idx) - shifted).abs().max() > 1e-2


# --------------------------------------------------------------------------------------
# The benchmark measures what it says (minipeft.bench; its timings are not tested)
# --------------------------------------------------------------------------------------
TINY_WORK = bench.Workload(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2,
                                     d_model=16), batch_size=2, seq_len=8, reps=1)


@pytest.mark.parametrize("mode", bench.MODES)
def test_bench_trainers_train_exactly_their_mode(mode):
    """Trainable counts from the LoRA formula r(d_in + d_out) per matrix, and one step
    changes exactly the trainable tensors (frozen: none)."""
    L, d, r = 2, 16, bench.LORA_R
    expected = {  # per library: minipeft q,k,v,o (+fc, proj) | peft c_attn (d→3d), c_proj (+MLP)
        "full": (None, None),
        "lora_attn": (L * 4 * r * 2 * d, L * (r * 4 * d + r * 2 * d)),
        "lora_all": (L * (4 * r * 2 * d + 2 * r * 5 * d),
                     L * (r * 4 * d + r * 2 * d + 2 * r * 5 * d)),
        "frozen": (0, 0),
    }[mode]
    for library, make in bench.TRAINERS.items():
        trainer = make(TINY_WORK, mode, "cpu", bench.nullcontext)
        count = expected[bench.LIBRARIES.index(library)]
        if count is None:  # full fine-tuning: every (unique) parameter
            count = sum(p.numel() for p in trainer.model.parameters())
        assert trainer.trainable == count, library
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.step()
        changed = {n for n, p in trainer.model.named_parameters()
                   if not torch.equal(p.detach(), before[n])}
        trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        assert changed == trainable, library


def test_bench_tables_list_every_mode_with_ratios():
    # Three interleaved pairs per mode: minipeft 0.3, 0.4, 0.2 s against peft 0.2, 0.2, 0.2 s
    # (frozen: peft 0.3 s each) → pair ratios 1.5, 2.0, 1.0.
    def peft_seconds(mode):
        return [0.2, 0.2, 0.2] if mode != "frozen" else [0.3, 0.3, 0.3]
    rows = [bench.Row("tiny", mode, {"minipeft": 10, "peft": 8},
                      {"minipeft": [0.3, 0.4, 0.2], "peft": peft_seconds(mode)},
                      {"minipeft": 30.0, "peft": 60.0}) for mode in bench.MODES]
    table = bench.training_table(rows)
    assert all(f"| tiny | {mode} |" in table for mode in bench.MODES)
    # full: median 300 ms (200–400), pair ratios median 1.50 (1.00–2.00), memory 30/60; over
    # its frozen step: 0.3/0.3 − 1 = +0%, 0.2/0.4 − 1 = −50%, 0.4/0.2 − 1 = +100%
    assert ("| 300.0 (200.0–400.0) | 200.0 (200.0–200.0) | 1.50 (1.00–2.00) | 30 | 60 | 0.50 "
            "| +0% (-50…+100%) |") in table
    note = bench.closing_note(rows)
    assert ("tiny lora_all: minipeft/peft step time 1.50 (1.00–2.00), memory 0.50; "
            "+0% (-50…+100%) relative to the frozen") in note
