"""A lean LLaMA forward for many agents at once, in the style of gpt-fast: fused projections, a static
KV cache that stores the prompt prefix shared by every agent once, and packed prefill.

Why not call the transformers model on the hot path: per decode step it builds masks and position
tensors and its DynamicCache concatenates every layer's keys and values (the whole cache is copied for
each new token). On 2 CPU cores at batch 30 that overhead was ~40 ms of a ~150 ms decode step, and at
batch 256 the cache copies dominate. Here:
  prefill   the suffixes of all prompts are packed end to end ([T_total, d], no padding tokens), so
            the linear layers, which are nearly all the FLOPs, see only real tokens; only attention
            uses a padded [U, S] layout;
  decode    one token per row; keys/values written in place at each row's own length;
  cache     KV [L, N, H_kv, capacity, D] grown in chunks; the shared prefix's KV [L, H_kv, P, D] is
            held once and attended by every row (never copied per row).
The weights are the transformers model's own: the fused matrices are built once and the model's
Linear weights become views of them, so the model still works as before. On CPU, small float32 models
also get a oneDNN-packed copy of every projection (Linear, packing_pays): faster from 12 rows up.
With `adapters` (a StackedLoRA, tensorsim/lm/lora.py) each row adds its own agent's LoRA update to the
fused projections, in prefill and decode; the cache keeps each row's agent (KVCache.agent).
Tests compare logits with the transformers forward, and with peft where there are adapters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .lora import Rows


def unsupported_reason(model) -> str | None:
    """Why FastLlama cannot run this model (None if it can)."""
    c = model.config
    if getattr(c, "model_type", None) != "llama":
        return f"model_type={getattr(c, 'model_type', None)!r} (the fast path is LLaMA-only)"
    if getattr(c, "hidden_act", "silu") != "silu":
        return f"hidden_act={c.hidden_act!r}"
    if getattr(c, "mlp_bias", False):
        return "mlp_bias=true"
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1 or next(iter(devices)).type == "meta":
        return "weights spread over several devices or offloaded"
    return None


def _fuse(linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for several Linears reading the same input; each Linear keeps a view."""
    weight = torch.cat([lin.weight.data for lin in linears])
    bias = torch.cat([lin.bias.data for lin in linears]) if linears[0].bias is not None else None
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = weight[start:start + rows]
        if bias is not None:
            lin.bias.data = bias[start:start + rows]
        start += rows
    return weight, bias


