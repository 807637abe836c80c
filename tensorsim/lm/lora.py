"""One LoRA adapter per agent over a shared frozen base model, stacked so every agent runs and trains at once.

For each target projection W (d_out x d_in) of each layer, R adapters live as two stacked tensors
    A: [R, r, d_in]    B: [R, d_out, r]        y = W x + (alpha / r) * B[a] (A[a] x)
where a is the agent of the row x belongs to (peft's LoRA, dropout 0, no bias). A batch of rows is
described by `Rows`: the adapter of each sequence and, for packed tokens, where each token sits. The
delta is computed on a padded [U, S, d] layout with two batched matmuls, so no loop over agents.

Training (`train_step`): one forward and one backward of the base model over all rows, each row through
its own adapter; the loss is the sum over rows of each row's mean cross-entropy on its answer tokens,
so the gradient of agent a's adapter is that of its own row's loss alone. Adam runs elementwise on the
stacked tensors: each agent's update depends only on its own gradient, moments and the step count.

The base model is the transformers model (training and the hf engine: forward hooks on the target
Linears) or FastLlama (generation: FastLlama calls `delta` on its fused projections).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

# peft's names for the LLaMA projections, and the fused FastLlama projection each belongs to
TARGETS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o",
           "gate_proj": "gate_up", "up_proj": "gate_up", "down_proj": "down"}
FUSED = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
         "down": ("down_proj",)}
PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def projection_dims(config, name: str) -> tuple[int, int]:
    """(d_in, d_out) of projection `name` in a LLaMA-family config."""
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    ff = config.intermediate_size
    return {"q_proj": (d, heads * head_dim), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (heads * head_dim, d),
            "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}[name]


@dataclass
class Rows:
    """Which adapter each row of a batch uses. agent: [U] adapter index of each sequence. For packed
    tokens x: [T, d] also row: [T] the sequence of each token, pos: [T] its position in it, S: the
    longest sequence; row None means one token per sequence (decode) or x already [U, S, d]."""
    agent: torch.Tensor
    row: torch.Tensor | None = None
    pos: torch.Tensor | None = None
    S: int = 1


def padded_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
    """x: [U, S, d_in]; A: [R, r, d_in]; B: [R, d_out, r]; agent: [U] -> B[a] A[a] x per row: [U, S, d_out]."""
    h = torch.bmm(x, A[agent].transpose(1, 2))  # [U, S, r]
    return torch.bmm(h, B[agent].transpose(1, 2))  # [U, S, d_out]


def packed_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, rows: Rows) -> torch.Tensor:
    """x: [T, d_in] packed tokens (or one token per sequence) -> [T, d_out]."""
    if rows.row is None:
        return padded_delta(x[:, None], A, B, rows.agent)[:, 0]  # [U, d_out]
    U = rows.agent.shape[0]
    xp = x.new_zeros(U, rows.S, x.shape[-1])  # [U, S, d_in]
    xp[rows.row, rows.pos] = x
    return padded_delta(xp, A, B, rows.agent)[rows.row, rows.pos]  # [T, d_out]


def kaiming_a(shape: tuple[int, ...], d_in: int, generator: torch.Generator) -> torch.Tensor:
    """peft's A init (kaiming_uniform, a=sqrt(5)): uniform in +-1/sqrt(d_in)."""
    bound = 1 / math.sqrt(d_in)
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).mul_(bound).float()


