"""Embedders and clusterers from config (no Spark)."""
import numpy as np
import pandas as pd
import pytest

from pld_spark.config import ClusterConfig
from pld_spark.errors import ConfigError
from pld_spark.pipeline.cluster import transform
from pld_spark.pipeline.clusterers import CLUSTERERS, cluster_matrix, params
from pld_spark.pipeline.embedders import ClientEmbedder, TfidfSvdEmbedder, build_embedder
from tests.distill_fakes import CATEGORY, KEYWORDS


def rules_frame(n_per_label=6, outliers=2):
    rows = []
    for lab, words in KEYWORDS.items():
        for i in range(n_per_label):
            kw = words[i % len(words)]
            rows.append({"micro_id": f"m-{lab}-{i}", "example_id": f"e-{lab}-{i}", "label": lab,
                         "rule": f"If the input mentions '{kw}' ({CATEGORY[lab]}), the label is {lab}."})
    odd = ["Weather reports about hail storms and sunny beaches.", "Quantum chromodynamics gluon lattice spacing.",
           "Sourdough bread needs flour water salt starter."]
    for i in range(outliers):
        rows.append({"micro_id": f"m-odd-{i}", "example_id": f"e-odd-{i}", "label": "race", "rule": odd[i]})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1)


def test_tfidf_svd_is_normalised_and_handles_tiny_inputs():
    x = TfidfSvdEmbedder(dims=8)(["a b c", "a b d", "x y z", "x y w"])
    assert x.shape == (4, 3) and np.allclose(np.linalg.norm(x, axis=1), 1.0)
    assert TfidfSvdEmbedder(8)(["only one"]).shape[0] == 1
    assert TfidfSvdEmbedder(8)([]).shape[0] == 0


@pytest.mark.parametrize("kind", ["dbscan", "hdbscan", "kmeans", "agglomerative"])
def test_every_clusterer_runs_from_config(kind):
    cfg = ClusterConfig.model_validate({"clusterer": {"type": kind, "eps": 0.4, "min_samples": 3, "n_clusters": 4},
                                        "group_by": None, "central_fallback": False,
                                        "embedder": {"type": "tfidf_svd", "condition_only": False}})
    out, used = transform(rules_frame(), cfg, build_embedder(cfg.embedder))
    assert set(used) == {"all"} and used["all"]["rules"] == 26
    assert len(out) == 26 and list(out.micro_id) == sorted(out.micro_id)
    real = out[out.cluster_id >= 0]
    assert real.cluster_id.nunique() >= 2
    assert (real.label_purity > 0).all() and (real.dist_to_centroid >= 0).all() and (real.cluster_size >= 1).all()
    if kind in ("dbscan", "hdbscan"):
        noise = out[out.cluster_id == -1]
        assert set(noise.micro_id) >= {"m-odd-0", "m-odd-1"}
        assert noise.cluster_size.isna().all() and noise.label_purity.isna().all()
    else:
        assert (out.cluster_id >= 0).all() and real.cluster_id.nunique() == 4
    # deterministic
    again, _ = transform(rules_frame().sample(frac=1.0, random_state=9), cfg, build_embedder(cfg.embedder))
    assert list(again.cluster_id) == list(out.cluster_id)
    assert params(cfg.clusterer)


def test_dbscan_groups_rules_by_label():
    cfg = ClusterConfig.model_validate({"clusterer": {"type": "dbscan", "eps": 0.4, "min_samples": 3},
                                        "group_by": None, "embedder": {"type": "tfidf_svd", "condition_only": False}})
    out, _ = transform(rules_frame(outliers=0), cfg, build_embedder(cfg.embedder))
    assert out.cluster_id.nunique() == 4 and (out.label_purity == 1.0).all()