def weight_major_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear computed as (w @ x^T)^T. x: [T, in], w: [out, in] -> [T, out].

    The same product with the operands swapped: MKL's sgemm runs this order far faster for the skinny
    batches of decoding. Measured over all the embedded model's weights on 2 CPU cores: 48 vs 131 ms
    at 2 rows, 50 vs 141 at 4, 140 vs 170 at 30, 470 vs 737 at 256. One row would take the gemv
    path (75 ms), so it is computed as two."""
    rows = x.shape[0]
    if rows == 1:
        x = torch.cat([x, x])
    out = torch.mm(w, x.t()).t()[:rows].contiguous()  # [T, out]
    return out if b is None else out + b


class Linear:
    """y = x w^T + b with the fastest kernel this device has for the batch at hand.

    CUDA: F.linear. CPU: from 12 rows on, oneDNN on a copy of the weight packed for its blocked
    layout; below, weight_major_linear (memory-bound there, and packing does not help). Over all the
    embedded model's projections on 2 cores: 83 vs 134 ms at 30 rows, 1.40 vs 2.28 s at 1,000 (prefill),
    152 vs 93 GFLOP/s. The copy doubles weight memory, so the caller decides whether to pack."""

    PACKED_MIN_ROWS = 12

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, pack: bool = False):
        self.weight, self.bias = weight, bias
        self.packed = None
        if pack:
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 32)
            except (AttributeError, RuntimeError):  # a torch built without oneDNN: the plain kernels
                self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        if self.packed is not None and x.shape[0] >= self.PACKED_MIN_ROWS:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return weight_major_linear(x, self.weight, self.bias)


def packing_pays(model) -> bool:
    """Pack CPU weights for oneDNN (Linear) when the model is float32, on CPU, and small enough that a
    second copy of its weights is cheap (at most 4 GiB: the embedded model's is 0.5 GiB)."""
    p = next(model.parameters())
    size = sum(t.numel() * t.element_size() for t in model.parameters())
    return (p.device.type == "cpu" and p.dtype == torch.float32 and size <= 4 * 2**30
            and torch.backends.mkldnn.is_available())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # one fused op, bit-equal to the transformers norm in float32
        return torch.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, LLaMA's half-split convention. x: [..., D]; cos, sin broadcast to it."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class KVCache:
    """Keys and values of N rows. prefix_*: [L, H_kv, P, D] shared by all rows; k, v: [L, N, H_kv, C, D]
    each row's own tokens, left-aligned; lengths: [N] own tokens written so far, on the cache's device
    (the decode kernels read it); host_lengths: [N] the same on the CPU, kept in step by every writer,
    so shapes and attention spans are decided without a device-to-host sync."""

    GROW = 32  # capacity grows in chunks of this many tokens

    def __init__(self, prefix_k, prefix_v, k, v, lengths, host_lengths=None, agent=None):
        self.prefix_k, self.prefix_v, self.k, self.v, self.lengths = prefix_k, prefix_v, k, v, lengths
        if host_lengths is None and lengths is not None:
            host_lengths = lengths.cpu()  # one sync, at creation only
        self.host_lengths = host_lengths
        self.agent = agent  # [N] on the device: each row's adapter (FastLlama.adapters), None without adapters

    def agent_of(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        """The adapter index of `rows` (a CPU index; all if None)."""
        if self.agent is None:
            return None
        return self.agent.clone() if rows is None else self.agent[rows.to(self.agent.device)]

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix_k is None else self.prefix_k.shape[2]

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    def used(self) -> int:
        """The longest row's own tokens (from the host mirror: no sync)."""
        return int(self.host_lengths.max()) if self.host_lengths.numel() else 0

    def set_lengths(self, rows: list[int], values: torch.Tensor) -> None:
        """lengths[rows] = values (CPU int64 [len(rows)]), on the device and in the host mirror."""
        idx = torch.tensor(rows, dtype=torch.long)
        self.lengths[idx.to(self.lengths.device, non_blocking=True)] = values.to(self.lengths.device, non_blocking=True)
        self.host_lengths[idx] = values

    def reshaped(self, rows: torch.Tensor | None, capacity: int) -> "KVCache":
        """A copy holding `rows` (all if None; a CPU index) with room for `capacity` own tokens; unwritten
        slots are zero, so masked-out positions never carry NaN into attention."""
        rows = None if rows is None else rows.cpu()
        if rows is not None and capacity == self.k.shape[3] and bool((rows[1:] > rows[:-1]).all()):
            return self._compacted(rows)
        used = self.used()
        out = []
        for t in (self.k, self.v):
            L, N, H, C, D = t.shape
            new = t.new_empty(L, N if rows is None else rows.numel(), H, capacity, D)
            new[:, :, :, :used] = t[:, :, :, :used] if rows is None else t[:, rows.to(t.device), :, :used]
            new[:, :, :, used:] = 0  # written once: copy the used part, zero the rest
            out.append(new)
        if rows is None:
            return KVCache(self.prefix_k, self.prefix_v, out[0], out[1], self.lengths.clone(), self.host_lengths.clone(),
                           self.agent_of(None))
        return KVCache(self.prefix_k, self.prefix_v, out[0], out[1], self.lengths[rows.to(self.lengths.device)],
                       self.host_lengths[rows], self.agent_of(rows))

    def _compacted(self, rows: torch.Tensor) -> "KVCache":
        """Keeps increasing `rows` by moving them down in place (row j <- rows[j] >= j, in order, so
        no source is overwritten before it is read) and viewing the first len(rows). A gather into a
        fresh allocation pays first-touch page faults: 180 of 240 rows of the embedded model's cache
        took 1.4-2.2 s that way on 2 CPU cores, 0.13 s in place."""
        for j, r in enumerate(rows.tolist()):
            if j != r:
                self.k[:, j].copy_(self.k[:, r])
                self.v[:, j].copy_(self.v[:, r])
        R = rows.numel()
        return KVCache(self.prefix_k, self.prefix_v, self.k[:, :R], self.v[:, :R],
                       self.lengths[rows.to(self.lengths.device)], self.host_lengths[rows], self.agent_of(rows))

    def ensure_room(self) -> "KVCache":
        """Room for one more token in every row."""
        if self.used() < self.k.shape[3]:
            return self
        return self.reshaped(None, self.k.shape[3] + self.GROW)


class FastLlama:
    """The forward pass of a transformers LlamaForCausalLM over its own weights."""

    def __init__(self, model, pack: bool | None = None):
        """pack: give the CPU projections oneDNN-packed copies (Linear); None decides by packing_pays."""
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"FastLlama cannot run this model: {reason}")
        c = model.config
        self.H = c.num_attention_heads
        self.H_kv = c.num_key_value_heads or self.H
        self.D = getattr(c, "head_dim", None) or c.hidden_size // self.H
        self.eps = c.rms_norm_eps
        base = model.model
        self.embed = base.embed_tokens.weight  # [V, d]
        self.final_norm = base.norm.weight
        pack = packing_pays(model) if pack is None else pack
        self.lm_head = Linear(model.lm_head.weight, pack=pack)  # [V, d] (tied to embed in small models)
        self.inv_freq = base.rotary_emb.inv_freq.float()  # [D/2]
        self.rope_scale = float(getattr(base.rotary_emb, "attention_scaling", 1.0))
        self.layers = []
        self.adapters = None  # a StackedLoRA (tensorsim.lm.lora): rows whose cache has agents use their adapter
        for index, layer in enumerate(base.layers):
            a, m = layer.self_attn, layer.mlp
            wqkv, bqkv = _fuse([a.q_proj, a.k_proj, a.v_proj])
            w_gate_up, _ = _fuse([m.gate_proj, m.up_proj])
            self.layers.append(dict(
                index=index, attn_norm=layer.input_layernorm.weight, qkv=Linear(wqkv, bqkv, pack),
                o=Linear(a.o_proj.weight, a.o_proj.bias, pack), mlp_norm=layer.post_attention_layernorm.weight,
                gate_up=Linear(w_gate_up, pack=pack), down=Linear(m.down_proj.weight, pack=pack)))
        self.dtype, self.device = self.embed.dtype, self.embed.device
        self.scale = self.D ** -0.5
        self.graph_error: str | None = None  # set when a CUDA graph capture failed: decode eagerly after

    # -- pieces ------------------------------------------------------------------------------------
    def rope_tables(self, positions: torch.Tensor):
        """positions: [T] -> cos, sin: [T, 1, D] in the model dtype."""
        freqs = positions.float()[:, None] * self.inv_freq.to(positions.device)  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return ((emb.cos() * self.rope_scale).to(self.dtype)[:, None],
                (emb.sin() * self.rope_scale).to(self.dtype)[:, None])

    def project(self, layer, name: str, x: torch.Tensor, rows: Rows | None) -> torch.Tensor:
        """layer[name](x), plus the rows' adapters where there are any. x: [T, in] -> [T, out]."""
        y = layer[name](x)
        if rows is None or self.adapters is None:
            return y
        d = self.adapters.delta(layer["index"], name, x, rows)
        return y if d is None else y + d

    def qkv(self, layer, x, cos, sin, rows: Rows | None = None):
        """x: [T, d] -> q [T, H, D], k, v [T, H_kv, D] (q, k rotated)."""
        h = rms_norm(x, layer["attn_norm"], self.eps)
        qk, v = self.project(layer, "qkv", h, rows).split(
            [(self.H + self.H_kv) * self.D, self.H_kv * self.D], dim=-1)
        qk = rotate(qk.view(-1, self.H + self.H_kv, self.D), cos, sin)  # q and k rotated in one pass
        return qk[:, :self.H], qk[:, self.H:], v.view(-1, self.H_kv, self.D)

    def attend(self, q, prefix_k, prefix_v, own_k, own_v, allowed):
        """q: [N, H_kv, g, S, D]; prefix_k/v: [H_kv, P, D] or None; own_k/v: [N, H_kv, T, D];
        allowed: [N, 1, 1, S, T] bool -> [N, H_kv, g, S, D]."""
        N, Hkv, g, S, D = q.shape
        T = own_k.shape[2]
        scores = torch.matmul(q.reshape(N, Hkv, g * S, D), own_k.transpose(-1, -2)).view(N, Hkv, g, S, T)
        scores = scores.masked_fill(~allowed, float("-inf"))
        P = 0 if prefix_k is None else prefix_k.shape[1]
        if P:
            q_by_head = q.permute(1, 0, 2, 3, 4).reshape(Hkv, N * g * S, D)  # [H_kv, N g S, D]
            pre = torch.matmul(q_by_head, prefix_k.transpose(-1, -2)).view(Hkv, N, g, S, P).permute(1, 0, 2, 3, 4)
            scores = torch.cat([pre, scores], dim=-1)
        probs = torch.softmax(scores.float() * self.scale, dim=-1).to(q.dtype)  # [N, H_kv, g, S, P+T]
        out = torch.matmul(probs[..., P:].reshape(N, Hkv, g * S, T), own_v).view(N, Hkv, g, S, D)
        if P:
            p_by_head = probs[..., :P].permute(1, 0, 2, 3, 4).reshape(Hkv, N * g * S, P)
            out = out + torch.matmul(p_by_head, prefix_v).view(Hkv, N, g, S, D).permute(1, 0, 2, 3, 4)
        return out

    def finish_layer(self, layer, x, attn, rows: Rows | None = None):
        """Residual adds around o_proj and the MLP. x, attn: [T, d] -> [T, d]."""
        x = x + self.project(layer, "o", attn, rows)
        gate, up = self.project(layer, "gate_up", rms_norm(x, layer["mlp_norm"], self.eps), rows).chunk(2, dim=-1)
        return x + self.project(layer, "down", F.silu(gate) * up, rows)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, d] -> [N, V] float32."""
        return self.lm_head(rms_norm(x, self.final_norm, self.eps)).float()

    # -- the two passes ----------------------------------------------------------------------------
    ATTENTION_GROUP = 32  # prefill attention runs on length-sorted groups of this many rows

    def prefill(self, seqs: list[list[int]], cache: KVCache | None = None, extra: int = 0,
                into: KVCache | None = None, slots: torch.Tensor | None = None, agents: torch.Tensor | None = None):
        """Runs U token sequences after the optional shared-prefix cache. -> (logits of each sequence's
        last token [U, V], KVCache of U rows with room for `extra` more tokens each). With `into` (a
        cache after the same prefix, room for the longest sequence) and `slots` [U] (a CPU index): the
        sequences' KV go into those rows of `into` instead (continuous batching refills freed rows),
        which is returned.

        Linear layers see the packed tokens [T_total, d]. Attention pads rows to a common length, so
        rows are sorted by length and attended in groups: one long row (a rambling answer quoted as
        context) then pads only its own group, not all U rows (measured: 2x on a 144-row prefill).

        agents: [U] the adapter of each sequence (FastLlama.adapters), kept in the cache for decoding."""
        dev, L = self.device, len(self.layers)
        U = len(seqs)
        host_lens = torch.tensor([len(s) for s in seqs])  # [U] on the CPU: shapes without a sync
        lens = host_lens.to(dev)
        longest = int(host_lens.max())
        ids = torch.tensor([t for s in seqs for t in s], device=dev)  # [T_total]
        row = torch.repeat_interleave(torch.arange(U, device=dev), lens)  # [T_total]
        starts = torch.cumsum(lens, 0) - lens
        local = torch.arange(ids.numel(), device=dev) - starts[row]  # position within the row's suffix
        prefix_k = cache.prefix_k if cache is not None else None
        prefix_v = cache.prefix_v if cache is not None else None
        P = 0 if prefix_k is None else prefix_k.shape[2]
        cos, sin = self.rope_tables(P + local)
        if into is None:
            k_all = torch.zeros(L, U, self.H_kv, longest + extra, self.D, dtype=self.dtype, device=dev)
            out_cache = KVCache(prefix_k, prefix_v, k_all, torch.zeros_like(k_all), lens.clone(), host_lens.clone())
            slots = torch.arange(U, device=dev)
        else:
            if longest > into.k.shape[3]:
                raise ValueError(f"cache capacity {into.k.shape[3]} < sequence length {longest}")
            out_cache = into
            out_cache.set_lengths(slots.tolist(), host_lens)
            slots = slots.to(dev)
        k_all, v_all = out_cache.k, out_cache.v
        rows = None
        if agents is not None:
            agents = agents.to(dev)
            if out_cache.agent is None:
                out_cache.agent = torch.zeros(out_cache.k.shape[1], dtype=torch.long, device=dev)
            out_cache.agent[slots] = agents
            rows = Rows(agents, row, local, longest)
        token_slot = slots[row]  # [T_total] cache row of every packed token
        groups = [self._attention_group(g_rows, row, local, lens)
                  for g_rows in torch.argsort(lens).split(self.ATTENTION_GROUP)]
        x = self.embed[ids]  # [T_total, d]
        for i, layer in enumerate(self.layers):
            q, k, v = self.qkv(layer, x, cos, sin, rows)
            k_all[i, token_slot, :, local] = k
            v_all[i, token_slot, :, local] = v
            out = torch.empty_like(q)  # [T_total, H, D]
            for g_rows, tokens, g_row, g_local, allowed in groups:
                Ug, S = allowed.shape[0], allowed.shape[-1]
                q_pad = q.new_zeros(Ug, S, self.H, self.D)
                q_pad[g_row, g_local] = q[tokens]
                q_pad = q_pad.view(Ug, S, self.H_kv, -1, self.D).permute(0, 2, 3, 1, 4)  # [Ug, H_kv, g, S, D]
                o = self.attend(q_pad, prefix_k[i] if P else None, prefix_v[i] if P else None,
                                k_all[i, slots[g_rows], :, :S], v_all[i, slots[g_rows], :, :S], allowed)
                out[tokens] = o.permute(0, 3, 1, 2, 4)[g_row, g_local].reshape(-1, self.H, self.D)
            x = self.finish_layer(layer, x, out.view(-1, self.H * self.D), rows)
        last = starts + lens - 1
        return self.logits(x[last]), out_cache

    @staticmethod
    def _attention_group(g_rows, row, local, lens):
        """For rows g_rows: their packed token indices, each token's (row within the group, position),
        and the causal mask over the group's padded length: allowed [Ug, 1, 1, S, S]."""
        in_group = torch.full_like(lens, -1)
        in_group[g_rows] = torch.arange(g_rows.numel(), device=lens.device)
        tokens = (in_group[row] >= 0).nonzero().squeeze(-1)
        g_lens = lens[g_rows]
        t = torch.arange(int(g_lens.max()), device=lens.device)
        allowed = ((t[None, :] <= t[:, None])[None] & (t < g_lens[:, None, None]))[:, None, None]
        return g_rows, tokens, in_group[row[tokens]], local[tokens], allowed

    def prefix_cache(self, prefix: list[int]) -> KVCache:
        """The KV of a prefix shared by every row, as an empty-rowed cache to prefill suffixes after."""
        _, c = self.prefill([prefix])
        pk, pv = c.k[:, 0].contiguous(), c.v[:, 0].contiguous()  # [L, H_kv, P, D]
        return KVCache(pk, pv, None, None, None)

    def decode(self, tokens: torch.Tensor, cache: KVCache, live: torch.Tensor | None = None,
               span: int | None = None) -> torch.Tensor:
        """One new token per row. tokens: [N]; live: rows whose logits are wanted (all if None)
        -> logits [len(live), V]. Writes each row's keys/values at its own length, then advances it.
        span: cache positions attended (default: the longest row + 1); a fixed span makes every shape
        static, which CUDA graphs need (positions past a row's length are masked, so the result is
        the same)."""
        logits = self.decode_pass(tokens, cache, live, cache.used() + 1 if span is None else span)
        cache.host_lengths += 1
        return logits

    def decode_pass(self, tokens: torch.Tensor, cache: KVCache, live: torch.Tensor | None, span: int) -> torch.Tensor:
        """decode's device work only (its host mirror of the lengths is the caller's): what a CUDA
        graph captures. Every shape is fixed by (rows, span, live)."""
        N, dev, T = tokens.shape[0], self.device, span
        pos = cache.prefix_len + cache.lengths  # [N]
        cos, sin = self.rope_tables(pos)
        allowed = (torch.arange(T, device=dev) <= cache.lengths[:, None])[:, None, None, None]  # [N,1,1,1,T]
        rows = torch.arange(N, device=dev)
        g = self.H // self.H_kv
        x = self.embed[tokens]  # [N, d]
        P = cache.prefix_len
        adapted = Rows(cache.agent) if cache.agent is not None and self.adapters is not None else None
        for i, layer in enumerate(self.layers):
            q, k, v = self.qkv(layer, x, cos, sin, adapted)
            cache.k[i, rows, :, cache.lengths] = k
            cache.v[i, rows, :, cache.lengths] = v
            out = self.attend(q.view(N, self.H_kv, g, 1, self.D), cache.prefix_k[i] if P else None,
                              cache.prefix_v[i] if P else None, cache.k[i, :, :, :T], cache.v[i, :, :, :T], allowed)
            x = self.finish_layer(layer, x, out.reshape(N, self.H * self.D), adapted)
        cache.lengths += 1
        return self.logits(x if live is None else x[live])


