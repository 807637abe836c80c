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

    # -- what an agent's adapter is ------------------------------------------------------------------
    def products(self) -> torch.Tensor:
        """Every adapter's B A over all targets, flattened: [R, sum of d_out d_in] float32."""
        flat = [torch.bmm(self.params[f"{k}.B"].float(), self.params[f"{k}.A"].float()).flatten(1)
                for k in self.keys()]
        return torch.cat(flat, dim=1)

    def keys(self) -> list[str]:
        """'layers.{i}.{proj}' of every adapted projection, in order."""
        return [f"layers.{i}.{proj}" for i in range(self.layers) for proj in self.targets]


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