def test_group_by_label_never_silences_a_label():
    """A label whose few rules DBSCAN calls noise still gets a cluster, around its most central rule."""
    df = rules_frame(outliers=0)
    df = df[(df.label != "religion") | df.micro_id.isin(["m-religion-0", "m-religion-3"])]  # 2 rules only
    cfg = ClusterConfig.model_validate({"clusterer": {"type": "dbscan", "eps": 0.4, "min_samples": 3},
                                        "embedder": {"type": "tfidf_svd", "condition_only": False}})
    out, used = transform(df, cfg, build_embedder(cfg.embedder), "label")
    assert set(used) == {"gender", "profession", "race", "religion"}
    rel = out[out.label == "religion"]
    assert (rel.cluster_id >= 0).all() and set(rel.assignment) == {"central_fallback"}
    assert used["religion"]["fallback"] == "central" and "fallback" not in used["race"]
    assert out.groupby("cluster_id").group_key.nunique().max() == 1  # clusters never span groups
    off = ClusterConfig.model_validate({"clusterer": {"type": "dbscan", "eps": 0.4, "min_samples": 3},
                                        "central_fallback": False,
                                        "embedder": {"type": "tfidf_svd", "condition_only": False}})
    out2, _ = transform(df, off, build_embedder(off.embedder), "label")
    assert (out2[out2.label == "religion"].cluster_id == -1).all()


def test_dbscan_chooses_eps_from_the_data_and_records_it():
    cfg = ClusterConfig.model_validate({"clusterer": {"type": "dbscan"}, "group_by": "label",
                                        "embedder": {"type": "tfidf_svd"}})
    out, used = transform(rules_frame(n_per_label=12, outliers=0), cfg, build_embedder(cfg.embedder), "label")
    for key, u in used.items():
        assert u["eps_from"] == "k-distance knee" and 0.05 <= u["eps"] <= 0.8 and u["min_samples"] == 2
    assert (out.cluster_id >= 0).mean() > 0.5


def test_group_by_an_examples_column():
    df = rules_frame(outliers=0)
    df["pair"] = ["h1" if i % 2 else "h2" for i in range(len(df))]
    cfg = ClusterConfig.model_validate({"clusterer": {"type": "kmeans", "n_clusters": 2}, "group_by": "pair",
                                   "embedder": {"type": "tfidf_svd"}})
    out, used = transform(df, cfg, build_embedder(cfg.embedder), "pair")
    assert set(used) == {"h1", "h2"} and out.cluster_id.nunique() == 4
    assert set(out.group_key) == {"h1", "h2"}


def test_per_label_ids_are_unique_and_pure():
    cfg = ClusterConfig.model_validate({"group_by": "label", "clusterer": {"type": "kmeans", "n_clusters": 2},
                                   "embedder": {"type": "tfidf_svd"}})
    out, _ = transform(rules_frame(), cfg, build_embedder(cfg.embedder), "label")
    assert out.cluster_id.nunique() == 8 and (out.label_purity == 1.0).all()
    assert out.groupby("cluster_id").label.nunique().max() == 1


def test_small_and_empty_inputs():
    cfg = ClusterConfig.model_validate({"central_fallback": False, "clusterer": {"min_samples": 6},
                                        "embedder": {"type": "tfidf_svd"}})
    one, _ = transform(rules_frame().head(1), cfg, build_embedder(cfg.embedder), "label")
    assert list(one.cluster_id) == [-1]
    with_fallback, _ = transform(rules_frame().head(1), ClusterConfig(), build_embedder(cfg.embedder), "label")
    assert list(with_fallback.cluster_id) == [0] and list(with_fallback.assignment) == ["central_fallback"]
    empty, _ = transform(rules_frame().head(0), cfg, build_embedder(cfg.embedder))
    assert len(empty) == 0 and "cluster_id" in empty.columns
    labels, _ = cluster_matrix(np.eye(3), ClusterConfig.model_validate(
        {"clusterer": {"type": "hdbscan", "min_samples": 5}}).clusterer)
    assert list(labels) == [-1] * 3
    assert set(CLUSTERERS) == {"dbscan", "hdbscan", "kmeans", "agglomerative"}


def test_embedder_errors_are_config_errors():
    with pytest.raises(ConfigError, match="no embed"):
        ClientEmbedder(object())
    with pytest.raises(ConfigError, match="base_url"):
        build_embedder(ClusterConfig.model_validate({"embedder": {"type": "openai"}}).embedder)
