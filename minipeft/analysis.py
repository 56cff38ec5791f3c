"""Tools to look inside models and adapters: the numbers behind the lecture plots.

Sections (each written next to the methods it serves):
* rank and spectra — rank of ΔW, singular values, subspace similarity between adapters;
* prompts — nearest vocabulary tokens of soft-prompt vectors;
* selective — Fisher scores, memory anatomy (weights / gradients / optimizer state / activations).
"""
from __future__ import annotations

import copy
import resource
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from minipeft.device import model_device

# ---- rank and spectra ------------------------------------------------------------------
# Hu et al. (2021, §7) ask how low the rank of a useful update ΔW really is; these functions
# measure it. The dense ΔW exists here and in merging only, never during training.


@torch.no_grad()
def delta_weights(peft_model) -> dict[str, torch.Tensor]:
    """Dense ΔW (d_out, d_in) of every wrapped layer's active adapter, by module name.

    >>> delta_weights(lora_model)["blocks.0.attn.q"].shape     # (α/r) B A
    torch.Size([128, 128])
    """
    return {name: layer.delta_weight().detach().clone()
            for name, layer in peft_model.tuner_layers()}


def singular_values(W: torch.Tensor) -> torch.Tensor:
    """σ₁ ≥ σ₂ ≥ … ≥ 0 of a matrix, W = U diag(σ) Vᵀ (float64 for accurate small values)."""
    if W.dim() != 2:
        raise ValueError(f"singular_values needs a matrix, got a tensor of shape {tuple(W.shape)}")
    return torch.linalg.svdvals(W.detach().double())


def effective_rank(W: torch.Tensor) -> float:
    """Entropy effective rank (Roy & Vetterli, 2007): exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ / Σⱼ σⱼ.

    Equals k for a matrix with k equal non-zero singular values, and falls between 1 and k
    when a few directions dominate. Takes a matrix or its singular values (1-D).
    """
    s = singular_values(W) if W.dim() == 2 else W.detach().double()
    total = s.sum()
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def subspace_similarity_grid(A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """φ(A1, A2, i, j) for every i ≤ r1, j ≤ r2: a (r1, r2) grid (Hu et al. 2021, Fig. 3).

    φ(A1, A2, i, j) = ‖U1ᵢᵀ U2ⱼ‖²_F / min(i, j), where U1ᵢ (k × i) holds the top-i right
    singular vectors of A1 (r1 × k). 1 = one subspace contains the other, 0 = orthogonal.
    """
    if A1.dim() != 2 or A2.dim() != 2 or A1.shape[1] != A2.shape[1]:
        raise ValueError(f"need two LoRA A matrices (r, k) with the same k, got shapes "
                         f"{tuple(A1.shape)} and {tuple(A2.shape)}")
    V1 = torch.linalg.svd(A1.detach().double(), full_matrices=False).Vh  # (r1, k), rows = vᵢ
    V2 = torch.linalg.svd(A2.detach().double(), full_matrices=False).Vh  # (r2, k)
    overlap = (V1 @ V2.T) ** 2  # (r1, r2): cos² between singular directions
    captured = overlap.cumsum(0).cumsum(1)  # [i-1, j-1] = ‖U1ᵢᵀ U2ⱼ‖²_F
    i = torch.arange(1, V1.shape[0] + 1, dtype=captured.dtype, device=captured.device)
    j = torch.arange(1, V2.shape[0] + 1, dtype=captured.dtype, device=captured.device)
    return captured / torch.minimum(i[:, None], j[None, :])


def subspace_similarity(A1: torch.Tensor, A2: torch.Tensor, i: int, j: int) -> float:
    """φ(A1, A2, i, j) = ‖U1ᵢᵀ U2ⱼ‖²_F / min(i, j) ∈ [0, 1] (Hu et al. 2021, §7.2)."""
    r1, r2 = min(A1.shape), min(A2.shape)
    if not (1 <= i <= r1 and 1 <= j <= r2):
        raise ValueError(f"need 1 ≤ i ≤ {r1} and 1 ≤ j ≤ {r2} (the ranks of A1, A2), "
                         f"got i={i}, j={j}")
    return float(subspace_similarity_grid(A1, A2)[i - 1, j - 1])


# ---- prompts ---------------------------------------------------------------------------
# Lester et al. (2021, §7) read a learned soft prompt by looking up, for each prompt vector,
# the vocabulary tokens whose embeddings point the same way.


def token_embeddings(model) -> torch.Tensor:
    """E (V, d) of a GPT or of a PEFT model wrapping one (detached)."""
    return getattr(model, "base_model", model).tok_emb.weight.detach()


def check_vectors(vectors: torch.Tensor, embedding: torch.Tensor, name: str = "vectors"
                  ) -> torch.Tensor:
    """`vectors` as a float (n, d) tensor on E's device, or one clear error."""
    if not isinstance(vectors, torch.Tensor) or vectors.dim() != 2 \
            or vectors.shape[1] != embedding.shape[1]:
        shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors)
        raise ValueError(f"{name} must be an (n, {embedding.shape[1]}) tensor, as wide as the "
                         f"token embeddings, got {shape}")
    return vectors.detach().float().to(embedding.device)


