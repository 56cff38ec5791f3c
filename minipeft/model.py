"""A small GPT (decoder-only transformer) written from scratch.

The architecture is GPT-2's, shrunk so that it trains on a laptop CPU:

    x₀ = E[tokens] + P[positions]                      token + learned position embeddings
    for each block ℓ = 1..L  (pre-LayerNorm):
        x ← x + Attention(LN₁(x))                      causal self-attention, separate q, k, v, o
        x ← x + MLP(LN₂(x))                            fc → GELU → proj
    logits = LN_f(x) Eᵀ                                LM head tied to the token embedding

Two hooks make every PEFT method in `minipeft.methods` possible without surgery on this file:

* `forward(inputs_embeds=...)` accepts embeddings instead of token ids, so soft prompts
  can be prepended to the input (Lester et al., 2021).
* `forward(prefix=...)` accepts extra per-layer keys and values that every query may attend
  to, so prefix tuning (Li & Liang, 2021) only has to supply tensors.

Shapes use B = batch, T = sequence length, d = d_model, h = heads, d_h = d / h,
P = prefix length, V = vocabulary size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from minipeft.checks import is_finite_number, is_int

IGNORE_INDEX = -100  # targets with this value carry no loss (prompt tokens, padding)


@dataclass
class GPTConfig:
    vocab_size: int = 2048
    block_size: int = 128  # the context window: most positions the model can see
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int | None = None  # MLP hidden width; None → 4·d_model as in GPT-2
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by n_head={self.n_head}: "
                "each head gets d_model / n_head dimensions."
            )

    def to_dict(self) -> dict:
        return asdict(self)


class LayerCache:
    """Keys and values one attention layer has already computed (for fast generation)."""

    def __init__(self):
        self.k: torch.Tensor | None = None  # (B, h, S, d_h)
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v


class KVCache:
    """One LayerCache per block, plus how many positioned tokens have been seen.

    `n_seen` counts real (and soft-prompt) tokens, not prefix key/values, because only the
    former occupy positions 0, 1, 2, ... of the learned position embedding.
    """

    def __init__(self, n_layer: int):
        self.layers = [LayerCache() for _ in range(n_layer)]
        self.n_seen = 0
        self.has_prefix = False


class GPTOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None  # scalar mean cross-entropy over targets ≠ IGNORE_INDEX
    cache: KVCache | None


class Attention(nn.Module):
    """Causal multi-head self-attention with separate q, k, v, o projections.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_h + causal mask) V     (Vaswani et al., 2017)
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        d = config.d_model
        self.n_head = config.n_head
        self.d_head = d // config.n_head
        self.q = nn.Linear(d, d)  # W_Q: (d → d)
        self.k = nn.Linear(d, d)  # W_K
        self.v = nn.Linear(d, d)  # W_V
        self.o = nn.Linear(d, d)  # W_O: concatenated heads → residual stream
        self.dropout = config.dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, T, d) → (B, h, T, d_h)

    def forward(
        self,
        x: torch.Tensor,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        B, T, d = x.shape
        q = self.split_heads(self.q(x))  # Q = x W_Qᵀ + b_Q: (B, h, T, d_h)
        k = self.split_heads(self.k(x))  # K = x W_Kᵀ + b_K: (B, h, T, d_h)
        v = self.split_heads(self.v(x))  # V = x W_Vᵀ + b_V: (B, h, T, d_h)

        if prefix is not None:
            # Prefix tuning: K ← [P_K; K], V ← [P_V; V]. The prefix is visible to every query.
            p_k, p_v = prefix  # each (B, h, P, d_h)
            k = torch.cat([p_k.to(k.dtype), k], dim=2)
            v = torch.cat([p_v.to(v.dtype), v], dim=2)
        if cache is not None:
            k, v = cache.append(k, v)  # earlier keys/values come first: (B, h, S, d_h)

        # Query t sits at key index (S - T + t); it may see every key up to and including that.
        S = k.shape[2]
        if S == T:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            key_index = torch.arange(S, device=x.device)
            query_index = torch.arange(S - T, S, device=x.device)
            allowed = key_index[None, :] <= query_index[:, None]  # (T, S) boolean mask
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
            )  # softmax(Q Kᵀ / √d_h + mask) V: (B, h, T, d_h)

        out = out.transpose(1, 2).reshape(B, T, d)  # concatenate heads: (B, T, d)
        return self.o(out)  # O = concat(heads) W_Oᵀ + b_O