class StackedLoRA:
    """R adapters of rank r on `targets` of every layer of a LLaMA-family model.

    params: {"layers.{i}.{proj}.A": [R, r, d_in], "layers.{i}.{proj}.B": [R, d_out, r]}, float32 (the
    trained copy; `delta` casts to the activations' dtype). Every agent starts from the same adapter
    (A drawn once from `seed`, B = 0, so the model starts as the base model): agents that read the same
    answers stay identical, and the distance between adapters measures what they read."""

    def __init__(self, config, R: int, rank: int, alpha: float, targets: list[str], device, seed: int = 0):
        self.R, self.rank, self.alpha = R, int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        self.targets = list(targets)
        self.layers = config.num_hidden_layers
        self.out_dims = {proj: projection_dims(config, proj)[1] for proj in TARGETS}
        g = torch.Generator().manual_seed(int(seed))
        self.params: dict[str, torch.Tensor] = {}
        for i in range(self.layers):
            for proj in self.targets:
                d_in, d_out = projection_dims(config, proj)
                a = kaiming_a((1, self.rank, d_in), d_in, g).expand(R, -1, -1)
                self.params[f"layers.{i}.{proj}.A"] = a.to(device).contiguous()
                self.params[f"layers.{i}.{proj}.B"] = torch.zeros(R, d_out, self.rank, device=device)
        self.hf_agent: torch.Tensor | None = None  # [N] adapter of each row of the current transformers batch
        self.hooks = []

    # -- the forward ---------------------------------------------------------------------------------
    def delta(self, layer: int, fused: str, x: torch.Tensor, rows: Rows) -> torch.Tensor | None:
        """The adapters' addition to fused projection `fused` (qkv, o, gate_up, down) of `layer` for
        packed input x: [T, d_in] -> [T, sum of d_out] (zeros for untargeted parts), None if untargeted."""
        parts = FUSED[fused]
        if not any(p in self.targets for p in parts):
            return None
        outs = []
        for proj in parts:  # at most three projections, not agents
            if proj in self.targets:
                A, B = self.pair(layer, proj, x.dtype)
                outs.append(packed_delta(x, A, B, rows) * self.scale)
            else:
                outs.append(x.new_zeros(x.shape[0], self.out_dims[proj]))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def pair(self, layer: int, proj: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        A, B = self.params[f"layers.{layer}.{proj}.A"], self.params[f"layers.{layer}.{proj}.B"]
        return (A, B) if A.dtype == dtype else (A.to(dtype), B.to(dtype))

    # -- the transformers model: forward hooks ------------------------------------------------------
    def install(self, model) -> None:
        """Hooks on the target Linears of `model`: each adds its rows' adapters while hf_agent is set."""
        for i, layer in enumerate(model.model.layers):
            for proj in self.targets:
                module = getattr(getattr(layer, PARENT[proj]), proj)
                self.hooks.append(module.register_forward_hook(self._hook(i, proj)))

    def _hook(self, layer: int, proj: str):
        def add(module, args, out):
            if self.hf_agent is None:
                return out
            A, B = self.pair(layer, proj, out.dtype)
            return out + padded_delta(args[0].to(out.dtype), A, B, self.hf_agent) * self.scale  # [N, S, d_out]
        return add

    @contextmanager
    def rows_of(self, agent: torch.Tensor):
        """Transformers forwards inside use adapter agent[j] for batch row j."""
        self.hf_agent = agent
        try:
            yield
        finally:
            self.hf_agent = None

    def keys(self) -> list[str]:
        """'layers.{i}.{proj}' of every adapted projection, in order."""
        return [f"layers.{i}.{proj}" for i in range(self.layers) for proj in self.targets]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.cpu().clone() for k, p in self.params.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, p in self.params.items():
            p.copy_(state[k])


class Adam:
    """Adam (torch.optim.Adam's update, no weight decay) on stacked tensors; elementwise, so each
    agent's update reads only its own slice. State is plain tensors (checkpoints need no pickle)."""

    def __init__(self, params: dict[str, torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = float(lr), float(betas[0]), float(betas[1]), float(eps)
        self.m = {k: torch.zeros_like(p) for k, p in params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in params.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
        self.steps += 1
        c1, c2 = 1 - self.b1 ** self.steps, 1 - self.b2 ** self.steps
        for k, p in params.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            p.addcdiv_(m, (v.sqrt() / math.sqrt(c2)).add_(self.eps), value=-self.lr / c1)

    def state_dict(self) -> dict:
        return {"m": {k: t.cpu().clone() for k, t in self.m.items()},
                "v": {k: t.cpu().clone() for k, t in self.v.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        for k in self.m:
            self.m[k].copy_(state["m"][k])
            self.v[k].copy_(state["v"][k])
        self.steps = int(state["steps"])


def training_batch(prompts: list[list[int]], answers: list[list[int]], pad_id: int):
    """Each row = prompt + answer, right-padded. -> ids [N, S], attention mask [N, S], target [N, S]
    (the token each position predicts, -100 where no answer token is predicted)."""
    N = len(prompts)
    lens = [len(p) + len(a) for p, a in zip(prompts, answers)]
    S = max(lens)
    ids = torch.full((N, S), pad_id, dtype=torch.long)
    mask = torch.zeros(N, S, dtype=torch.long)
    target = torch.full((N, S), -100, dtype=torch.long)
    for j, (p, a) in enumerate(zip(prompts, answers)):
        ids[j, :lens[j]] = torch.tensor(p + a)
        mask[j, :lens[j]] = 1
        if a:
            target[j, len(p) - 1:lens[j] - 1] = torch.tensor(a)  # position t predicts token t+1
    return ids, mask, target


def row_losses(model, lora: StackedLoRA, ids, mask, target, agent) -> torch.Tensor:
    """Each row's mean cross-entropy over its answer tokens, row j through adapter agent[j]. -> [N]
    (0 for a row without answer tokens). Logits are computed only where an answer token is predicted."""
    with lora.rows_of(agent):
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, S, d]
    where = target != -100  # [N, S]
    logits = model.lm_head(hidden[where]).float()  # [K, V]
    ce = F.cross_entropy(logits, target[where], reduction="none")  # [K]
    row = where.nonzero()[:, 0]  # [K] row of each predicted token
    count = where.sum(-1)  # [N]
    total = torch.zeros(ids.shape[0], dtype=ce.dtype, device=ce.device).index_add_(0, row, ce)
    return total / count.clamp_min(1)


def train_step(model, lora: StackedLoRA, opt: Adam, prompts, answers, agent: torch.Tensor, pad_id: int,
               micro_rows: int | None = None) -> torch.Tensor:
    """One optimizer step of every adapter in `agent` on its own row (prompt + answer, loss on the
    answer). Rows are run micro_rows at a time (all at once if None); each row's loss is its own, so
    splitting changes nothing. agent: [N] distinct adapter indices -> the rows' losses [N] (before the step)."""
    if not lora.hooks:
        lora.install(model)
    dev = lora.params[next(iter(lora.params))].device
    ids, mask, target = (t.to(dev) for t in training_batch(prompts, answers, pad_id))
    agent = agent.to(dev)
    N = ids.shape[0]
    step = micro_rows or N
    with torch.inference_mode(False), torch.enable_grad():
        leaves = {k: p.detach().requires_grad_(True) for k, p in lora.params.items()}
        live, lora.params = lora.params, leaves
        try:
            losses = []
            for s in range(0, N, step):
                part = slice(s, s + step)
                loss = row_losses(model, lora, ids[part], mask[part], target[part], agent[part])
                loss.sum().backward()
                losses.append(loss.detach())
        finally:
            lora.params = live
        grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in leaves.items()}
    opt.step(lora.params, grads)
    return torch.cat(losses)


# -- how far the adapters drift (never materialising B A: d_out x d_in per projection per agent) ------
def product_inner(A1: torch.Tensor, B1: torch.Tensor, A2: torch.Tensor, B2: torch.Tensor) -> torch.Tensor:
    """<B1 A1, B2 A2>_F per agent: A: [R, r, d_in], B: [R, d_out, r] -> [R], as sum((B1^T B2) * (A1 A2^T)),
    r x r matrices instead of d_out x d_in ones."""
    return ((B1.transpose(1, 2) @ B2) * (A1 @ A2.transpose(1, 2))).sum((1, 2))


def update_norms(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """||B'A' - BA||_F of each agent's weight update over all adapted projections -> [R] float64."""
    sq = 0
    for k in keys:
        a0, b0, a1, b1 = (t.double() for t in (old[f"{k}.A"], old[f"{k}.B"], new[f"{k}.A"], new[f"{k}.B"]))
        sq = sq + product_inner(a1, b1, a1, b1) + product_inner(a0, b0, a0, b0) - 2 * product_inner(a1, b1, a0, b0)
    return sq.clamp_min(0).sqrt()


def adapter_gram(params: dict[str, torch.Tensor], keys: list[str], n: int) -> torch.Tensor:
    """<B_i A_i, B_j A_j>_F between the agents of each population of n (rows b*n .. b*n+n-1) -> [Bp, n, n]."""
    gram = 0
    for k in keys:
        A = rearrange(params[f"{k}.A"].double(), "(b n) r d -> b n r d", n=n)
        B = rearrange(params[f"{k}.B"].double(), "(b n) o r -> b n o r", n=n)
        gram = gram + (torch.einsum("biop,bjoq->bijpq", B, B) * torch.einsum("bipd,bjqd->bijpq", A, A)).sum((-1, -2))
    return gram


def cosine_distances(gram: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity from a Gram matrix [..., n, n]; 0 between two zero adapters (identical)."""
    norm = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()  # [..., n]
    denom = norm[..., :, None] * norm[..., None, :]
    cos = torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.ones_like(gram))
    return (1 - cos).clamp(0, 2)


def mean_off_diagonal(d: torch.Tensor) -> torch.Tensor:
    """Each agent's mean distance to the other agents of its population: [..., n, n] -> [..., n]."""
    n = d.shape[-1]
    return (d.sum(-1) - d.diagonal(dim1=-2, dim2=-1)) / max(n - 1, 1)


# -- memory -------------------------------------------------------------------------------------------
def adapter_bytes(config, R: int, rank: int, targets: list[str]) -> int:
    """Adapters, gradients and Adam's two moments, float32: 4 copies of A and B for R agents."""
    per = sum(rank * sum(projection_dims(config, p)) for p in targets) * config.num_hidden_layers
    return 4 * 4 * R * per


def training_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Activations a training forward keeps for backward, per token, in the model dtype (an upper
    estimate: every layer's norms, projections' inputs and outputs, attention and MLP intermediates),
    plus the float32 logits and their gradient at an answer token."""
    d, ff = config.hidden_size, config.intermediate_size
    elt = torch.finfo(dtype).bits // 8
    per_layer = 12 * d + 5 * ff
    return elt * per_layer * config.num_hidden_layers + 8 * config.vocab_size


def training_rows(config, dtype: torch.dtype, seq_len: int, budget_gb: float | None, rows: int) -> int:
    """Rows per training micro-batch: all `rows` unless their activations exceed budget_gb."""
    if not budget_gb:
        return rows
    per_row = training_bytes_per_token(config, dtype) * seq_len
    return max(1, min(rows, int(budget_gb * 2**30 // per_row)))


# -- peft interoperability ----------------------------------------------------------------------------
def peft_tensors(params: dict[str, torch.Tensor], keys: list[str], agent: int) -> dict[str, torch.Tensor]:
    """Agent `agent`'s adapter under the names PeftModel.save_pretrained writes for a LLaMA-family model."""
    out = {}
    for key in keys:
        _, layer, proj = key.split(".")
        name = f"base_model.model.model.layers.{layer}.{PARENT[proj]}.{proj}"
        out[f"{name}.lora_A.weight"] = params[f"{key}.A"][agent].float().contiguous()  # [r, d_in]
        out[f"{name}.lora_B.weight"] = params[f"{key}.B"][agent].float().contiguous()  # [d_out, r]
    return out


def save_peft_adapter(out_dir, params: dict[str, torch.Tensor], agent: int, rank: int, alpha: float,
                      targets: list[str], base_model: str | None) -> None:
    """Writes adapter_config.json (a peft LoraConfig) and adapter_model.safetensors into out_dir: the
    layout PeftModel.from_pretrained(base, out_dir) loads."""
    from pathlib import Path

    from peft import LoraConfig
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = sorted({int(k.split(".")[1]) for k in params})
    keys = [f"layers.{i}.{proj}" for i in layers for proj in targets]
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(targets), lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model)
    config.save_pretrained(str(out_dir))
    save_file(peft_tensors(params, keys, agent), str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