def check_k(k: int, vocab_size: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab_size:
        raise ValueError(f"k must be an int in 1..{vocab_size} (the vocabulary size), got {k!r}")


def cosine_to_vocabulary(vectors: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """cos(p_i, e_v) for every vector and token: (n, V)."""
    vectors = check_vectors(vectors, embedding)
    return F.normalize(vectors, dim=1) @ F.normalize(embedding.float(), dim=1).T


@torch.no_grad()
def nearest_tokens(vectors: torch.Tensor, model, tokenizer, k: int = 5
                   ) -> list[list[tuple[str, float]]]:
    """For each row of `vectors` (n, d): the k tokens with the most similar embedding.

    similarity(p, e_v) = p·e_v / (‖p‖ ‖e_v‖)   over every row e_v of the token embedding E
    Returns n lists of (token text, cosine), most similar first. `model` is a GPT or a
    PEFT model wrapping one.
    """
    embedding = token_embeddings(model)  # E: (V, d)
    check_k(k, embedding.shape[0])
    scores, ids = cosine_to_vocabulary(vectors, embedding).topk(k, dim=1)
    return [[(tokenizer.token_text(i), s) for i, s in zip(row_ids, row_scores)]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist())]


# ---- selective and memory --------------------------------------------------------------
# Which entries matter (Fisher scores per layer and matrix), and where a training step's
# memory goes: ATNLP Lecture 8 ("Parameter-efficient Finetuning") asks why memory is more
# critical for training than for inference; measured tensor sizes answer it.
BLOCK_TENSORS = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o", "fc": "mlp.fc",
                 "proj": "mlp.proj", "ln1": "ln1", "ln2": "ln2"}


@torch.no_grad()
def mean_score_per_module(scores: dict[str, torch.Tensor], n_layer: int
                          ) -> tuple[torch.Tensor, list[str]]:
    """An (n_layer, 8) table for a heat map: the mean of `scores` over each module's entries.

    `scores` maps parameter names ("blocks.2.attn.q.weight") to tensors of their shape:
    Fisher scores from `compute_fisher`, or a boolean mask (then the mean is the fraction of
    the module that the mask selected). Weight and bias of a module are pooled together.
    Columns: q k v o fc proj ln1 ln2. Modules missing from `scores` give 0.
    """
    table = torch.zeros(n_layer, len(BLOCK_TENSORS))
    for i in range(n_layer):
        for j, path in enumerate(BLOCK_TENSORS.values()):
            parts = [s.float().reshape(-1) for name, s in scores.items()
                     if name.startswith(f"blocks.{i}.{path}.")]
            if parts:  # the table is a CPU one, whatever device the scores are on
                table[i, j] = float(torch.cat(parts).mean())
    return table, list(BLOCK_TENSORS)


