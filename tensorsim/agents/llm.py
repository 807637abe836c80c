"""LLM agents (docs/SPEC.md §1): one step = retrieve -> generate -> embed -> neighbours -> interact -> label.

State (B populations of n agents, m knowledge-base entries each):
  entry_ref  [B, n, m] int64  index into `texts` of every entry's current answer
  scores     [B, n, m] float  retrieval score of every entry (dot product with the query)
  slots      [B, n, r] int64  each agent's retrieved entries, best first
  texts      list[str]        table of answer texts: the KB's n*m answers, then the responses entry_ref
                              may still hold (each step appends its B*n responses; compact_refs drops the
                              ones no entry holds any longer, so len(texts) <= n*m + 2*B*n*m after a step)
The share/mirror update writes one index per agent into entry_ref: no strings move on the hot path.
This bookkeeping lives on the CPU whatever `device` is: it is small, it is read with .tolist() to build
the contexts, and checkpoints load anywhere. The models, embeddings and neighbour graph live on
`device`; their results reach the bookkeeping through .cpu().
"""
from __future__ import annotations

import json
import string

import torch
from einops import rearrange

from .. import errors
from ..core import graph, interact, rng, social
from ..core.labels import CentroidLabeler, NameLabeler
from ..core.populations import Populations
from ..core.step import StepRecord
from ..errors import UserError, is_int, is_num, need
from ..knowledge import KnowledgeBase, load_kb, retrieval_scores, retrieve
from ..lm.generate import Generator, NonFiniteError, SamplingConfig
from ..lm.models import Embedder, check_weights, load_llm, weights_name
from ..lm.prompts import PromptBuilder
from ..lm.protocol import LABEL_RULES, AnswerChecker, AnswerRules, generate_answers, label_rule

WRITES_TEXT = True
RETRIEVAL_KEYS = ("question", "entry")
ENGINES = ("auto", "fast", "hf")
CHARS_PER_TOKEN = 4  # a generous mean for English BPE tokens: caps the size estimate of an answer


def uses_graph(cfg) -> bool:
    return True


