"""Run outputs, written so that nothing half-written looks complete.

Per cell directory (the run directory itself for a single (k, p) cell, cells/k{K}_p{P}/ in a grid):
  metrics.csv       replica, t, stability (empty at t=0), entropy, n_silos, k_t, p_t   [+ k, p in a grid]
  agents.csv        replica, t, agent, label, label_name, partner, mirrored, type, garbled   [+ k, p in a grid]
  transcript.jsonl  {replica, t, agent, context, response}                   (LLM agents)
  summary.json      config, models, timings and per-replica final silos and patterns
  stability.png, entropy.png, silos.png
Tables stream into *.partial files that are renamed when the run ends; summary.json is written last
(temporary file + rename) and is what marks a directory as complete.

output.format=parquet writes metrics.parquet, agents.parquet and transcript.parquet instead (same columns,
full float64 precision, stability null at t=0, label_name dictionary-encoded, mirrored boolean), in row
groups of about ROW_GROUP_ROWS rows. A Parquet file is only readable once its footer is written, so each
table streams into segments under <table>.partial/, one closed at every checkpoint: a resumed run drops
the segments after its checkpoint, as CSV tables are cut at their byte offset, and at the end the
segments' row groups are copied into the one final file (byte-identical to an uninterrupted run's).
"""
from __future__ import annotations

import csv
import errno
import importlib.util
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .core.patterns import label_name
from .core.populations import Populations

SUMMARY = "summary.json"
TABLES = ("metrics.csv", "agents.csv", "transcript.jsonl")
FORMATS = ("csv", "parquet", "auto")
EXTENSIONS = {"csv": {"metrics": ".csv", "agents": ".csv", "transcript": ".jsonl"},
              "parquet": {"metrics": ".parquet", "agents": ".parquet", "transcript": ".parquet"}}
# output.format=auto: Parquet from this many agent rows (B x n x T) on; agents.csv would pass ~40 MB there
AUTO_PARQUET_ROWS = 1_000_000
ROW_GROUP_ROWS = 100_000  # a row group holds whole steps, at least this many rows unless a segment ends


def resolve_format(fmt: str, agent_rows: int) -> str:
    """output.format -> 'csv' or 'parquet'; agent_rows: rows agents.csv would get (0 when not written)."""
    if fmt == "auto":
        fmt = "parquet" if agent_rows >= AUTO_PARQUET_ROWS else "csv"
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        from .errors import UserError
        raise UserError("output.format=parquet needs pyarrow, which is not installed (pip install pyarrow; "
                        "or output.format=csv)")
    return fmt


def table_path(directory: Path, name: str) -> Path | None:
    """The complete table `name` (metrics, agents, transcript) of a cell directory, in either format."""
    for fmt in ("csv", "parquet"):
        path = Path(directory) / (name + EXTENSIONS[fmt][name])
        if path.is_file():
            return path
    return None


def tmp_path(path: Path) -> Path:
    """Where a file is written before it is renamed into place (hidden, so a listing never shows half a file)."""
    return path.with_name(f".{path.name}.tmp")


def is_disk_full(e: BaseException) -> bool:
    """A write failed because the file system (or the user's quota) has no room left."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def open_table(path: Path, mode: str):
    """Every CSV/JSON Lines table is opened here (one place for tests to make writes fail)."""
    return open(path, mode, encoding="utf-8", newline="")


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Write data to path and fsync it, so that a rename after it never publishes a file whose bytes are
    still only in the page cache (a node that loses power would leave an empty or torn file)."""
    with open(path, "wb") as f:
        view = memoryview(data)
        while view:
            view = view[f.write(view):]
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    tmp = tmp_path(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv_atomic(path: Path, header: list[str], rows) -> None:
    tmp = tmp_path(path)
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / SUMMARY).is_file()


def cell_dirname(k: int, p: float) -> str:
    return f"k{k}_p{p:g}"


