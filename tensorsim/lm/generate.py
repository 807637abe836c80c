"""Batched generation for all agents at once: a small decode loop in the style of gpt-fast.

prefill -> decode -> sample, composed in `Generator`, with savings over a plain `model.generate`
call, each switchable:
  share_prefix   the token prefix common to every prompt (system turn + instructions) is prefilled
                 once and its KV cache expanded to all rows;
  dedup_prompts  identical prompts (common once contexts converge) are prefilled once and their KV
                 cache expanded to every row that asked;
  early_exit     rows that hit EOS or end their sentence leave the batch instead of riding along;
  continuous     (fast engine) the cache row of an ended answer is refilled with a waiting prompt, so
                 a call larger than max_rows does not end every micro-batch in a slow tail
                 (tensorsim.slots).
Logits are computed only at positions that are sampled (logits_to_keep=1). The fast engine
(tensorsim.llama) runs LLaMA-family models; the transformers forward (HFSession) runs any other
architecture in fixed micro-batches.

Sampling uses inverse-CDF draws from counter-based uniforms (tensorsim.rng): row r's token j is a
pure function of row_keys[r] and j, so a row's text does not depend on the rest of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import rng
from ..errors import UserError
from .llama import FastLlama, GraphedDecode, unsupported_reason
from .slots import SlotCache


class NonFiniteError(FloatingPointError):
    """Non-finite logits; .rows are the offending rows of the generate call."""

    def __init__(self, rows: list[int]):
        super().__init__(f"non-finite logits in rows {rows}")
        self.rows = rows


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.75
    top_p: float = 1.0
    max_new_tokens: int = 500
    stop_at_sentence_end: bool = True
    share_prefix: bool = True
    dedup_prompts: bool = True
    early_exit: bool = True
    max_rows: int = 256  # rows per forward pass (micro-batch; with continuous batching, cache slots)
    continuous: bool = True  # fast engine: a finished answer's row is refilled with a waiting prompt
    engine: str = "auto"  # auto (fast for LLaMA models, else hf) | fast (tensorsim.llama) | hf (transformers)
    cuda_graphs: bool = True  # fast engine on CUDA: decode replays a captured CUDA graph
    memory_budget_gb: float | None = None  # caps rows so their KV cache fits this budget

    @classmethod
    def from_config(cls, g) -> "SamplingConfig":
        """From the config's generation group (validated by config.py); absent keys keep the defaults."""
        kinds = {"temperature": float, "top_p": float, "max_new_tokens": int, "max_rows": int, "engine": str}
        out = {}
        for name in cls.__dataclass_fields__:
            if g.get(name) is not None:
                value = g.get(name)
                out[name] = kinds.get(name, lambda v: v)(value)
        return cls(**out)


SAMPLE_BLOCK = 256  # vocabulary block of the two-level inverse-CDF search