def validate(cfg) -> None:
    check_weights(cfg.model, "model")
    check_weights(cfg.embedder, "embedder")
    tpl = cfg.prompt.template
    need(isinstance(tpl, str), "prompt.template", tpl, "a string holding {context}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(tpl) if f is not None}
    except ValueError as e:
        raise UserError(f"prompt.template is not a valid format string ({e}); write literal braces as {{{{ }}}}") from None
    need("context" in fields, "prompt.template", tpl, "a template holding the field {context}")
    need(fields <= {"context"}, "prompt.template", tpl, "only the field {context} (write other braces as {{ }})")
    need(isinstance(cfg.prompt.query, str) and cfg.prompt.query.strip(), "prompt.query", cfg.prompt.query,
         "a non-empty string")
    rule = cfg.prompt.get("require_label", False)
    need(isinstance(rule, bool) or rule in LABEL_RULES, "prompt.require_label", rule,
         f"one of {', '.join(LABEL_RULES)} (true = any, false = off)")
    system = cfg.prompt.get("system")
    need(system is None or isinstance(system, str), "prompt.system", system,
         'null (the chat template\'s default), "" (no system turn) or a text')
    g = cfg.generation
    need(is_num(g.temperature) and g.temperature >= 0, "generation.temperature", g.temperature,
         "a number >= 0 (0 = greedy)")
    need(is_num(g.top_p) and 0 < g.top_p <= 1, "generation.top_p", g.top_p, "a number in (0, 1]")
    need(is_int(g.max_new_tokens) and g.max_new_tokens >= 1, "generation.max_new_tokens", g.max_new_tokens,
         "an integer >= 1")
    need(is_int(g.max_retries) and g.max_retries >= 0, "generation.max_retries", g.max_retries, "an integer >= 0")
    need(is_int(g.max_rows) and g.max_rows >= 1, "generation.max_rows", g.max_rows, "an integer >= 1")
    for switch in ("stop_at_sentence_end", "share_prefix", "dedup_prompts", "early_exit", "continuous", "cuda_graphs"):
        need(isinstance(g.get(switch, True), bool), f"generation.{switch}", g.get(switch), "true or false")
    need(g.get("engine", "auto") in ENGINES, "generation.engine", g.get("engine"), f"one of {', '.join(ENGINES)}")
    budget = g.get("memory_budget_gb")
    need(budget is None or (is_num(budget) and budget > 0), "generation.memory_budget_gb", budget,
         "null or a number of GiB > 0")
    r = cfg.retrieval
    need(is_int(r.top_r) and r.top_r >= 1, "retrieval.top_r", r.top_r, "an integer >= 1")
    need(r.key in RETRIEVAL_KEYS, "retrieval.key", r.key, f"one of {', '.join(RETRIEVAL_KEYS)}")


def transcript_estimate(cfg) -> tuple[float, list[str]]:
    """Before the models load: (expected bytes of one transcript row's context + response, JSON-escaped,
    the knowledge base's labels). An answer is taken as long as the KB's mean answer (without
    generation.stop_at_sentence_end: as long as max_new_tokens allow), at most max_new_tokens *
    CHARS_PER_TOKEN characters after the answer prefix; a context joins retrieval.top_r of them."""
    kb = load_kb(cfg.kb)
    answers = [a for row in kb.answers for a in row]
    mean_answer = sum(len(json.dumps(a, ensure_ascii=False).encode("utf-8")) - 2 for a in answers) / len(answers)
    g = cfg.generation
    longest = int(g.max_new_tokens) * CHARS_PER_TOKEN + len(cfg.prompt.answer_prefix or "")
    answer = min(mean_answer, longest) if g.get("stop_at_sentence_end", True) else longest
    top_r = int(cfg.retrieval.top_r)
    return answer + top_r * answer + 2 * (top_r - 1), list(kb.labels)  # "\n" between entries: 2 bytes escaped


def compact_refs(entry_ref: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Renumber a text table's references so that only referenced texts remain. entry_ref: [...] int64
    indices into a table whose first `keep` texts always stay. -> (entry_ref renumbered [...], kept [K]:
    the old indices >= keep still referenced, ascending; new table = table[:keep] + table[kept])."""
    kept = torch.unique(entry_ref[entry_ref >= keep])  # sorted
    renumbered = keep + torch.searchsorted(kept, entry_ref)
    return torch.where(entry_ref < keep, entry_ref, renumbered), kept


def build(cfg, pops: Populations, device, dtype, agents_class=None):
    """-> (LLMAgents, the knowledge base's labels, what the run used). agents_class: a subclass of
    LLMAgents to build instead (agents/lora.py)."""
    kb = load_kb(cfg.kb)
    if cfg.trial.n > kb.n:
        print(f"[tensorsim] trial.n={cfg.trial.n} > {kb.n} agents in the knowledge base: repeating them cyclically")
    kb = kb.take(cfg.trial.n)
    if cfg.retrieval.top_r > kb.m:
        raise UserError(f"retrieval.top_r={cfg.retrieval.top_r} is not allowed: at most the {kb.m} entries per agent")
    model, tokenizer = load_llm(cfg.model, device, dtype)
    embedder = Embedder(cfg.embedder, device)
    agents = (agents_class or LLMAgents)(cfg, kb, pops, model, tokenizer, embedder, device)
    used = {"agents": cfg.agents.kind, "model": weights_name(cfg.model),
            "model_path": str(cfg.model.get("path") or cfg.model.source), "embedder": weights_name(cfg.embedder),
            "embedder_path": str(cfg.embedder.get("path") or cfg.embedder.source), "knowledge_base": kb.name,
            "dtype": str(dtype)}
    return agents, kb.labels, used


class LLMAgents:
    def __init__(self, cfg, kb: KnowledgeBase, pops: Populations, model, tokenizer, embedder, device):
        self.cfg, self.kb, self.pops, self.device = cfg, kb, pops, device
        self.B, self.n, self.m = pops.B, kb.n, kb.m
        self.embedder = embedder
        self.k_max = int(pops.k.max())
        g = cfg.generation
        self.generator = Generator(model, tokenizer, SamplingConfig.from_config(g))
        self.prompts = PromptBuilder(tokenizer, cfg.prompt.template, cfg.prompt.answer_prefix,
                                     bool(cfg.model.chat_template), cfg.prompt.get("system"))
        rules = AnswerRules(cfg.prompt.required_phrase, label_rule(cfg.prompt.get("require_label", False)),
                            int(g.max_retries))
        self.names = NameLabeler(kb.labels)  # the protocol's labels, and the silos' with labeler=name
        self.checker = AnswerChecker(rules, self.names)

        # retrieval keys and the query, embedded once (docs/SPEC.md §1, retrieval)
        self.query = embedder.queries([cfg.prompt.query])[0]  # [d]
        self.retrieval_key = cfg.retrieval.key
        if self.retrieval_key == "entry":  # question + current answer
            keys = [f"{q}\n{a}" for qs, ans in zip(kb.questions, kb.answers) for q, a in zip(qs, ans)]
        else:  # docs/SPEC.md: the stored question
            keys = [q for row in kb.questions for q in row]
        key_emb = rearrange(embedder.documents(keys), "(n m) d -> n m d", n=self.n)
        self.scores = retrieval_scores(self.query, key_emb).cpu().expand(self.B, -1, -1).clone()  # [B, n, m]
        self.top_r = int(cfg.retrieval.top_r)

        # the KB's answers are texts 0 .. n*m-1, shared by every population at the start
        self.texts: list[str] = [a for row in kb.answers for a in row]
        self.entry_ref = torch.arange(self.n * self.m).reshape(1, self.n, self.m).repeat(self.B, 1, 1)
        self.slots = retrieve(self.scores, self.top_r)  # [B, n, r]

        self.labeler = self._make_labeler(cfg.labeler)
        self.row_adapters = False  # row b*n+i generates through adapter b*n+i (agents/lora.py)
        self.last_embeddings = None  # [B, n, d] the last step's answers, embedded

    def state_dict(self) -> dict:
        """Everything a resumed run needs (randomness is counter-based: no generator state)."""
        return {"texts": list(self.texts), "entry_ref": self.entry_ref.clone(), "scores": self.scores.cpu().clone(),
                "slots": self.slots.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.texts = list(state["texts"])
        self.entry_ref = state["entry_ref"].cpu().clone()
        self.scores = state["scores"].to(self.scores)
        self.slots = state["slots"].cpu().clone()

    def _make_labeler(self, name: str):
        names = self.names
        if name == "name":
            return names
        # centroid labeler: reference = the KB's topic answers, labelled by their agents' labels
        topic_answers = [row[self.kb.topic_slot] for row in self.kb.answers]
        ref = self.embedder.responses(topic_answers)
        return CentroidLabeler(ref, torch.tensor(self.kb.agent_labels), len(self.kb.labels))

    def contexts(self) -> list[str]:
        """The text each agent answers from: its retrieved entries' answers, best first. -> B*n strings"""
        refs = torch.gather(self.entry_ref, -1, self.slots)  # [B, n, r]
        return ["\n".join(self.texts[j] for j in row) for row in refs.reshape(-1, self.top_r).tolist()]

    def _generate(self, contexts: list[str], t: int) -> tuple[list[str], dict[str, torch.Tensor]]:
        """ONE batched generation for all B*n agents; rows that break the answer protocol (missing
        phrase, or the label rule) are regenerated, each try with fresh random keys (protocol.py).
        -> B*n answers, their labels by name [B*n], and the protocol's counters per population [B]."""
        agent = torch.arange(self.n)
        prompt_ids = self.prompts(contexts)

        def generate(rows: list[int], attempt: int) -> list[str]:
            keys = rng.mix(self.pops.seeds.cpu()[:, None], rng.TOKEN, t, agent[None, :], attempt).reshape(-1)
            try:
                new = self.generator([prompt_ids[r] for r in rows], keys[rows],
                                     torch.tensor(rows) if self.row_adapters else None)
            except NonFiniteError as e:
                pops = sorted({rows[r] // self.n for r in e.rows})
                raise errors.NonFiniteError(f"non-finite logits at step {t} in population(s) {pops}") from None
            return [self.prompts.response(ids) for ids in new]

        responses, counts = generate_answers(generate, contexts, self.checker)
        self.generations = counts.generations
        per_pop = {"answers": torch.full((self.B,), self.n, dtype=torch.int64),
                   "phrase_retries": counts.phrase_retries.reshape(self.B, self.n).sum(-1),
                   "label_retries": counts.label_retries.reshape(self.B, self.n).sum(-1),
                   "unlabeled_answers": counts.unlabeled.reshape(self.B, self.n).sum(-1)}
        return responses, counts.labels, per_pop

    @torch.inference_mode()
    def step(self, t: int) -> StepRecord:
        B, n, pops = self.B, self.n, self.pops
        tokens_before = self.generator.stats.new_tokens
        self.generations = 0
        mirrored = interact.mirror_coins(pops.seeds, pops.p_at(t), t, n)  # [B, n]
        contexts = self.contexts()
        responses, named, protocol = self._generate(contexts, t)  # B*n
        emb = rearrange(self.embedder.responses(responses), "(b n) d -> b n d", b=B)  # [B, n, d]
        if not torch.isfinite(emb).all():
            bad = (~torch.isfinite(emb)).flatten(1).any(-1).nonzero().flatten().tolist()
            raise errors.NonFiniteError(f"non-finite embeddings at step {t} in population(s) {bad}")
        # labeler=name: the protocol has already labelled every answer by name
        self.last_embeddings = emb
        labels = named.reshape(B, n) if self.labeler is self.names else self.labeler(emb)
        partner = social.partners(pops.seeds.to(emb.device), pops.k_at(t).to(emb.device), t, emb,
                                  lambda x: graph.knn(x, self.k_max, self.cfg.graph.backend),  # [B, n, k_max]
                                  pops.graphs, self.cfg.graph.get("mix", "uniform"), within=emb.float())
        source = interact.context_sources(mirrored.to(partner.device), partner).cpu()  # [B, n]
        garbled = interact.garble_coins(pops.seeds, pops.noise_of(), t, n).cpu() if pops.noisy else None
        self._update(source, responses, garbled, t)
        self._compact_texts()
        return StepRecord(labels=labels.cpu(), partner=source, mirrored=mirrored.cpu(), garbled=garbled,
                          contexts=contexts,
                          responses=responses, new_tokens=self.generator.stats.new_tokens - tokens_before,
                          generations=self.generations, protocol=protocol)

    def _compact_texts(self) -> None:
        """Drop the responses no entry holds any longer once the table passes n*m + 2*B*n*m texts (at most
        B*n*m are held, so a compaction frees at least half of what follows the KB: amortised O(B*n) a
        step). The KB's n*m texts stay: trial.noise_mode=kb draws from them. Order is kept, so the
        contexts, and every output, are the same as with the whole table."""
        kb = self.n * self.m
        if len(self.texts) <= kb + 2 * self.entry_ref.numel():
            return
        self.entry_ref, kept = compact_refs(self.entry_ref, kb)
        texts = self.texts
        self.texts = texts[:kb] + [texts[j] for j in kept.tolist()]

    def _garble(self, new_ref, slot, garbled, t):
        """trial.noise: the answer a garbled agent receives, by trial.noise_mode. drop: the slot keeps what it
        holds; swap: the answer of a uniform agent of its population at this step; kb: the knowledge base's
        initial entry, in the overwritten slot, of a uniform agent. new_ref, slot, garbled: [B, n] -> [B, n]"""
        B, n, pops = self.B, self.n, self.pops
        seeds = pops.seeds.cpu()
        mode = pops.noise_mode
        if mode == "drop":
            other = torch.gather(self.entry_ref, -1, slot[..., None]).squeeze(-1)  # [B, n] unchanged slot
        elif mode == "swap":
            j = interact.noise_picks(seeds, rng.NOISE_PICK, t, n, n)  # [B, n]
            other = len(self.texts) - B * n + torch.arange(B)[:, None] * n + j
        else:  # kb: KB texts are indexed agent * m + entry
            j = interact.noise_picks(seeds, rng.NOISE_PICK, t, n, n)
            other = j * self.m + slot
        return torch.where(garbled, other, new_ref)

    def _update(self, src, responses, garbled=None, t=0):
        """docs/SPEC.md §1 step 6 as a masked tensor update: agent i's context slot := index of r_src(i).
        src: [B, n] whose answer each agent takes (itself where mirrored); garbled: [B, n] bool or None."""
        self._write_context(*self._received_refs(src, responses, garbled, t))

    def _received_refs(self, src, responses, garbled=None, t=0):
        """Append this step's answers to the text table -> (new_ref [B, n]: index of the answer each agent
        receives, after garbling; slot [B, n]: the context entry it overwrites)."""
        B, n = self.B, self.n
        base = len(self.texts)
        self.texts.extend(responses)
        new_ref = base + torch.arange(B)[:, None] * n + src  # [B, n] index of the taken answer
        slot = self.slots[..., 0]  # [B, n] the top-1 slot is the one overwritten
        if garbled is not None:
            new_ref = self._garble(new_ref, slot, garbled, t)
        return new_ref, slot

    def _write_context(self, new_ref, slot):
        B = self.B
        self.entry_ref.scatter_(-1, slot[..., None], new_ref[..., None])
        if self.cfg.retrieval.every_step:
            if self.retrieval_key == "entry":
                # the overwritten entry now holds another answer: re-score it
                q_text = [self.kb.questions[i][s] for s_row in slot.tolist() for i, s in enumerate(s_row)]
                a_text = [self.texts[j] for j in new_ref.flatten().tolist()]
                e = self.embedder.documents([f"{q}\n{a}" for q, a in zip(q_text, a_text)])
                new_scores = rearrange(e @ self.query.to(e), "(b n) -> b n 1", b=B).to(self.scores)
                self.scores.scatter_(-1, slot[..., None], new_scores)
            self.slots = retrieve(self.scores, self.top_r)