@dataclass
class MemoryAnatomy:
    """Bytes held during one training step, by kind (all measured on real tensors).

    inference needs the weights (activations are freed layer by layer); training also keeps
    gradients, optimizer state and the activations saved for the backward pass.
    """

    frozen_weight_bytes: int  # θ₀ and fixed buffers (mask indices, a projection P)
    trainable_weight_bytes: int  # φ
    gradient_bytes: int  # .grad of φ (and ID3's dense selection gradients while it selects)
    optimizer_bytes: int  # AdamW exp_avg + exp_avg_sq: 2 × 4 bytes per fp32 trainable entry
    activation_bytes: int  # tensors autograd saved for backward, not θ₀ itself (θ₀ + Δ counts)
    trainable_params: int
    peak_bytes: int | None  # CUDA peak during the step on a GPU; process peak RSS on a CPU
    peak_kind: str  # "cuda_max_allocated" or "process_max_rss"

    @property
    def inference_bytes(self) -> int:
        return self.frozen_weight_bytes + self.trainable_weight_bytes

    @property
    def training_bytes(self) -> int:
        return (self.inference_bytes + self.gradient_bytes + self.optimizer_bytes
                + self.activation_bytes)

    def as_dict(self) -> dict:
        return {**asdict(self), "inference_bytes": self.inference_bytes,
                "training_bytes": self.training_bytes}


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def memory_anatomy(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                   steps: int = 2) -> MemoryAnatomy:
    """Run `steps` AdamW training steps on a copy of `model` and measure the last one.

    batch: (inputs, targets) as train.py builds them. The copy (copy.deepcopy) keeps the
    caller's model untouched, and lr = 0 keeps the weights fixed while every buffer is
    still allocated. Two steps, not one, so that methods which start empty (ID3 chooses
    its first entries after step 1) are measured in their running state.
    Activations are counted with autograd's saved-tensor hooks: each distinct storage that
    the forward pass keeps for backward, except the model's own parameters and buffers.
    """
    model = copy.deepcopy(model)
    device = model_device(model)
    inputs, targets = (t.to(device) for t in batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters: nothing to train, nothing "
                         "to measure (wrap it with get_peft_model first)")
    optimizer = torch.optim.AdamW(trainable, lr=0.0)
    own_storage = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    on_cuda = device.type == "cuda"
    saved: dict[tuple[int, int], int] = {}

    def remember(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in own_storage:
            saved[key] = key[1]
        return t

    model.train()
    for step in range(steps):
        last = step == steps - 1
        saved.clear()
        if last and on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        with torch.autograd.graph.saved_tensors_hooks(remember, lambda t: t):
            loss = model(inputs, targets).loss
        loss.backward()
        grad_holders = [*trainable, *getattr(model, "probe_tensors", list)()]
        gradient_bytes = sum(t.grad.nbytes for t in grad_holders if t.grad is not None)
        optimizer.step()
        if hasattr(model, "after_optimizer_step"):
            model.after_optimizer_step(step, steps)
        optimizer.zero_grad(set_to_none=True)
    optimizer_bytes = sum(state[key].nbytes for state in optimizer.state.values()
                          for key in ("exp_avg", "exp_avg_sq"))
    if on_cuda:
        peak, peak_kind = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    else:  # Linux reports ru_maxrss in kilobytes: the whole process' high-water mark
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak_kind = "process_max_rss"
    frozen = [t for t in [*model.parameters(), *model.buffers()] if not t.requires_grad]
    return MemoryAnatomy(
        frozen_weight_bytes=sum(t.nbytes for t in frozen),
        trainable_weight_bytes=sum(p.nbytes for p in trainable),
        gradient_bytes=gradient_bytes,
        optimizer_bytes=optimizer_bytes,
        activation_bytes=sum(saved.values()),
        trainable_params=sum(p.numel() for p in trainable),
        peak_bytes=peak,
        peak_kind=peak_kind,
    )
