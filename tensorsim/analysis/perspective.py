"""The perspective space of Helm et al. for `python -m tensorsim.report --embed`: classical MDS of every
agent's answer embedding at a few steps, one shared frame per (k, p) cell, agents coloured by label.

Answers come from a run's transcript.jsonl and are embedded with the run's own embedder config.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..outputs import parquet_batches, table_path
from .plots import plt, save_fig, silo_colours
from .runs import read_agent_labels


def classical_mds(D: np.ndarray, dims: int = 2) -> np.ndarray:
    """Classical (Torgerson) MDS: double-centre the squared distances, keep the top eigenvectors.
    D: [m, m] symmetric distances -> [m, dims] coordinates (each axis signed so that its largest-magnitude
    coordinate is positive; axes with no variance are zero)."""
    D = np.asarray(D, dtype=float)
    m = D.shape[0]
    D2 = D ** 2
    B = -0.5 * (D2 - D2.mean(axis=0, keepdims=True) - D2.mean(axis=1, keepdims=True) + D2.mean())
    w, V = np.linalg.eigh((B + B.T) / 2)
    order = np.argsort(w)[::-1][:dims]
    w, V = np.clip(w[order], 0.0, None), V[:, order]
    X = V * np.sqrt(w)
    for j in range(X.shape[1]):
        i = np.argmax(np.abs(X[:, j]))
        if X[i, j] < 0:
            X[:, j] = -X[:, j]
    if X.shape[1] < dims:
        X = np.hstack([X, np.zeros((m, dims - X.shape[1]))])
    return X


def pairwise_distances(X: np.ndarray, block_elems: int = 1 << 22) -> np.ndarray:
    """Euclidean distances in float64 from coordinate differences. Not sqrt(|x|^2 + |y|^2 - 2 x.y):
    that form leaves ~sqrt(eps)|x| of rounding between identical points, and the rounding depends on
    the BLAS kernel the CPU picks. Differences give exact zeros for identical points, exact symmetry,
    and no BLAS at all. Rows go in blocks of about block_elems differences (bounded memory).
    X: [m, d] -> [m, m] float64"""
    X = np.asarray(X, dtype=np.float64)
    m, d = X.shape
    out = np.empty((m, m))
    rows = max(1, block_elems // max(1, m * d))
    for r0 in range(0, m, rows):
        diff = X[r0:r0 + rows, None, :] - X[None, :, :]  # [b, m, d]
        out[r0:r0 + rows] = np.sqrt(np.square(diff).sum(-1))  # rounded products, fixed-order sum
    return out


def parse_steps(spec: str, T: int) -> list[int]:
    """'first,middle,last' / '0,40,-1' -> distinct steps in [0, T)."""
    out = []
    for tok in spec.split(","):
        tok = tok.strip().lower()
        if not tok:
            continue
        if tok == "first":
            t = 0
        elif tok == "middle":
            t = (T - 1) // 2
        elif tok == "last":
            t = T - 1
        else:
            try:
                t = int(tok)
            except ValueError:
                raise UserError(f"--mds-steps={spec!r}: {tok!r} is not a step (use integers, first, middle, last)") from None
            if t < 0:
                t += T
            if not 0 <= t < T:
                raise UserError(f"--mds-steps={spec!r}: step {tok} is outside 0..{T - 1}")
        if t not in out:
            out.append(t)
    if not out:
        raise UserError(f"--mds-steps={spec!r}: no steps given")
    return out


def perspective_rows(emb_by_step: dict[int, np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Joint classical MDS of every agent's answer at every chosen step (one frame for all steps).
    emb_by_step: t -> [n, d] -> ([len(steps) * n, 2], steps)."""
    steps = list(emb_by_step)
    X = np.concatenate([emb_by_step[t] for t in steps])
    return classical_mds(pairwise_distances(X)), steps


