"""Input composition: soft prompts, prefix tuning and deep prompts.

All three leave every weight of the model untouched and give it extra *inputs* instead
(input composition, g(x) = f_θ([φ, x]), in Pfeiffer, Ruder, Vulić & Ponti, 2023, "Modular
Deep Learning", Section 3). They differ in where φ enters:

Soft prompt tuning — Lester, Al-Rfou & Constant (2021) "The Power of Scale for
Parameter-Efficient Prompt Tuning". k trainable vectors P ∈ R^{k×d} are prepended to the
token embeddings, and the frozen model reads the sequence [P; E(x)]:

    h₀ = [P; E(x)] + pos[0 .. k+T-1]                (B, k+T, d)
    trainable parameters: k · d

  Positions: the prompt occupies positions 0..k-1 of the learned position embedding and the
  input tokens k..k+T-1, so the prompt costs k positions of the context window (k + T ≤
  block_size) and k extra keys in every attention. The wrapper returns the logits of the T
  input positions only, so targets and the evaluation code index them as without a prompt.
  During generation with a KV cache the prompt is fed once, on the first call
  (cache.n_seen == 0); its keys and values stay in the cache, so every generated token sees it.
  Mixed-task inference: prompts of several tasks trained on one frozen model can share a
  batch, each example reading its own task's prompt (`mixed_task_forward`).

Prefix tuning — Li & Liang (2021) "Prefix-Tuning: Optimizing Continuous Prompts for
Generation". Every layer ℓ gets P trainable key and value vectors that the queries of the
real tokens attend to (the prefix has no query of its own; He et al., 2022, "Towards a
Unified View of Parameter-Efficient Transfer Learning", Section 3.1):

    K_ℓ ← [Pk_ℓ; K_ℓ],  V_ℓ ← [Pv_ℓ; V_ℓ]           Pk_ℓ, Pv_ℓ: (P, d) per layer
    trainable parameters: L'·2·P·d                    (L' = adapted blocks)

  Li & Liang found that optimising the prefix directly is unstable, so during training it
  can be re-parameterised by an MLP: [Pk; Pv] for all layers = MLP(P'), with P' ∈ R^{P×d},
  MLP = Linear(d → H), tanh, Linear(H → L'·2·d). Then

    trainable parameters: P·d + (d·H + H) + (H·2L'd + 2L'd)

  After training, `fold_reparameterization()` computes MLP(P') once, keeps the result as
  the prefix and drops the MLP: same outputs, L'·2·P·d numbers to store.
  A prefix occupies no position of the position embedding (real tokens keep positions
  0..T-1) and no room in the context window, but every attention reads P more keys.

Deep prompts — P-tuning v2, Liu et al. (2022) "P-Tuning v2: Prompt Tuning Can Be
Comparable to Fine-tuning Universally Across Scales and Tasks". A soft prompt at *every*
layer, not only at the input. In a decoder, a prompt vector p_ℓ placed in the residual
stream at layer ℓ affects the real tokens only through the keys and values that layer's
attention computes from it (its own output is replaced by the next layer's prompt). So the
faithful implementation is a prefix computed by the frozen layer from p_ℓ:

    Pk_ℓ = W_K LN₁(p_ℓ) + b_K,  Pv_ℓ = W_V LN₁(p_ℓ) + b_V    p_ℓ: (P, d), no MLP
    trainable parameters: L'·P·d

  Relation to prefix tuning: the same key/value injection, but the prefix is tied to the
  frozen projections of one trainable vector per position and layer (half the parameters
  of a direct prefix, and in the model's own key/value space from the start).

Initialisation: a direct prefix and a deep prompt both start from a random sequence of P
real tokens (Li & Liang: real-word activations train better than random numbers): the
prefix from the keys/values the frozen model computes for it, a deep prompt from its hidden
states, so at step 0 both inject exactly the keys/values of that token sequence. The MLP
re-parameterisation starts from random P' and a freshly initialised MLP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn as nn

from minipeft.checks import check_choice, check_positive, check_positive_int
from minipeft.model import IGNORE_INDEX, GPT, GPTOutput
from minipeft.methods.base import PeftConfig, PeftModel, register_method, resolve_layers

PROMPT_INITS = ("random", "vocab", "labels", "text")
DEFAULT_PREFIX_HIDDEN = 128  # H, the re-parameterisation MLP's width
DEFAULT_INIT_RANGE = 0.5  # Lester et al.'s random init: uniform in [-0.5, 0.5]


def check_virtual_tokens(config: PeftConfig) -> None:
    """Checks every input-composition config shares."""
    if config.target_modules is not None:
        raise ValueError(f"{type(config).__name__} adds inputs, not layer wrappers; "
                         "leave target_modules=None")
    check_positive_int(config.num_virtual_tokens, "num_virtual_tokens")


@dataclass
class PromptTuningConfig(PeftConfig):
    """k = num_virtual_tokens soft-prompt vectors, and how to initialise them.

    init: "random"  uniform in [-init_range, init_range] (default 0.5, as Lester et al.)
          "vocab"   embeddings of k tokens sampled uniformly from the vocabulary
          "labels"  embeddings of `label_words` (a multi-token word is averaged), the rest
                    sampled from the vocabulary (Lester et al.'s class-label init)
          "text"    embeddings of `init_text`'s tokens, repeated to fill k positions
    """

    peft_type: ClassVar[str] = "PROMPT_TUNING"
    num_virtual_tokens: int = 10
    init: str = "vocab"
    init_text: str | None = None
    label_words: list[str] | None = None
    init_range: float | None = None

    def __post_init__(self):
        super().__post_init__()
        check_virtual_tokens(self)
        if self.chooses_blocks():
            raise ValueError("a soft prompt enters at the input only; leave "
                             "layers_to_transform=None and top_layers=None (DeepPromptConfig "
                             "puts prompts into chosen blocks)")
        check_choice(self.init, PROMPT_INITS, "prompt init")
        if (self.init == "text") != (self.init_text is not None):
            raise ValueError("init_text is used exactly when init='text': give both or neither")
        if (self.init == "labels") != (self.label_words is not None):
            raise ValueError("label_words are used exactly when init='labels': "
                             "give both or neither")
        if self.init_range is not None and self.init != "random":
            raise ValueError("init_range is the half-width of the random init; it needs "
                             "init='random'")
        if self.init == "random" and self.init_range is None:
            self.init_range = DEFAULT_INIT_RANGE
        if self.init_range is not None:
            check_positive(self.init_range, "init_range")


def vocabulary_tokenizer(gpt: GPT):
    """The shipped tokenizer, checked against the model's vocabulary size."""
    from minipeft.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    if tokenizer.vocab_size != gpt.config.vocab_size:
        raise ValueError(f"the shipped tokenizer has {tokenizer.vocab_size} tokens but the "
                         f"model has vocab_size={gpt.config.vocab_size}; text and label "
                         "initialisations need the model the tokenizer belongs to")
    return tokenizer


def sampled_embeddings(gpt: GPT, n: int) -> torch.Tensor:
    """Embeddings of n token ids drawn uniformly from the vocabulary: (n, d)."""
    ids = torch.randint(gpt.config.vocab_size, (n,))
    return gpt.tok_emb.weight.detach()[ids].clone()


def initial_prompt(config: PromptTuningConfig, gpt: GPT) -> torch.Tensor:
    """P at initialisation, (k, d), following `config.init`."""
    k, d = config.num_virtual_tokens, gpt.config.d_model
    embedding = gpt.tok_emb.weight.detach()  # E: (V, d)
    if config.init == "random":
        return torch.empty(k, d).uniform_(-config.init_range, config.init_range)
    if config.init == "vocab":
        return sampled_embeddings(gpt, k)
    tokenizer = vocabulary_tokenizer(gpt)
    if config.init == "text":
        ids = tokenizer.encode(config.init_text)
        if not ids:
            raise ValueError("init_text is empty; give the text the prompt should start from")
        if len(ids) > k:
            raise ValueError(f"init_text {config.init_text!r} is {len(ids)} tokens long but "
                             f"the prompt has num_virtual_tokens={k}; shorten the text or "
                             f"use num_virtual_tokens ≥ {len(ids)}")
        ids = (ids * math.ceil(k / len(ids)))[:k]  # repeat the text to fill k positions
        return embedding[ids].clone()
    labels = [embedding[tokenizer.encode(word)].mean(dim=0) for word in config.label_words]
    if not labels or len(labels) > k:
        raise ValueError(f"{len(config.label_words)} label words for a prompt of {k} "
                         "vectors; give between 1 and num_virtual_tokens label words")
    return torch.cat([torch.stack(labels), sampled_embeddings(gpt, k - len(labels))])


class InputCompositionModel(PeftModel):
    """What the three input methods share: φ is an input, so there is nothing to merge."""

    def __init__(self, base_model, config, adapter_name: str = "default"):
        window = base_model.config.block_size
        if config.num_virtual_tokens >= window:  # checked before anything is allocated
            raise ValueError(f"num_virtual_tokens={config.num_virtual_tokens} leaves no room "
                             f"for input in the context window (block_size={window}); use "
                             f"at most {window - 1}")
        super().__init__(base_model, config, adapter_name)

    def cannot_merge_reason(self) -> str | None:
        return ("a learned prompt/prefix is an extra input, not a weight update, so it "
                "cannot be merged into the weights")

    def unmerge(self) -> None:
        self.check_can_merge()


def read_with_prompts(gpt: GPT, prompts: torch.Tensor, x: torch.Tensor, targets=None,
                      prefix=None, cache=None) -> GPTOutput:
    """The frozen GPT on [P_b; E(x_b)] for every example b; logits of the input positions.

    prompts: (B, k, d), one prompt per example (the same one repeated for a single task);
    x: E(x), (B, T, d). Returns logits (B, T, V) and the loss over the input positions.
    """
    B, k, _ = prompts.shape
    x = torch.cat([prompts.to(x.dtype), x], dim=1)  # [P_b; E(x_b)]: (B, k+T, d)
    if targets is not None:  # the prompt positions predict nothing
        targets = torch.cat([targets.new_full((B, k), IGNORE_INDEX), targets], dim=1)
    out = gpt(inputs_embeds=x, targets=targets, prefix=prefix, cache=cache)
    return GPTOutput(out.logits[:, k:], out.loss, out.cache)  # logits of x only: (B, T, V)


@register_method(PromptTuningConfig)
class PromptTuningModel(InputCompositionModel):
    """Frozen GPT reading [P; E(x)]; returns the logits of the input positions only."""

    def inject(self, config: PromptTuningConfig, adapter_name: str) -> None:
        self.prompt = nn.Parameter(initial_prompt(config, self.base_model))  # P: (k, d)

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.shape[0]

    def check_fits(self, n_tokens: int, what: str = "input tokens") -> None:
        k, window = self.num_virtual_tokens, self.model_config.block_size
        if k + n_tokens > window:
            raise ValueError(f"soft prompt of {k} vectors + {n_tokens} {what} = "
                             f"{k + n_tokens} positions, more than the context window "
                             f"block_size={window}; shorten the input or the prompt")

    def forward(self, idx=None, targets=None, *, inputs_embeds=None, prefix=None, cache=None):
        if self.adapters_disabled:
            return self.base_model(idx, targets, inputs_embeds=inputs_embeds, prefix=prefix,
                                   cache=cache)
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of idx (token ids) or inputs_embeds (embeddings)")
        x = self.base_model.embed(idx) if inputs_embeds is None else inputs_embeds  # (B, T, d)
        if cache is not None and cache.n_seen > 0:
            # The prompt went in on the first call and lives in the cache: positions continue.
            return self.base_model(inputs_embeds=x, targets=targets, prefix=prefix, cache=cache)
        B, T, d = x.shape
        self.check_fits(T)
        prompts = self.prompt.expand(B, self.num_virtual_tokens, d)  # one P for every example
        return read_with_prompts(self.base_model, prompts, x, targets, prefix, cache)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        if not self.adapters_disabled:
            self.check_fits(idx.shape[1] + max_new_tokens,
                            f"tokens ({idx.shape[1]} given + {max_new_tokens} to generate)")
        return super().generate(idx, max_new_tokens, **kwargs)


def mixed_task_forward(prompt_models: dict[str, PromptTuningModel], adapter_names: list[str],
                       idx: torch.Tensor, targets: torch.Tensor | None = None) -> GPTOutput:
    """One batch in which example b reads the soft prompt of task adapter_names[b].

    Lester et al. (2021, §1, Figure 2; the CS 4804 lecture "Parameter-efficient fine-tuning
    (PEFT)" lists it among prompt tuning's advantages): the frozen model is shared, so
    examples of different tasks can go through it in one batch, each with its own prompt:
    [P_{t(b)}; E(x_b)].
    prompt_models: task name → PromptTuningModel, all on the same base model and with the
    same number of vectors k (the inputs must start at the same position k in every row).
    Each row's logits equal those of running its own prompt model on it alone.
    """
    models = list(prompt_models.values())
    if not models or not all(isinstance(m, PromptTuningModel) for m in models):
        raise ValueError("prompt_models must map task names to PromptTuningModels (at least "
                         "one)")
    gpt = models[0].base_model
    if any(m.base_model is not gpt for m in models):
        raise ValueError("the prompt models wrap different base models; mixed-task inference "
                         "shares one frozen model: build every prompt on the same GPT")
    lengths = {name: m.num_virtual_tokens for name, m in prompt_models.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"prompts of different lengths {lengths}: the inputs of one batch "
                         "must start at the same position; use one num_virtual_tokens")
    if idx.dim() != 2:
        raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
    if len(adapter_names) != idx.shape[0]:
        raise ValueError(f"{len(adapter_names)} adapter names for a batch of {idx.shape[0]} "
                         "examples; give one task name per example")
    unknown = sorted(set(adapter_names) - set(prompt_models))
    if unknown:
        raise ValueError(f"unknown adapter names {unknown}; known: {sorted(prompt_models)}")
    models[0].check_fits(idx.shape[1])
    prompts = torch.stack([prompt_models[name].prompt for name in adapter_names])  # (B, k, d)
    return read_with_prompts(gpt, prompts, gpt.embed(idx), targets)


# --------------------------------------------------------------------------------------
# Per-layer key/value prefixes: prefix tuning and deep prompts
# --------------------------------------------------------------------------------------
class KeyValuePrefixModel(InputCompositionModel):
    """Passes one (K, V) prefix per adapted block to the base forward (`prefix=`).

    Subclasses define `prefix_table()`: the keys and values of every adapted layer,
    (L', 2, P, d), with L' = len(self.layer_ids).
    """

    def prefix_table(self) -> torch.Tensor:
        raise NotImplementedError

    def layer_prefixes(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """The `prefix=` argument of GPT.forward: (K, V) each (B, h, P, d_h), None elsewhere."""
        cfg = self.model_config
        d_head = cfg.d_model // cfg.n_head
        table = self.prefix_table()  # (L', 2, P, d)
        n_prefix = table.shape[2]
        prefixes: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * cfg.n_layer
        for j, layer in enumerate(self.layer_ids):
            # (2, P, d) → (2, P, h, d_h) → (2, h, P, d_h): the heads' layout in Attention
            keys, values = table[j].view(2, n_prefix, cfg.n_head, d_head).transpose(1, 2)
            prefixes[layer] = (keys.expand(batch, -1, -1, -1),
                               values.expand(batch, -1, -1, -1))
        return prefixes

    def forward(self, idx=None, targets=None, *, inputs_embeds=None, prefix=None, cache=None):
        if prefix is not None:
            raise ValueError(f"{type(self).__name__} supplies its own prefix; do not pass "
                             "prefix= as well")
        if self.adapters_disabled:
            return self.base_model(idx, targets, inputs_embeds=inputs_embeds, cache=cache)
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of idx (token ids) or inputs_embeds (embeddings)")
        batch = (idx if idx is not None else inputs_embeds).shape[0]
        # A KV cache stores the prefix once (cache.has_prefix); later steps need not rebuild it.
        needs_prefix = cache is None or not cache.has_prefix
        return self.base_model(idx, targets, inputs_embeds=inputs_embeds, cache=cache,
                               prefix=self.layer_prefixes(batch) if needs_prefix else None)


@dataclass
class PrefixTuningConfig(PeftConfig):
    """P = num_virtual_tokens key/value vectors per adapted layer (`layers_to_transform` or
    `top_layers`, default all).

    reparameterize: train through the MLP P' → [Pk; Pv] (Li & Liang); fold it away with
                    `fold_reparameterization()` after training.
    hidden_size:    H, the MLP's width (only with reparameterize; default 128).
    """

    peft_type: ClassVar[str] = "PREFIX_TUNING"
    num_virtual_tokens: int = 10
    reparameterize: bool = True
    hidden_size: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_virtual_tokens(self)
        if self.hidden_size is not None and not self.reparameterize:
            raise ValueError("hidden_size is the re-parameterisation MLP's width; it needs "
                             "reparameterize=True")
        if self.reparameterize and self.hidden_size is None:
            self.hidden_size = DEFAULT_PREFIX_HIDDEN
        if self.hidden_size is not None:
            check_positive_int(self.hidden_size, "hidden_size")


@torch.no_grad()
def real_token_states(gpt: GPT, layer_ids: list[int], n: int) -> torch.Tensor:
    """Residual-stream inputs x_ℓ of the adapted blocks for n random vocabulary tokens.

    Li & Liang report that a prefix started from the activations of real words trains far
    better than one started from random numbers; both prefix and deep prompts start here.
    Returns (L', n, d): the states at positions 0..n-1 of a random token sequence.
    """
    ids = torch.randint(gpt.config.vocab_size, (1, n))  # drawn on the CPU: same ids anywhere
    ids = ids.to(gpt.tok_emb.weight.device)
    x = gpt.tok_emb(ids) + gpt.pos_emb.weight[:n]  # x₀ = E[ids] + P[0..n-1]: (1, n, d)
    states = []
    for block in gpt.blocks:
        states.append(x[0])
        x = block(x)
    return torch.stack([states[layer] for layer in layer_ids])


def frozen_keys_values(block: nn.Module, states: torch.Tensor) -> torch.Tensor:
    """What a block's frozen attention makes of hidden states (P, d): [K; V], (2, P, d)."""
    h = block.ln1(states)  # LN₁(x): (P, d)
    return torch.stack([block.attn.k(h), block.attn.v(h)])  # W_K h + b_K, W_V h + b_V


@register_method(PrefixTuningConfig)
class PrefixTuningModel(KeyValuePrefixModel):
    """Frozen GPT whose adapted layers attend to P trainable keys/values first."""

    def inject(self, config: PrefixTuningConfig, adapter_name: str) -> None:
        gpt = self.base_model
        self.layer_ids = resolve_layers(config.layers_to_transform, config.top_layers,
                                        gpt.config.n_layer)
        n_prefix, d, n_layers = config.num_virtual_tokens, gpt.config.d_model, len(self.layer_ids)
        if config.reparameterize:
            self.prefix_input = nn.Parameter(torch.randn(n_prefix, d))  # P': (P, d)
            self.prefix_mlp = nn.Sequential(  # (P, d) → (P, H) → (P, L'·2·d)
                nn.Linear(d, config.hidden_size), nn.Tanh(),
                nn.Linear(config.hidden_size, n_layers * 2 * d))
        else:
            states = real_token_states(gpt, self.layer_ids, n_prefix)  # (L', P, d)
            table = [frozen_keys_values(gpt.blocks[layer], x)
                     for layer, x in zip(self.layer_ids, states)]
            self.prefix_kv = nn.Parameter(torch.stack(table))  # [Pk; Pv] per layer: (L', 2, P, d)

    @property
    def reparameterized(self) -> bool:
        return hasattr(self, "prefix_mlp")

    def prefix_table(self) -> torch.Tensor:
        if not self.reparameterized:
            return self.prefix_kv
        n_prefix, n_layers = self.prefix_input.shape[0], len(self.layer_ids)
        flat = self.prefix_mlp(self.prefix_input)  # MLP(P'): (P, L'·2·d)
        return flat.view(n_prefix, n_layers, 2, -1).permute(1, 2, 0, 3)  # (L', 2, P, d)

    @torch.no_grad()
    def fold_reparameterization(self) -> None:
        """Replace MLP(P') by its value: the same prefix, L'·2·P·d numbers to keep."""
        if not self.reparameterized:
            raise ValueError("this prefix has no re-parameterisation MLP to fold "
                             "(reparameterize=False, or folded already)")
        table = self.prefix_table().clone()  # (L', 2, P, d)
        del self.prefix_mlp, self.prefix_input
        self.prefix_kv = nn.Parameter(table)
        self.configs[self.active_adapter] = replace(self.config, reparameterize=False,
                                                    hidden_size=None)


@dataclass
class DeepPromptConfig(PeftConfig):
    """P = num_virtual_tokens prompt vectors in every adapted layer (`layers_to_transform`
    or `top_layers`, default all)."""

    peft_type: ClassVar[str] = "DEEP_PROMPT"
    num_virtual_tokens: int = 10

    def __post_init__(self):
        super().__post_init__()
        check_virtual_tokens(self)


@register_method(DeepPromptConfig)
class DeepPromptModel(KeyValuePrefixModel):
    """P-tuning v2: per-layer prompt vectors p_ℓ, turned into keys/values by the frozen layer."""

    def inject(self, config: DeepPromptConfig, adapter_name: str) -> None:
        gpt = self.base_model
        self.layer_ids = resolve_layers(config.layers_to_transform, config.top_layers,
                                        gpt.config.n_layer)
        # p_ℓ start as the hidden states of a random token sequence: (L', P, d)
        self.deep_prompts = nn.Parameter(
            real_token_states(gpt, self.layer_ids, config.num_virtual_tokens))

    def prefix_table(self) -> torch.Tensor:
        blocks = self.base_model.blocks
        return torch.stack([frozen_keys_values(blocks[layer], p_layer)  # (2, P, d) each
                            for layer, p_layer in zip(self.layer_ids, self.deep_prompts)])


PRESETS = {
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=10, init="vocab"),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=10, reparameterize=True),
    "deep_prompt": lambda: DeepPromptConfig(num_virtual_tokens=10),
}
# The AdamW rate each preset fine-tunes at, chosen by sentiment runs on `small` (150 steps,
# batch 16): at LoRA's 3e-3 the soft prompt stays at chance, so the prompts take ten times
# more; the prefix MLP (reparameterize=True) stalls at the label prior at 3e-3 and takes less.
LEARNING_RATES = {"prompt": 3e-2, "prefix": 1e-3, "deep_prompt": 3e-2}