class MLP(nn.Module):
    """Position-wise feed-forward network: MLP(x) = W_proj GELU(W_fc x + b_fc) + b_proj."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff)  # (d → d_ff)
        self.act = nn.GELU(approximate="tanh")  # GPT-2's GELU; a module so IA³ can hook it
        self.proj = nn.Linear(config.d_ff, config.d_model)  # (d_ff → d)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """One pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.ln2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, prefix=None, cache=None):
        x = x + self.dropout(self.attn(self.ln1(x), prefix=prefix, cache=cache))  # (B, T, d)
        x = x + self.mlp(self.ln2(x))  # (B, T, d)
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)  # E: (V, d)
        self.pos_emb = nn.Embedding(config.block_size, config.d_model)  # P: (block_size, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying: logits = h Eᵀ
        self.apply(self._init_weights)
        # GPT-2: scale the residual-stream output projections by 1/√(2L) at init.
        for name, p in self.named_parameters():
            if name.endswith(("attn.o.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Unique parameters (the tied head is counted once)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings E[idx] with a clear error for ids outside the vocabulary."""
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}); got min {int(idx.min())}, "
                f"max {int(idx.max())}. Encode text with the tokenizer this model was trained with."
            )
        return self.tok_emb(idx)  # (B, T) → (B, T, d)

    def forward(
        self,
        idx: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        cache: KVCache | None = None,
    ) -> GPTOutput:
        """Run the model.

        idx:           (B, T) token ids, or
        inputs_embeds: (B, T, d) embeddings (e.g. [soft prompt; E[x]]), instead of idx.
        targets:       (B, T) next-token ids; IGNORE_INDEX positions carry no loss.
        prefix:        one (K_prefix, V_prefix) pair per block, each (B, h, P, d_h).
        cache:         a KVCache to read earlier keys/values from and append new ones to.
        """
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of idx (token ids) or inputs_embeds (embeddings)")
        x = self.embed(idx) if inputs_embeds is None else inputs_embeds  # (B, T, d)
        B, T, _ = x.shape
        start = cache.n_seen if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} positions is longer than the context window "
                f"block_size={self.config.block_size}; shorten the prompt (or the soft prompt)."
            )
        if prefix is not None and len(prefix) != len(self.blocks):
            raise ValueError(f"prefix needs one (K, V) pair per block: got {len(prefix)}, "
                             f"model has {len(self.blocks)} blocks")
        # Once a cache holds the prefix keys/values, later steps must not add them again.
        if cache is not None and cache.has_prefix:
            prefix = None
        elif cache is not None and prefix is not None:
            cache.has_prefix = True

        positions = torch.arange(start, start + T, device=x.device)
        x = self.drop(x + self.pos_emb(positions))  # x₀ = E[x] + P[pos]: (B, T, d)
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                prefix=prefix[i] if prefix is not None else None,
                cache=cache.layers[i] if cache is not None else None,
            )
        if cache is not None:
            cache.n_seen += T
        logits = self.head(self.ln_f(x))  # (B, T, d) @ (d, V) → (B, T, V)

        loss = None
        if targets is not None:
            # L = −(1/N) Σ_t log p(targets_t | x_≤t), over the N targets that are not ignored
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return GPTOutput(logits, loss, cache)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks))

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        forward_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Extend `idx` (B, T) by up to `max_new_tokens` tokens.

        temperature = 0 means greedy (argmax); otherwise sample from softmax(logits / τ),
        restricted to the top-k logits when top_k is given. With use_cache, each step feeds
        only the newest token and reuses earlier keys/values (same result, less work).
        `forward_kwargs` reach the first forward call (e.g. a `prefix`); PEFT wrappers that
        prepend soft prompts override `generate` through their own forward.
        """
        return generate_tokens(self, idx, max_new_tokens, temperature, top_k, eos_id,
                               use_cache, generator, forward_kwargs or {})


def check_generation_arguments(idx: torch.Tensor, max_new_tokens: int, temperature: float,
                               top_k: int | None, block_size: int | None) -> None:
    """One clear error for each argument of `generate` that cannot work; nothing is coerced."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise ValueError("idx must be a (batch, length) tensor of token ids, e.g. "
                         "torch.tensor([tokenizer.encode(prompt)])")
    if idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ValueError(f"the prompt is empty (idx has shape {tuple(idx.shape)}): the model "
                         "needs at least one token to continue; start from "
                         "[[tokenizer.eos_id]] to generate from nothing")
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: it must be a positive integer "
                         "(1, 2, ...)")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k={top_k!r}: it must be a positive integer (1 = always the "
                         "most likely token), or None to sample from the whole vocabulary")
    if not is_finite_number(temperature) or temperature < 0:
        raise ValueError(f"temperature={temperature!r}: it must be a finite number ≥ 0 "
                         "(0 = greedy, 1 = the model's own distribution)")
    if block_size is not None and idx.shape[1] + max_new_tokens > block_size:
        raise ValueError(
            f"prompt of {idx.shape[1]} tokens + {max_new_tokens} new tokens exceeds the "
            f"context window block_size={block_size}; shorten one of them."
        )


def context_window(model: nn.Module) -> int | None:
    """block_size of a GPT, or of the GPT inside a PEFT wrapper (its `base_model`)."""
    gpt = model if isinstance(model, GPT) else getattr(model, "base_model", None)
    return gpt.config.block_size if isinstance(gpt, GPT) else None


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token from the last position's logits (B, V) → (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature  # p ∝ exp(z / τ)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


def generate_tokens(model: nn.Module, idx: torch.Tensor, max_new_tokens: int,
                    temperature: float = 1.0, top_k: int | None = None,
                    eos_id: int | None = None, use_cache: bool = True,
                    generator: torch.Generator | None = None,
                    forward_kwargs: dict | None = None) -> torch.Tensor:
    """The decoding loop, shared by GPT and the PEFT wrappers (anything with GPT's forward).

    Stops early once every row has produced `eos_id`; rows that finished keep receiving eos.
    """
    check_generation_arguments(idx, max_new_tokens, temperature, top_k, context_window(model))
    forward_kwargs = forward_kwargs or {}
    out = idx
    cache = model.new_cache() if use_cache else None
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    step_input = idx
    for _ in range(max_new_tokens):
        logits = model(step_input if use_cache else out, cache=cache, **forward_kwargs).logits
        next_id = sample_next(logits[:, -1, :], temperature, top_k, generator)  # (B, 1)
        if eos_id is not None:
            next_id = next_id.masked_fill(finished[:, None], eos_id)
            finished |= next_id[:, 0] == eos_id
        out = torch.cat([out, next_id], dim=1)
        step_input = next_id
        if eos_id is not None and bool(finished.all()):
            break
    return out