def sample(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Draw one token per row by inverse CDF. logits: [N, V], u: [N] in [0,1) -> [N]."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [N, V]
    if top_p < 1.0:
        probs, order = torch.sort(probs, dim=-1, descending=True)
        # nucleus: keep the smallest head whose mass reaches top_p (the top token always stays)
        probs = probs * ((probs.cumsum(-1) - probs) < top_p)
        return order.gather(-1, inverse_cdf(probs, u)[:, None]).squeeze(-1)
    return inverse_cdf(probs, u)


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index i with cdf[i-1] <= u * total < cdf[i], per row, for non-negative weights [N, V].

    Two levels instead of one cumsum over V: block sums -> the block holding the target -> a cumsum
    of that block only (49k-token vocabulary at 240 rows: the cumsum alone took 25 ms of a 78 ms draw
    on 2 cores). Float rounding between the levels can push the target past a block's last weight;
    the draw then takes the block's last token of positive weight, never one of weight zero."""
    N, V = weights.shape
    B = SAMPLE_BLOCK
    blocks = -(-V // B)
    if blocks * B != V:
        weights = torch.nn.functional.pad(weights, (0, blocks * B - V))
    w = weights.view(N, blocks, B)  # [N, blocks, B]
    block_mass = w.sum(-1)  # [N, blocks]
    block_cdf = block_mass.cumsum(-1)
    target = u.to(block_cdf.dtype) * block_cdf[:, -1]  # [N]
    b = torch.searchsorted(block_cdf, target[:, None], right=True).clamp_max(blocks - 1)  # [N, 1]
    inner = w.gather(1, b[:, :, None].expand(N, 1, B)).squeeze(1)  # [N, B]
    before = (block_cdf.gather(1, b) - block_mass.gather(1, b))  # [N, 1] mass of the earlier blocks
    j = torch.searchsorted(before + inner.cumsum(-1), target[:, None], right=True)  # [N, 1]
    last_positive = ((inner > 0) * torch.arange(B, device=w.device)).amax(-1, keepdim=True)
    return (b * B + torch.minimum(j, last_positive)).squeeze(-1)


def prefill(model, input_ids, attention_mask, cache):
    """input_ids, attention_mask: [N, S] (mask covers the cached prefix too) -> last logits [N, V]."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)[:, -input_ids.shape[1]:]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1]


def decode_one_token(model, token, attention_mask, position, cache):
    """token, position: [N, 1]; attention_mask: [N, L+1] -> logits [N, V]."""
    out = model(input_ids=token, attention_mask=attention_mask, position_ids=position,
                cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1]


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest shared token prefix, leaving every sequence at least one token of its own."""
    shortest = min(len(s) for s in seqs)
    first = seqs[0]
    L = 0
    while L < shortest - 1 and all(s[L] == first[L] for s in seqs):
        L += 1
    return L


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids [N, S], mask [N, S] with padding on the left."""
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), S), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, S - len(s):] = torch.tensor(s)
            mask[r, S - len(s):] = 1
    return ids.to(device), mask.to(device)


@dataclass
class GenerationStats:
    new_tokens: int = 0
    prefill_tokens: int = 0  # tokens run through prefill (a shared prefix counted once)
    forward_rows: int = 0  # rows prefilled (identical prompts count once)
    decode_rows: int = 0  # rows fed to decode steps, summed over steps (finished rows not counted)
    oom_retries: int = 0


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """KV-cache bytes one token of one row occupies: keys and values of every layer."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * torch.finfo(dtype).bits // 8


class Generator:
    """Holds the model, its tokenizer and the sampling settings; generates token ids for prompt ids."""

    def __init__(self, model, tokenizer, cfg: SamplingConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        eos = set(eos) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        V = model.config.vocab_size
        self.stop_ids = torch.zeros(V, dtype=torch.bool)
        self.stop_ids[list(eos)] = True
        self.eos_ids = self.stop_ids.clone()
        if cfg.stop_at_sentence_end:
            # tokens that end a sentence ("." "!" "?" possibly followed by quotes or spaces); a
            # sentence ended mid-abbreviation ("St.") is the price of not decoding every row every step
            vocab = tokenizer.convert_ids_to_tokens(list(range(min(V, len(tokenizer)))))
            for i, tok in enumerate(vocab):
                text = tokenizer.convert_tokens_to_string([tok]).strip().rstrip("\"')”’")
                if text and text[-1] in ".!?" and not any(ch.isdigit() for ch in text):
                    self.stop_ids[i] = True
        # host copies: the fast engine decides which rows end on the host, from the drawn token ids
        self.stop_set, self.eos_set = set(self.stop_ids.nonzero().flatten().tolist()), set(eos)
        self.stop_ids = self.stop_ids.to(self.device)
        self.eos_ids = self.eos_ids.to(self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stats = GenerationStats()
        self.max_rows = cfg.max_rows
        self.slots_in_use = cfg.max_rows  # fast engine: cache slots of the current call
        self.kv_per_token = kv_bytes_per_token(model.config, next(model.parameters()).dtype)
        self.fast = self._fast_model(model, cfg.engine)
        self.adapters = None  # a StackedLoRA: set by use_adapters
        self.reserved_bytes = 0  # memory the budget holds for something else (adapters and their optimizer)

    def use_adapters(self, adapters) -> None:
        """Rows may name an adapter of `adapters` (tensorsim.lm.lora.StackedLoRA) from now on: on the fast
        engine it adds to FastLlama's projections, on the hf engine its hooks go on the model."""
        self.adapters = adapters
        if self.fast is not None:
            self.fast.adapters = adapters
        elif not adapters.hooks:
            adapters.install(self.model)

    @staticmethod
    def _fast_model(model, engine: str):
        """FastLlama over the model's weights where asked for and possible; None means the HF path."""
        if engine == "hf":
            return None
        reason = unsupported_reason(model)
        if reason is None:
            if not hasattr(model, "_tensorsim_fast"):
                model._tensorsim_fast = FastLlama(model)  # one per model: it fuses the weights in place
            return model._tensorsim_fast
        if engine == "fast":
            raise UserError(f"generation.engine=fast cannot run this model: {reason} (allowed: auto, hf)")
        return None

    def rows_for_budget(self, prompt_len: int, shared: int = 0) -> int:
        """Micro-batch size: max_rows, lowered so that the rows' KV cache fits memory_budget_gb.
        shared: leading tokens held once for all rows (the fast engine's shared prefix)."""
        if not self.cfg.memory_budget_gb:
            return self.max_rows
        per_row = self.kv_per_token * (prompt_len - shared + self.cfg.max_new_tokens)
        budget = self.cfg.memory_budget_gb * 2**30 - self.kv_per_token * shared - self.reserved_bytes
        return max(1, min(self.max_rows, int(budget // per_row)))

    def _shared_prefix(self, prompts: list[list[int]]) -> int:
        """Tokens of the prompts' common prefix that the fast engine stores once (the HF engine copies
        the prefix into every row, so nothing is shared there)."""
        if self.fast is None or not self.cfg.share_prefix or len(prompts) < 2:
            return 0
        return common_prefix_len(prompts)

    @torch.inference_mode()
    def __call__(self, prompts: list[list[int]], row_keys: torch.Tensor,
                 agents: torch.Tensor | None = None) -> list[list[int]]:
        """prompts: N token-id lists; row_keys: [N] int64 (one random key per row) -> N lists of new ids
        (EOS removed). On out-of-memory the work is retried with half the rows per pass: answers do not
        change, since each row's randomness is its own. agents: [N] int64 (CPU), row r generates
        through adapter agents[r] of self.adapters (tensorsim.lm.lora); the prompts then share no
        prefix cache (every adapter changes the prefix's keys and values) and identical prompts are
        prefilled once per adapter only."""
        if agents is not None and self.adapters is None:
            raise ValueError("agents given but the generator has no adapters (Generator.use_adapters)")
        if self.fast is not None:
            return self._generate_fast(prompts, row_keys, agents)
        out: list[list[int]] = []
        i = 0
        while i < len(prompts):
            chunk = prompts[i:i + self.max_rows]
            step = self.rows_for_budget(max(len(p) for p in chunk), self._shared_prefix(chunk) if agents is None else 0)
            try:
                adapted = {} if agents is None else {"agents": agents[i:i + step]}
                out += self._generate_chunk(prompts[i:i + step], row_keys[i:i + step], offset=i, **adapted)
            except torch.OutOfMemoryError:
                self._out_of_memory(step)
                continue
            i += step
        return out

    def _out_of_memory(self, rows: int) -> None:
        """Halves the rows per pass after an out-of-memory error at `rows` (re-raises at one row)."""
        if rows == 1:
            raise
        self.max_rows = max(1, rows // 2)
        self.stats.oom_retries += 1
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(f"[tensorsim] out of memory at {rows} rows per pass: retrying with {self.max_rows}", flush=True)

    def _generate_fast(self, prompts: list[list[int]], row_keys: torch.Tensor,
                       agents: torch.Tensor | None = None) -> list[list[int]]:
        """The fast engine: continuous batching over cache slots (tensorsim.slots). Rows whose answer
        ended before an out-of-memory error keep it; the others start over with fewer slots."""
        done: dict[int, list[int]] = {}
        while len(done) < len(prompts):
            try:
                self._decode_in_slots(prompts, row_keys, done, agents)
            except torch.OutOfMemoryError:
                self._out_of_memory(self.slots_in_use)
        return [done[r] for r in range(len(prompts))]

    def _decode_in_slots(self, prompts, row_keys, done: dict[int, list[int]], agents=None) -> None:
        """Generates every row not in `done` into it, as rows finish. Per decode pass the device is
        read once (the drawn tokens and the rows' finiteness, one transfer); everything else about
        the rows (slots, prompt, tokens drawn, ended) is kept on the host."""
        cfg, dev = self.cfg, self.device
        by_prompt: dict[tuple, list[int]] = {}
        for r in range(len(prompts)):
            if r not in done:
                by_prompt.setdefault(self._prompt_key(prompts, r, agents), []).append(r)
        # rows asking the same prompt next to each other: admitted together, prefilled once (dedup_prompts)
        todo = [r for rows in by_prompt.values() for r in rows]
        distinct = list(by_prompt)
        shared = cfg.share_prefix and len(distinct) > 1 and agents is None
        P = common_prefix_len([list(prompts[rows[0]]) for rows in by_prompt.values()]) if shared else 0
        longest = max(len(prompts[r]) for r in todo)
        n_slots = min(len(todo), self.rows_for_budget(longest, P))
        self.slots_in_use = n_slots  # what an out-of-memory error halves
        graphs = cfg.cuda_graphs and dev.type == "cuda"
        # an accelerator's cache is allocated once at the size the budget counted (growing copies it)
        capacity = None if dev.type == "cpu" else longest - P + cfg.max_new_tokens
        prefix = self.fast.prefix_cache(prompts[todo[0]][:P]) if P else None
        self.stats.prefill_tokens += P

        def new_batch():
            return SlotCache(self.fast, n_slots, prefix, GraphedDecode(self.fast) if graphs else None, capacity)

        batch = new_batch()
        # continuous: refill once this many slots are free (a prefill of fewer rows runs at a poor rate);
        # otherwise fixed micro-batches: the next one starts, in a fresh cache, when all rows have ended
        continuous = cfg.continuous and cfg.early_exit
        refill_at = max(1, n_slots // 8) if continuous else n_slots
        keys = row_keys.to(dev)
        waiting = list(reversed(todo))  # popped from the end
        new_ids = {r: [] for r in todo}
        # per batch row, on the host: its slot, its prompt, tokens drawn, ended (riding along without early exit)
        active, rows, sampled, finished = [], [], [], []
        logits = token = None  # [A, V], [A] on the device
        while True:
            if waiting and not continuous and not active and batch.slots < n_slots:
                batch = new_batch()  # the last micro-batch was compacted
            if waiting and len(batch.free) >= min(refill_at, len(waiting)):
                admitted = [waiting.pop() for _ in range(min(len(batch.free), len(waiting)))]
                slots, new_logits = self._admit(batch, prompts, admitted, P, agents)
                active, rows = active + slots, rows + admitted
                sampled, finished = sampled + [0] * len(slots), finished + [False] * len(slots)
                logits = new_logits if logits is None else torch.cat([logits, new_logits])
            if not active:
                break
            token, drawn = self._draw(logits, keys, rows, sampled)
            for i, (r, tok) in enumerate(zip(rows, drawn)):
                if not finished[i]:
                    if tok not in self.eos_set:
                        new_ids[r].append(tok)
                    self.stats.new_tokens += 1
                sampled[i] += 1
                finished[i] = finished[i] or tok in self.stop_set or sampled[i] >= cfg.max_new_tokens
            # without early exit, ended rows ride along (computed, discarded) until every row has ended
            if any(finished) and (cfg.early_exit or all(finished)):
                stay = [i for i, f in enumerate(finished) if not f]
                for i, f in enumerate(finished):
                    if f:
                        done[rows[i]] = new_ids.pop(rows[i])
                batch.release([s for s, f in zip(active, finished) if f])
                active, rows, sampled, finished = ([x[i] for i in stay] for x in (active, rows, sampled, finished))
                token = token[torch.tensor(stay).to(dev, non_blocking=True)] if stay else None
                if active and (not waiting or not continuous):  # no waiting prompt needs the slots
                    active = batch.compact(active)
            if not active:
                logits = None
                continue
            logits = self._decode(batch, active, token)
            self.stats.decode_rows += len(active)

    def _draw(self, logits: torch.Tensor, keys: torch.Tensor, rows: list[int], sampled: list[int]):
        """Draws each batch row's next token. logits: [A, V]; keys: [N] row keys on the device; rows,
        sampled: A ints -> (tokens [A] on the device, the same A tokens on the host). The tokens and
        the logits' finiteness come back in one transfer; non-finite logits raise NonFiniteError."""
        cfg = self.cfg
        counters = torch.tensor([rows, sampled]).to(logits.device, non_blocking=True)  # [2, A]
        token = sample(logits, rng.uniform(keys[counters[0]], counters[1]), cfg.temperature, cfg.top_p)  # [A]
        finite = torch.isfinite(logits.sum(-1))  # see check_finite
        drawn, ok = torch.stack([token, finite.long()]).tolist()  # the pass's one device-to-host transfer
        if not all(ok):
            raise NonFiniteError([r for r, good in zip(rows, ok) if not good])
        return token, drawn

    @staticmethod
    def _prompt_key(prompts, r: int, agents: torch.Tensor | None) -> tuple:
        """What makes two rows' prefills identical: the prompt, and the adapter where there are adapters."""
        return tuple(prompts[r]) if agents is None else (int(agents[r]), *prompts[r])

    def _admit(self, batch: SlotCache, prompts, admitted: list[int], P: int, agents: torch.Tensor | None = None):
        """Prefills the admitted rows' prompts (after the shared prefix) into free slots -> (slots, logits).
        (Their logits are checked for finiteness when drawn from.)"""
        if self.cfg.dedup_prompts:
            distinct: dict[tuple, int] = {}
            inverse = [distinct.setdefault(self._prompt_key(prompts, r, agents), len(distinct)) for r in admitted]
            first = {u: r for r, u in zip(reversed(admitted), reversed(inverse))}  # sequence -> a row asking it
            seq_rows = [first[u] for u in range(len(distinct))]
        else:
            inverse, seq_rows = list(range(len(admitted))), list(admitted)
        seqs = [prompts[r][P:] for r in seq_rows]
        seq_agents = None if agents is None else agents[torch.tensor(seq_rows)]
        slots, logits = batch.admit(seqs, inverse) if agents is None else batch.admit(seqs, inverse, seq_agents)
        self.stats.prefill_tokens += sum(len(s) for s in seqs)
        self.stats.forward_rows += len(seqs)
        return slots, logits

    @staticmethod
    def check_finite(logits: torch.Tensor, rows: torch.Tensor) -> None:
        # a row's sum is non-finite iff the row holds NaN/inf (logits are far too small to overflow a
        # float32 sum); one reduction instead of isfinite over [N, V]: 2 vs 49 ms at 240 rows on 2 cores
        if bool(torch.isfinite(logits.sum(-1)).all()):
            return
        finite = torch.isfinite(logits).all(-1).cpu()  # rows: CPU indices whatever the device
        raise NonFiniteError(rows.cpu()[~finite].tolist())

    def _generate_chunk(self, prompts, row_keys, offset: int = 0, agents: torch.Tensor | None = None):
        cfg, dev = self.cfg, self.device
        N = len(prompts)
        # rows asking the same prompt (through the same adapter) share one prefill
        if cfg.dedup_prompts:
            uniq: dict[tuple, int] = {}
            inverse = [uniq.setdefault(self._prompt_key(prompts, r, agents), len(uniq)) for r in range(N)]
            unique_prompts = [list(p) if agents is None else list(p[1:]) for p in uniq]
        else:
            inverse, unique_prompts = list(range(N)), prompts
        U = len(unique_prompts)
        P = common_prefix_len(unique_prompts) if (cfg.share_prefix and U > 1 and agents is None) else 0
        session = self._session()
        if agents is not None:  # the hooks read each batch row's adapter from here (kept in step by select)
            first = {u: r for r, u in zip(reversed(range(N)), reversed(inverse))}
            session.adapters = self.adapters
            session.agent = agents[torch.tensor([first[u] for u in range(U)])].to(dev)
        logits = session.start(unique_prompts, P, cfg.max_new_tokens)  # [U, V]
        self.check_finite(logits, torch.tensor([inverse.index(u) for u in range(U)]) + offset)
        self.stats.prefill_tokens += P + sum(len(p) - P for p in unique_prompts)
        self.stats.forward_rows += U
        if cfg.dedup_prompts:
            rows = torch.tensor(inverse, device=dev)
            session.select(rows)
            logits = logits[rows]

        generated = [[] for _ in range(N)]
        active = torch.arange(N, device=dev)  # original row of each batch row
        finished = torch.zeros(N, dtype=torch.bool, device=dev)  # only used without early exit
        keys = row_keys.to(dev)
        for j in range(cfg.max_new_tokens):
            u = rng.uniform(keys[active], j)
            token = sample(logits, u, cfg.temperature, cfg.top_p)  # [A]
            keeps_token = ~self.eos_ids[token] & ~finished
            for r, tok, kept in zip(active.tolist(), token.tolist(), keeps_token.tolist()):
                if kept:
                    generated[r].append(tok)
            self.stats.new_tokens += int((~finished).sum())
            finished = finished | self.stop_ids[token]
            if bool(finished.all()) or j + 1 == cfg.max_new_tokens:
                break
            if cfg.early_exit and bool(finished.any()):
                idx = (~finished).nonzero().squeeze(-1)
                session.select(idx)
                active, token, finished = active[idx], token[idx], finished[idx]
            logits = self._decode(session, token)
            self.stats.decode_rows += token.shape[0]
            self.check_finite(logits, active.cpu() + offset)
        return generated

    def _session(self):
        return HFSession(self.model, self.pad_id)

    def _decode(self, session, *tokens_of_rows):
        """One decode pass of a session (HFSession: token [A]; SlotCache: slots [A], token [A])
        -> logits [A, V]. A method, so tests can intercept the logits."""
        return session.decode(*tokens_of_rows)


class HFSession:
    """One chunk's decoding state on the transformers model (any architecture): DynamicCache + mask, and
    with adapters (tensorsim.lm.lora, its forward hooks) the adapter of each batch row."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.adapters, self.agent = None, None  # StackedLoRA, [rows] adapter of each batch row

    def _forward(self, fn, *args):
        if self.adapters is None:
            return fn(self.model, *args)
        with self.adapters.rows_of(self.agent):
            return fn(self.model, *args)

    def start(self, prompts: list[list[int]], P: int, max_new_tokens: int) -> torch.Tensor:
        from transformers import DynamicCache

        dev, U = self.device, len(prompts)
        self.cache = DynamicCache()
        if P:
            prefix = torch.tensor([prompts[0][:P]], device=dev)
            prefill(self.model, prefix, torch.ones_like(prefix), self.cache)
            self.cache.batch_repeat_interleave(U)
        ids, mask = left_pad([p[P:] for p in prompts], self.pad_id, dev)
        self.mask = torch.cat([torch.ones(U, P, dtype=mask.dtype, device=dev), mask], dim=1)  # [U, P+S]
        return self._forward(prefill, ids, self.mask, self.cache)

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        if self.agent is not None:
            self.agent = self.agent[rows]

    def decode(self, token: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones(self.mask.shape[0], 1, dtype=self.mask.dtype,
                                                     device=self.mask.device)], dim=1)
        position = self.mask.sum(-1, keepdim=True) - 1  # [A, 1]
        return self._forward(decode_one_token, token[:, None], self.mask, position, self.cache)
