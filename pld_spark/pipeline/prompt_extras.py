"""What consolidate adds to a prompt beside the cluster rules, read from the train split: the
label examples (:mod:`pld_spark.prompts.examples`) and the group prior rules
(:mod:`pld_spark.prompts.priors`). Not a stage: :mod:`pld_spark.pipeline.consolidate` calls it.
"""
from __future__ import annotations

import logging

from pld_spark.prompts.rules import Rule

log = logging.getLogger("pld_spark.pipeline.consolidate")  # its lines are consolidate's


def label_examples(ctx) -> list[dict]:
    """The label examples of the prompt (:mod:`pld_spark.prompts.examples`): the medoids of
    ``consolidate.label_examples`` k-means groups of each label's train inputs, embedded with
    ``cluster.embedder`` (without its condition-only wrapper: inputs are not rules), with the raw
    ``text`` of the chosen ones only (:data:`~pld_spark.prompts.examples.SHOT_COLUMNS`); [] when 0."""
    from pld_spark.pipeline.embedders import build_embedder
    from pld_spark.prompts.examples import label_medoids
    from pld_spark.storage import readers

    cfg = ctx.cfg
    ecfg = cfg.cluster.embedder
    if not cfg.consolidate.label_examples:
        return []
    client = ctx.teacher if ecfg.type == "llamacpp" and not ecfg.model else None  # as pld cluster embeds rules
    embed = build_embedder(ecfg.model_copy(update={"condition_only": False}), client=client,
                           seed=cfg.cluster.clusterer.seed)
    rows = readers.example_rows(ctx, "train", ("example_id", "input_text", "label", "pair"))
    chosen = label_medoids(rows, embed, cfg.task.label_names, cfg.consolidate.label_examples, seed=cfg.consolidate.seed)
    texts = readers.example_texts(ctx, "train", [r["example_id"] for r in chosen])
    chosen = [{**r, "text": texts.get(r["example_id"])} for r in chosen]
    log.info("consolidate: %d label examples (%d per label)", len(chosen), cfg.consolidate.label_examples)
    return chosen


def group_prior_rules(ctx) -> list[Rule]:
    """:func:`pld_spark.prompts.priors.prior_rules` of the train split when ``consolidate.group_priors`` is on
    and ``cluster.group_by`` names an examples column (not 'label': its prior is no rule)."""
    from pld_spark.prompts.priors import prior_rules
    from pld_spark.storage import readers

    cfg, col = ctx.cfg, ctx.cfg.cluster.group_by
    if not cfg.consolidate.group_priors or col in (None, "label"):
        return []
    rows = readers.example_rows(ctx, "train", ("example_id", "label", col))
    return prior_rules(rows, col, cfg.task.label_names, cfg.consolidate.group_priors, cfg.task.input_template)
