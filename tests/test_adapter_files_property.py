"""Property-based checks of adapter files (hypothesis): random valid configs survive
save → load exactly; a random edit of a saved config either loads exactly what the file
says or raises one clear ValueError, never a raw traceback or a silently defaulted field."""
import json
import shutil
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minipeft.methods import (AdapterConfig, IA3Config, LoraConfig, MaskConfig,
                              PromptTuningConfig, get_peft_model)
from minipeft.methods.base import PeftModel
from helpers import tiny_gpt, tokens

TARGETS = st.lists(st.sampled_from(["q", "k", "v", "o", "fc", "proj"]), min_size=1,
                   max_size=6, unique=True)
BLOCKS = st.one_of(
    st.just({}), st.builds(dict, top_layers=st.integers(1, 2)),
    st.builds(dict, layers_to_transform=st.one_of(
        st.integers(0, 1), st.lists(st.integers(0, 1), min_size=1, max_size=2, unique=True))))


def with_blocks(config_cls, **fields):
    """Configs of `config_cls` from `fields`' strategies, with a block choice from BLOCKS."""
    return st.builds(lambda blocks, **values: config_cls(**blocks, **values), BLOCKS, **fields)


FINITE = dict(allow_nan=False, allow_infinity=False)

VALID_CONFIGS = st.one_of(
    with_blocks(LoraConfig, target_modules=TARGETS, r=st.integers(1, 4),
                alpha=st.floats(0.5, 64, **FINITE), dropout=st.just(0.0),
                use_rslora=st.booleans(), init=st.sampled_from(["kaiming", "gaussian"])),
    with_blocks(AdapterConfig, placement=st.sampled_from(["houlsby", "pfeiffer", "parallel"]),
                bottleneck_size=st.integers(1, 4), scale=st.floats(0.1, 8, **FINITE),
                activation=st.sampled_from(["relu", "gelu", "tanh"])),
    with_blocks(IA3Config, target_modules=st.just(["k", "v", "proj"])),
    st.builds(PromptTuningConfig, num_virtual_tokens=st.integers(1, 4), init=st.just("random")),
    st.builds(MaskConfig, selector=st.sampled_from(["random", "pafi"]),
              budget=st.floats(0.001, 0.05, **FINITE), seed=st.integers(0, 5)),
)

# A value of the wrong JSON type for any field, and a few that are the right type but wrong.
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(),
                 st.text(max_size=4), st.lists(st.integers(0, 3), max_size=2),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


def perturbed(model: PeftModel, seed: int) -> PeftModel:
    """φ moved away from its initialisation, so a wrongly loaded φ would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model


def build(config) -> PeftModel:
    torch.manual_seed(0)
    return perturbed(get_peft_model(tiny_gpt(), config), seed=1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALID_CONFIGS)
def test_any_valid_config_round_trips_exactly(config):
    model = build(config)
    folder = Path(tempfile.mkdtemp())
    try:
        model.save_pretrained(folder / "a")
        loaded = PeftModel.from_pretrained(tiny_gpt(), folder / "a")
        assert loaded.config == model.config
        assert torch.equal(loaded(tokens()).logits, model(tokens()).logits)
    finally:
        shutil.rmtree(folder)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALID_CONFIGS, st.data())
def test_a_damaged_config_loads_identically_or_fails_clearly(config, data):
    model = build(config)
    folder = Path(tempfile.mkdtemp())
    try:
        model.save_pretrained(folder / "a")
        meta = json.loads((folder / "a" / "adapter_config.json").read_text())
        key = data.draw(st.sampled_from(sorted(meta)), label="field")
        if data.draw(st.booleans(), label="delete"):
            del meta[key]
        else:
            meta[key] = data.draw(JUNK, label="value")
        (folder / "a" / "adapter_config.json").write_text(json.dumps(meta))
        try:
            loaded = PeftModel.from_pretrained(tiny_gpt(), folder / "a")
        except ValueError as err:
            assert str(err) and "\n" not in str(err)
            return
        # It loaded: then it read exactly what the file says, nothing defaulted or coerced,
        # and an edit that left the configuration as it was changes no logit.
        read_back = loaded.config.to_dict()
        assert all(read_back[k] == meta[k] and type(read_back[k]) is type(meta[k])
                   for k in read_back)
        if loaded.config == model.config:
            assert torch.equal(loaded(tokens()).logits, model(tokens()).logits)
    finally:
        shutil.rmtree(folder)