def graph_span(cache: KVCache) -> int:
    """The attention span a decode pass over `cache` needs: its longest row + 1, rounded up to a
    multiple of KVCache.GROW, within the capacity."""
    return min(cache.k.shape[3], -(-(cache.used() + 1) // KVCache.GROW) * KVCache.GROW)


class GraphedDecode:
    """FastLlama.decode captured as a CUDA graph for one cache (fixed rows) and a span of cache
    positions, replayed for every token: one launch instead of ~20 kernels per layer, which is what
    holds a batch-30 decode step of a 7B model back from the memory-bandwidth bound. CUDA only.

    A capture costs a warm-up pass, a synchronize and an empty_cache(), so it is rare: the span (a
    multiple of KVCache.GROW) never shrinks while the cache object stays the same, so a cache is
    captured once per span it grows through, and again only when it is replaced (compacted, grown).
    Every capture goes into one memory pool, on one stream of the cache's device: a new graph reuses
    the memory of the one it replaces."""

    def __init__(self, fast: FastLlama):
        self.fast = fast
        self.cache, self.span, self.graph, self.logits = None, 0, None, None
        self.pool = self.stream = None  # made at the first capture (CUDA only)
        self.captures = 0

    def prepare(self, cache: KVCache, span: int) -> None:
        """Captures `cache` over `span` now (e.g. the whole capacity before a timed loop)."""
        if cache is not self.cache or span > self.span:
            self._recapture(cache, span)

    def _recapture(self, cache: KVCache, span: int) -> None:
        self.cache = self.graph = self.logits = None  # free the old graph and the cache it holds first
        lengths = cache.lengths.clone()
        try:
            self._capture(cache, span)
        except BaseException:
            cache.lengths.copy_(lengths)  # the warm-up advanced them
            self.cache = self.graph = self.logits = None
            raise

    def _capture(self, cache: KVCache, span: int) -> None:
        self.tokens = torch.zeros(cache.rows, dtype=torch.long, device=cache.k.device)
        self.graph, self.logits = self._record(cache, span)
        self.cache, self.span = cache, span  # held: the graph writes into this cache's memory
        self.captures += 1

    def _record(self, cache: KVCache, span: int):
        """A warm-up pass, then decode_pass over `span` captured into the shared pool -> (graph, its
        static logits [rows, V]). Runs on the cache's device whatever the current device is."""
        dev = cache.k.device
        if self.stream is None:
            self.stream, self.pool = torch.cuda.Stream(device=dev), torch.cuda.graph_pool_handle()
        lengths = cache.lengths.clone()
        with torch.cuda.device(dev):
            self.stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(self.stream):  # warm-up outside the graph (allocator, lazy kernel init)
                self.fast.decode_pass(self.tokens, cache, None, span)
            torch.cuda.current_stream(dev).wait_stream(self.stream)
            cache.lengths.copy_(lengths)  # the warm-up advanced them; its writes sit past every length, masked
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                logits = self.fast.decode_pass(self.tokens, cache, None, span)
        return graph, logits

    def __call__(self, tokens: torch.Tensor, cache: KVCache, live: torch.Tensor | None = None) -> torch.Tensor:
        if self.fast.graph_error is not None:
            return self.fast.decode(tokens, cache, live)
        span = graph_span(cache)
        if cache is not self.cache or span > self.span:
            try:
                self._recapture(cache, span)
            except torch.OutOfMemoryError:
                raise  # a RuntimeError too, but the caller's halve-and-retry must see it
            except RuntimeError as e:  # an op this torch/driver cannot capture: stay correct, go eager
                self.fast.graph_error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                print(f"[tensorsim] CUDA graph capture failed ({self.fast.graph_error}); decoding without "
                      f"graphs (generation.cuda_graphs=false silences this)", flush=True)
                return self.fast.decode(tokens, cache, live)
        self.tokens.copy_(tokens)
        self.graph.replay()
        cache.host_lengths += 1  # the graph advanced the device lengths
        return self.logits if live is None else self.logits[live]
