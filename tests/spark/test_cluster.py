"""cluster on local Spark + Delta: every clusterer from config, noise kept as -1."""
import json

import pytest

from pld_spark.pipeline import cluster
from tests.distill_fakes import seed_examples, seed_micro, synthetic_examples

pytestmark = pytest.mark.spark


def test_all_four_clusterers_run_from_config_and_noise_is_kept(make_ctx):
    base = make_ctx("stereoset.yaml")
    rows = synthetic_examples(5, "train")
    odd = [{"example_id": f"train-odd-{i}", "label": "race", "split": "train", "text": t, "input_text": t}
           for i, t in enumerate(["Weather reports about hail storms.", "Quantum gluon lattice spacing."])]
    seed_examples(base, rows + odd + synthetic_examples(1, "val"))
    seed_micro(base, rows + odd, invalid_ids=["train-gender-4"])
    # the seeded odd rules have no keyword: make them outliers
    base.store.spark.sql(f"UPDATE delta.`{base.store.location('micro_instructions')}` SET rule = CASE "
                         "WHEN example_id = 'train-odd-0' THEN 'Sourdough bread needs flour water salt, race' "
                         "ELSE 'Gluon lattice chromodynamics spacing, race' END WHERE example_id LIKE 'train-odd-%'")
    seen = {}
    for kind in ("dbscan", "hdbscan", "kmeans", "agglomerative"):
        # TF-IDF at eps 0.4: the seeded keyword rules fall into 4 groups and the odd ones are noise
        # (the default embedder, MiniLM, in a real cluster run: tests/integration/test_embedder_minilm.py)
        ctx = make_ctx("stereoset.yaml", [f"cluster.clusterer.type={kind}", "cluster.clusterer.min_samples=3",
                                          "cluster.clusterer.eps=0.4", "cluster.embedder.type=tfidf_svd",
                                          "cluster.clusterer.n_clusters=4", "cluster.group_by=null"])
        counts = cluster.run(ctx)
        got = ctx.store.read("instruction_clusters").where(f"cluster_run_id = '{ctx.run_id}'").collect()
        seen[kind] = got
        assert counts["rules"] == len(got) == 21  # 22 rules, one invalid left out
        assert "train-gender-4" not in {r.example_id for r in got}
        assert all(r.clusterer == kind and r.embedder == "tfidf_svd(dims=64)" for r in got)
        assert json.loads(got[0].params)["clusterer"]
        real = [r for r in got if r.cluster_id >= 0]
        assert real and all(r.cluster_size >= 1 and 0 < r.label_purity <= 1 and r.dist_to_centroid >= 0 for r in real)
        if kind in ("dbscan", "hdbscan"):
            noise = {r.example_id for r in got if r.cluster_id == -1}
            assert {"train-odd-0", "train-odd-1"} <= noise and counts["noise"] == len(noise)
        else:
            assert counts["noise"] == 0 and counts["clusters"] == 4
    # each clustering is its own run: all four coexist in the table
    assert base.store.read("instruction_clusters").select("cluster_run_id").distinct().count() == 4