def perspective_figure(path: Path, rows: list[tuple[str, dict, dict, list[str]]]) -> None:
    """rows: (title, t -> [n, d] embeddings, t -> [n] labels, label names), one figure row each."""
    ncol = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(3.1 * ncol + 1.6, 3.0 * len(rows) + 0.4), squeeze=False)
    for i, (title, emb, labels, names) in enumerate(rows):
        coords, steps = perspective_rows(emb)
        n = next(iter(emb.values())).shape[0]
        pad = 0.05 * (np.ptp(coords, axis=0).max() or 1.0)
        lo, hi = coords.min(axis=0) - pad, coords.max(axis=0) + pad
        seen = {}
        colours = silo_colours(np.stack([np.asarray(labels[t]) for t in steps]))  # final = last step shown
        for j, t in enumerate(steps):
            ax = axes[i, j]
            xy = coords[j * n:(j + 1) * n]
            lab = labels[t]
            for v in np.unique(lab):
                sel = lab == v
                name = names[v] if 0 <= v < len(names) else "unlabeled"
                seen[name] = ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=colours[int(v)], label=name,
                                        edgecolor="black", linewidth=0.3)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_title(f"{title}, t={t}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        for j in range(len(steps), ncol):
            axes[i, j].set_visible(False)
        axes[i, len(steps) - 1].legend(list(seen.values())[:20], list(seen)[:20], fontsize=6,
                                       loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("perspective space: classical MDS of answer embeddings (shared frame per row)", fontsize=10)
    fig.tight_layout()
    save_fig(fig, path)


def read_transcript_steps(path: Path, replica: int, steps: set[int]) -> dict[int, dict[int, str]]:
    """t -> agent -> response, for one replica and the given steps (transcript.jsonl or .parquet)."""
    out: dict[int, dict[int, str]] = {}
    if path.suffix == ".parquet":
        for batch in parquet_batches(path, ["replica", "t", "agent", "response"]):
            rep, t = batch.column(0).to_numpy(), batch.column(1).to_numpy()
            for i in np.nonzero((rep == replica) & np.isin(t, list(steps)))[0].tolist():
                out.setdefault(int(t[i]), {})[batch.column(2)[i].as_py()] = batch.column(3)[i].as_py() or ""
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("replica", 0) == replica and rec.get("t") in steps:
                out.setdefault(rec["t"], {})[rec["agent"]] = rec.get("response") or ""
    return out


def make_embedder(embedder_cfg: dict, device: str = "auto"):
    from omegaconf import OmegaConf

    from ..lm.models import Embedder, resolve_device

    return Embedder(OmegaConf.create(embedder_cfg), resolve_device(device))


def default_embedder_cfg() -> dict:
    """conf/embedder/minilm.yaml (the embedded default)."""
    from omegaconf import OmegaConf

    package = Path(__file__).resolve().parents[1]  # tensorsim/, this file being tensorsim/analysis/perspective.py
    for candidate in (package.parent / "conf" / "embedder" / "minilm.yaml", package / "conf" / "embedder" / "minilm.yaml"):
        if candidate.is_file():
            return OmegaConf.to_container(OmegaConf.load(candidate), resolve=True)
    raise UserError("conf/embedder/minilm.yaml not found next to the tensorsim package; pass --embedder FILE.yaml")


def perspective_for_groups(groups: dict, spec: str, device: str, max_agents: int, notes: list[str]) -> list:
    """Per cell (CellKey) group: its first run with a transcript, embedded at the chosen steps -> figure rows
    (title, t -> [n, d] embeddings, t -> [n] labels, label names); what is skipped goes to notes."""
    rows, embedders = [], {}
    for key, cells in groups.items():
        cell = next((c for c in cells if table_path(c.dir, "transcript") and c.replicas), None)
        if cell is None:
            notes.append(f"perspective: {key.label()} has no transcript (GMM agents or "
                         f"output.transcript=false): skipped")
            continue
        r = cell.replicas[0]["replica"]
        T = len(cell.E[r])
        steps = parse_steps(spec, T)
        transcript = table_path(cell.dir, "transcript")
        texts = read_transcript_steps(transcript, r, set(steps))
        if not texts:
            notes.append(f"perspective: {cell.dir} has no answers in {transcript.name} (GMM agents?): skipped")
            continue
        if any(t not in texts for t in steps):
            notes.append(f"perspective: {cell.dir} transcript lacks some of the steps {steps}: skipped")
            continue
        n = max(max(d) for d in texts.values()) + 1
        agents = list(range(n))
        if n > max_agents:
            agents = sorted(np.random.default_rng(0).choice(n, max_agents, replace=False).tolist())
            notes.append(f"perspective: {key.label()}: {max_agents} of {n} agents shown (--mds-max-agents)")
        cfg = (cell.summary.get("config") or {}).get("embedder") or default_embedder_cfg()
        ck = json.dumps(cfg, sort_keys=True)
        if ck not in embedders:
            embedders[ck] = make_embedder(cfg, device)
        emb = {t: embedders[ck].responses([texts[t].get(a, "") for a in agents]).cpu().numpy() for t in steps}
        agents_table = table_path(cell.dir, "agents")
        if agents_table is not None:
            lab_all = read_agent_labels(agents_table, [r]).get(r)
            labels = {t: lab_all[t, agents] for t in steps}
            names = _names_from_agents(agents_table)
        else:
            labels = {t: np.full(len(agents), -1) for t in steps}
            names = []
        rows.append((f"{key.label()} run {r}", emb, labels, names))
    return rows


def _names_from_agents(path: Path) -> list[str]:
    """Label id -> name as recorded in agents.csv or agents.parquet (ids without a row are '?')."""
    names: dict[int, str] = {}
    if path.suffix == ".parquet":
        for batch in parquet_batches(path, ["label", "label_name"]):
            lab = batch.column(0).to_numpy()
            first = np.unique(lab, return_index=True)[1]  # one name lookup per distinct label
            for i in first.tolist():
                names.setdefault(int(lab[i]), batch.column(1)[i].as_py() or "?")
    elif path.is_file():
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                try:
                    names.setdefault(int(row["label"]), row.get("label_name") or "?")
                except (KeyError, TypeError, ValueError):
                    break
    size = max(names, default=-1) + 1
    return [names.get(i, "?") for i in range(size)]