def cell_dir(keys, values) -> str:
    """A grid cell's directory from its swept keys' values: k5_p0.5, klinear25-1_p0.5, k5_p0.5_noise0.1."""
    return "_".join(f"{key}{v:g}" if isinstance(v, (int, float)) else f"{key}{v}" for key, v in zip(keys, values))


def _g(x) -> str:
    """A per-step value (k_t, p_t) as a short number: 5, 0.5, 4.6."""
    return f"{float(x):.6g}"


def agent_types(pops: Populations, members: list[int]) -> tuple[np.ndarray, list[str]] | None:
    """The member populations' agent types: (type index [R, n] int32, type names); None: one type, 'all'."""
    if pops.agent_type is None:
        return None
    return pops.agent_type[members].cpu().numpy().astype(np.int32), list(pops.type_names)


class CellWriter:
    """Streams one (k, p) cell's tables; its populations are the rows `members` of the batch."""

    def __init__(self, directory: Path, members: list[int], replicas: list[int], names: list[str],
                 kp: tuple | None, transcript: bool, agents: bool = True,
                 offsets: dict[str, int] | None = None, keys=("k", "p"), types=None):
        """offsets: when resuming, the byte size of each table at the checkpoint; later rows are cut.
        kp: the cell's values of `keys` (grid columns), None for a single cell; types: agent_types()."""
        self.dir = directory
        self.offsets = offsets
        self.dir.mkdir(parents=True, exist_ok=True)
        self.members, self.replicas, self.names, self.kp = members, replicas, names, kp
        self.types = types
        extra = list(keys) if kp else []
        self._files = {}
        self._metrics = self._open("metrics.csv", ["replica", "t", "stability", "entropy", "n_silos", "k_t", "p_t"]
                                   + extra)
        self._agents = self._open("agents.csv", ["replica", "t", "agent", "label", "label_name", "partner",
                                                 "mirrored", "type", "garbled"] + extra) if agents else None
        self._transcript = self._open_raw("transcript.jsonl") if transcript else None

    def _open_raw(self, name):
        path = self.dir / (name + ".partial")
        if self.offsets is None:
            f = open_table(path, "w")
        else:
            f = open_table(path, "r+")
            f.truncate(self.offsets[name])  # rows written after the checkpoint are redone
            f.seek(self.offsets[name])
        self._files[name] = f
        return f

    def _open(self, name, header):
        w = csv.writer(self._open_raw(name))
        if self.offsets is None:
            w.writerow(header)
        return w

    def tell(self) -> dict[str, int]:
        """Byte size of every table, after a flush: what a checkpoint records."""
        self.flush()
        return {name: f.tell() for name, f in self._files.items()}

    def write_step(self, t: int, labels, partner, mirrored, stability, entropy, n_silos, contexts, responses, n,
                   k_t=None, p_t=None, garbled=None):
        """k_t, p_t: [B] the step's k and p (agents' mean where they differ); garbled: [B, n] bool or None."""
        extra = list(self.kp) if self.kp else []
        for j, (b, r) in enumerate(zip(self.members, self.replicas)):
            s = "" if stability is None else f"{float(stability[b]):.6f}"
            kt = "" if k_t is None else _g(k_t[b])
            pt = "" if p_t is None else _g(p_t[b])
            self._metrics.writerow([r, t, s, f"{float(entropy[b]):.6f}", int(n_silos[b]), kt, pt] + extra)
            if self._agents is not None:
                lab, par, mir = labels[b].tolist(), partner[b].tolist(), mirrored[b].tolist()
                gar = [0] * n if garbled is None else garbled[b].int().tolist()
                typ = ["all"] * n if self.types is None else [self.types[1][c] for c in self.types[0][j].tolist()]
                self._agents.writerows([r, t, i, lab[i], label_name(lab[i], self.names), par[i], int(mir[i]), typ[i],
                                        gar[i]] + extra for i in range(n))
            if self._transcript is not None and responses is not None:
                base = b * n
                self._transcript.writelines(
                    json.dumps({"replica": r, "t": t, "agent": i, "context": contexts[base + i],
                                "response": responses[base + i]}, ensure_ascii=False) + "\n" for i in range(n))

    def flush(self):
        for f in self._files.values():
            f.flush()

    def close(self, summary: dict) -> None:
        """Rename the tables into place, then write summary.json last."""
        for name, f in self._files.items():
            f.close()
            os.replace(self.dir / (name + ".partial"), self.dir / name)
        write_json_atomic(self.dir / SUMMARY, summary)

    def cleanup(self) -> None:
        """Nothing is kept for a rewind once the run is complete (CSV tables are renamed, not copied)."""

    def rewind(self, offsets: dict[str, int] | None) -> None:
        """After a failed write (a full disk): cut every table back to its size at the last checkpoint
        (offsets; None: no checkpoint yet, tables left as they are) under its .partial name, and drop the
        cell's summary, so that resume=true continues from that checkpoint."""
        (self.dir / SUMMARY).unlink(missing_ok=True)
        for name, f in self._files.items():
            try:
                f.close()
            except OSError:  # its buffer could not be flushed: those rows are cut below anyway
                pass
            partial, final = self.dir / (name + ".partial"), self.dir / name
            if final.exists() and not partial.exists():  # renamed into place before the failure
                os.replace(final, partial)
            if offsets is not None and partial.exists():
                os.truncate(partial, offsets[name])


class ParquetTable:
    """One Parquet table streamed in row groups into segment files under <path>.partial/; a checkpoint
    closes the open segment (tell), resume drops the segments after it, close() joins them into path."""

    def __init__(self, path: Path, schema, segments: int | None = None):
        import pyarrow.parquet as pq

        self.pq, self.path, self.schema = pq, path, schema
        self.partial = path.with_name(path.name + ".partial")
        if segments is None:  # a fresh run: nothing stale may end up in the table
            shutil.rmtree(self.partial, ignore_errors=True)
        else:  # resume: segments written after the checkpoint are redone
            if len(self._segments()) < segments:  # joined or deleted since: resuming would drop rows
                from .errors import UserError
                raise UserError(f"cannot resume: {self.partial} holds {len(self._segments())} of the {segments} "
                                f"segments the checkpoint recorded")
            for seg in self._segments()[segments:]:
                seg.unlink()
        self.partial.mkdir(parents=True, exist_ok=True)
        self.done = len(self._segments())
        self.writer, self.buffer, self.buffered = None, [], 0

    def _segments(self) -> list[Path]:
        return sorted(self.partial.glob("seg-*.parquet")) if self.partial.is_dir() else []

    def append(self, columns: dict) -> None:
        """Rows of one step, as column arrays; a row group is written once enough rows are buffered."""
        import pyarrow as pa

        batch = pa.record_batch([columns[f.name] for f in self.schema], schema=self.schema)
        self.buffer.append(batch)
        self.buffered += batch.num_rows
        if self.buffered >= ROW_GROUP_ROWS:
            self._write_row_group()

    def _write_row_group(self) -> None:
        import pyarrow as pa

        if not self.buffered:
            return
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(self.partial / f"seg-{self.done:05d}.parquet", self.schema)
        self.writer.write_table(pa.Table.from_batches(self.buffer, self.schema), row_group_size=self.buffered)
        self.buffer, self.buffered = [], 0

    def tell(self) -> int:
        """Close the open segment (its footer makes it readable) -> complete segments: what a checkpoint records."""
        self._write_row_group()
        if self.writer is not None:
            self.writer.close()
            self.writer, self.done = None, self.done + 1
        return self.done

    def flush(self) -> None:
        """Row groups are written whole; a segment becomes readable at the next checkpoint."""

    def close(self) -> None:
        """Copy every segment's row groups, in order, into path (through a temporary file). The segments
        stay until cleanup(), so that a failure before the run completes can still rewind to them."""
        self.tell()
        tmp = tmp_path(self.path)
        try:
            with self.pq.ParquetWriter(tmp, self.schema) as out:
                for seg in self._segments():
                    f = self.pq.ParquetFile(seg)
                    for i in range(f.num_row_groups):
                        group = f.read_row_group(i)
                        out.write_table(group, row_group_size=max(1, group.num_rows))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path)

    def cleanup(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    def rewind(self, segments: int | None) -> None:
        """After a failed write: drop the joined file and the segments after the last checkpoint's."""
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass
            self.writer = None
        self.path.unlink(missing_ok=True)
        tmp_path(self.path).unlink(missing_ok=True)
        if segments is not None:
            for seg in self._segments()[segments:]:
                seg.unlink()


def _column_type(values):
    """Arrow type of a grid column: int64 / float64 for numbers, string where a value is a schedule's label."""
    import pyarrow as pa

    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pa.int64()
    return pa.float64() if all(isinstance(v, (int, float)) for v in values) else pa.string()


def _schemas(kp, names_type, keys=("k", "p")):
    import pyarrow as pa

    extra = [(key, _column_type([v])) for key, v in zip(keys, kp)] if kp else []
    return {
        "metrics": pa.schema([("replica", pa.int64()), ("t", pa.int64()), ("stability", pa.float64()),
                              ("entropy", pa.float64()), ("n_silos", pa.int64()), ("k_t", pa.float64()),
                              ("p_t", pa.float64())] + extra),
        "agents": pa.schema([("replica", pa.int64()), ("t", pa.int64()), ("agent", pa.int64()),
                             ("label", pa.int64()), ("label_name", names_type), ("partner", pa.int64()),
                             ("mirrored", pa.bool_()), ("type", names_type), ("garbled", pa.bool_())] + extra),
        "transcript": pa.schema([("replica", pa.int64()), ("t", pa.int64()), ("agent", pa.int64()),
                                 ("context", pa.string()), ("response", pa.string())] + extra),
    }


class ParquetCellWriter:
    """CellWriter's interface, writing Parquet tables (see the module's docstring)."""

    def __init__(self, directory: Path, members: list[int], replicas: list[int], names: list[str],
                 kp: tuple | None, transcript: bool, agents: bool = True,
                 offsets: dict[str, int] | None = None, keys=("k", "p"), types=None):
        """offsets: when resuming, the complete segments of each table at the checkpoint."""
        import pyarrow as pa

        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.members, self.replicas, self.names, self.kp, self.keys = members, replicas, names, kp, keys
        # agents' types, dictionary-encoded once: the same for every step
        self._types = pa.DictionaryArray.from_arrays(pa.array(types[0].ravel()), pa.array(types[1], pa.string())) \
            if types is not None else None
        # label_name by dictionary index: label + 1 (0 = unlabeled); one dictionary for every row group
        self._names = pa.array(["unlabeled"] + list(names), pa.string())
        schemas = _schemas(kp, pa.dictionary(pa.int32(), pa.string()), keys)
        wanted = ["metrics"] + (["agents"] if agents else []) + (["transcript"] if transcript else [])
        self._tables = {name: ParquetTable(self.dir / f"{name}.parquet", schemas[name],
                                           offsets[name] if offsets else None) for name in wanted}

    def _extra(self, rows: int) -> dict:
        if not self.kp:
            return {}
        dtypes = {"int64": np.int64, "double": np.float64, "string": object}
        return {key: np.full(rows, v, dtype=dtypes[str(_column_type([v]))]) for key, v in zip(self.keys, self.kp)}

    def write_step(self, t: int, labels, partner, mirrored, stability, entropy, n_silos, contexts, responses, n,
                   k_t=None, p_t=None, garbled=None):
        import pyarrow as pa

        m, R = self.members, len(self.members)
        replica = np.asarray(self.replicas, dtype=np.int64)
        s = pa.nulls(R, pa.float64()) if stability is None else stability[m].double().numpy()
        self._tables["metrics"].append(dict(replica=replica, t=np.full(R, t, dtype=np.int64), stability=s,
                                            entropy=entropy[m].double().numpy(),
                                            n_silos=n_silos[m].numpy().astype(np.int64),
                                            k_t=pa.nulls(R, pa.float64()) if k_t is None else k_t[m].double().numpy(),
                                            p_t=pa.nulls(R, pa.float64()) if p_t is None else p_t[m].double().numpy(),
                                            **self._extra(R)))
        rows = dict(replica=np.repeat(replica, n), t=np.full(R * n, t, dtype=np.int64),
                    agent=np.tile(np.arange(n, dtype=np.int64), R), **self._extra(R * n))
        if "agents" in self._tables:
            lab = labels[m].numpy().astype(np.int64).ravel()
            known = (lab >= 0) & (lab < len(self.names))
            name_idx = pa.array(np.where(known, lab + 1, 0).astype(np.int32))
            self._tables["agents"].append(dict(
                rows, label=lab, label_name=pa.DictionaryArray.from_arrays(name_idx, self._names),
                partner=partner[m].numpy().astype(np.int64).ravel(), mirrored=mirrored[m].numpy().astype(bool).ravel(),
                type=self._types if self._types is not None else pa.DictionaryArray.from_arrays(
                    pa.array(np.zeros(R * n, dtype=np.int32)), pa.array(["all"], pa.string())),
                garbled=np.zeros(R * n, dtype=bool) if garbled is None else garbled[m].numpy().astype(bool).ravel()))
        if "transcript" in self._tables and responses is not None:
            idx = [b * n + i for b in m for i in range(n)]
            self._tables["transcript"].append(dict(rows, context=pa.array([contexts[j] for j in idx], pa.string()),
                                                   response=pa.array([responses[j] for j in idx], pa.string())))

    def flush(self):
        for table in self._tables.values():
            table.flush()

    def tell(self) -> dict[str, int]:
        return {name: table.tell() for name, table in self._tables.items()}

    def close(self, summary: dict) -> None:
        """Join each table's segments into place, then write summary.json last."""
        for table in self._tables.values():
            table.close()
        write_json_atomic(self.dir / SUMMARY, summary)

    def cleanup(self) -> None:
        for table in self._tables.values():
            table.cleanup()

    def rewind(self, offsets: dict[str, int] | None) -> None:
        (self.dir / SUMMARY).unlink(missing_ok=True)
        for name, table in self._tables.items():
            table.rewind(offsets[name] if offsets is not None else None)


def _remove_other_format(directory: Path, fmt: str) -> None:
    """A fresh run (or overwrite=true) in the other format must not leave the old tables to be read."""
    other = "parquet" if fmt == "csv" else "csv"
    for name, ext in EXTENSIONS[other].items():
        for path in (directory / (name + ext), directory / (name + ext + ".partial")):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def make_cell_writers(run_dir: Path, pops: Populations, names: list[str], transcript: bool,
                      agents: bool = True, offsets: list[dict] | None = None, fmt: str = "csv") -> list:
    grid = len(pops.cells) > 1
    cls = ParquetCellWriter if fmt == "parquet" else CellWriter
    writers = []
    for c, values in enumerate(pops.cells):
        members = (pops.cell == c).nonzero().flatten().tolist()
        replicas = pops.replica[members].tolist()
        directory = run_dir / "cells" / cell_dir(pops.cell_keys, values) if grid else run_dir
        if not offsets:
            _remove_other_format(directory, fmt)
        writers.append(cls(directory, members, replicas, names, tuple(values) if grid else None, transcript, agents,
                           offsets[c] if offsets else None, pops.cell_keys, agent_types(pops, members)))
    return writers


def csv_row_bytes(values: list) -> int:
    """UTF-8 bytes of one CSV row holding these values, as csv.writer writes it."""
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return len(buf.getvalue().encode("utf-8"))


def transcript_row_bytes(text_bytes: float, replica: int, t: int, agent: int) -> float:
    """Bytes of one transcript.jsonl row whose context and response take text_bytes (JSON-escaped UTF-8)."""
    frame = json.dumps({"replica": replica, "t": t, "agent": agent, "context": "", "response": ""}) + "\n"
    return len(frame) + text_bytes


def table_bytes_estimate(pops: Populations, names: list[str], n: int, steps: int, t_end: int,
                         text_bytes: float | None, agents: bool) -> dict[str, int]:
    """Expected bytes of the agents and transcript tables for `steps` more steps (up to step t_end) of B
    populations of n agents, every row sized with the widest replica, t and agent numbers; text_bytes:
    a transcript row's context + response (None: no transcript). -> {"agents": bytes, "transcript": bytes}"""
    rows = pops.B * n * steps
    out = {}
    if agents:
        widest = [int(pops.replica.max()), t_end - 1, n - 1, len(names) - 1, max(names + ["unlabeled"], key=len),
                  n - 1, 0, max(list(pops.type_names or []) + ["all"], key=len), 0]
        grid = list(pops.cells[0]) if len(pops.cells) > 1 else []
        out["agents"] = rows * csv_row_bytes(widest + grid)
    if text_bytes is not None:
        out["transcript"] = round(rows * transcript_row_bytes(text_bytes, int(pops.replica.max()), t_end - 1, n - 1))
    return out


def check_room_for_tables(run_dir: Path, estimate: dict[str, int], rows: int, fmt: str, free: int) -> str:
    """-> the line that announces the tables' expected size; UserError when CSV/JSON Lines tables would not
    fit the `free` bytes of the output disk (Parquet compresses them: the estimate is then an upper bound)."""
    from .errors import UserError

    total = sum(estimate.values())
    sizes = ", ".join(f"{name + EXTENSIONS['csv'][name]} ~{human_bytes(size)}" for name, size in estimate.items())
    kind = "uncompressed: Parquet writes less" if fmt == "parquet" else "as CSV/JSON Lines"
    line = (f"[tensorsim] expected output size (an estimate, {kind}): {sizes} for {rows:,} agent rows; "
            f"{human_bytes(free)} free in {run_dir}")
    if fmt != "parquet" and total > free:
        raise UserError(f"the tables of this run would take about {human_bytes(total)} ({sizes}, an estimate) but "
                        f"{run_dir} has {human_bytes(free)} free: set output.transcript=false or "
                        f"output.format=parquet (or output.agents=false), or free space")
    return line


def human_bytes(size: float) -> str:
    """512 B, 12.3 kB, 4.6 MB, 7.9 GB (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size:.0f} B"


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds path (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def refuse_completed(run_dir: Path, overwrite: bool) -> None:
    from .errors import UserError

    if is_complete(run_dir) and not overwrite:
        raise UserError(f"run directory {run_dir} already holds a completed run; choose another hydra.run.dir "
                        f"or set overwrite=true")
    if overwrite and is_complete(run_dir):
        (run_dir / SUMMARY).unlink()


def parquet_batches(path: Path, columns: list[str], batch_size: int = 1 << 20):
    """Stream a Parquet table's columns in record batches (never the whole table) -> pyarrow RecordBatch.
    A file that is not Parquet, or lacks a column, is a one-line UserError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .errors import UserError

    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet table ({str(e).splitlines()[0]})") from None
    missing = [c for c in columns if c not in f.schema_arrow.names]
    if missing:
        raise UserError(f"{path}: expected the columns {', '.join(columns)} (missing: {', '.join(missing)})")
    yield from f.iter_batches(batch_size=batch_size, columns=columns)
