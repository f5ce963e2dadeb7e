"""Evaluation conditions: the student prompt of each condition, built from the config (pure).

- ``zero_shot``: the task header with label descriptions, no rules; ``zero_shot_bare``: label
  names only;
- ``few_shot``: plus ``few_shot_k`` train examples (seeded, stratified as far as k allows);
  ``few_shot_rules``: k = the number of examples the PLD prompt under test shows (one per rule
  with ``consolidate.exemplars``, plus its label examples; :func:`shown_examples`), else its
  number of rules;
- ``pld_cluster``, ``pld_selected``, ``pld_resolved``: the prompts of aliases ``clustered``,
  ``selected``, ``resolved`` (or, for an explicit ``--prompt-version``, condition ``pld``);
- ``cot``: the zero-shot prompt plus a short reasoning before the label.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

PLD_ALIASES = {"pld_cluster": "clustered", "pld_selected": "selected", "pld_resolved": "resolved"}
COT_INSTRUCTION = ("Before answering, think briefly: in one or two short sentences, say which group or topic the "
                   "input is about. Then give the label.")


@dataclass
class Condition:
    name: str
    prompt_version: str
    text: str
    kind: str
    token_count: int = 0
    note: str = ""
    shots: list[str] = field(default_factory=list)
    label_system: str = ""  # cot: the prompt the label is scored with after the reasoning


# ----------------------------------------------------------------------------- prompts per condition
def select_shots(train, k: int, labels: Sequence[str], seed: int) -> list[dict[str, str]]:
    """k train examples, stratified as far as k allows: labels in task order take turns, each
    label's rows ordered by sha256(seed:example_id). Deterministic for a seed.

    ``train`` is a pandas frame with example_id, input_text, label."""
    def order(eid: str) -> str:
        return hashlib.sha256(f"{seed}:{eid}".encode()).hexdigest()

    pools = {lab: sorted((r for r in train.to_dict("records") if r["label"] == lab), key=lambda r: order(r["example_id"]))
             for lab in labels}
    # Rotate the starting label by the seed so k < n_labels does not always favour the first labels.
    start = int(hashlib.sha256(str(seed).encode()).hexdigest(), 16) % max(1, len(labels))
    turn = list(labels[start:]) + list(labels[:start])
    out: list[dict[str, str]] = []
    while len(out) < k and any(pools.values()):
        for lab in turn:
            if pools[lab] and len(out) < k:
                out.append(pools[lab].pop(0))
    return out


def shown_examples(version, exemplars: bool) -> int:
    """Examples a PLD prompt version shows: one per rule when ``exemplars`` is on, plus its label
    examples (``example_ids``); its number of rules when it shows none (the k of
    ``few_shot_rules``)."""
    if version is None:
        return 0
    n = (len(version.rule_ids) if exemplars else 0) + len(version.example_ids)
    return n or len(version.rule_ids)


def _assembled(task, count_tokens, shots=(), bare_labels: bool = False):
    from pld_spark.prompts.student import FewShot, assemble

    return assemble(task, shots=[FewShot(s["input_text"], s["label"]) for s in shots], count_tokens=count_tokens,
                    bare_labels=bare_labels)


def build_conditions(cfg, count_tokens, train=None, pld: Mapping[str, Any] | None = None, n_rules: int = 0
                     ) -> tuple[list[Condition], dict[str, str]]:
    """The conditions to run, in config order, and the skipped ones with a reason. Pure.

    ``train``: pandas frame of train rows (for the shots); ``pld``: condition name -> the
    resolved prompt (:class:`pld_spark.prompts.versions.PromptRef`) or the reason it is missing;
    ``n_rules``: rules of the PLD prompt under test (the k of ``few_shot_rules``)."""
    from pld_spark.prompts.versions import version_id

    pld = pld or {}
    conds: list[Condition] = []
    skipped: dict[str, str] = {}
    names = list(cfg.evaluate.conditions)
    if "pld" in pld:  # an explicit --prompt-version replaces the alias conditions
        names = [n for n in names if n not in PLD_ALIASES] + ["pld"]
    for name in names:
        if name in ("zero_shot", "zero_shot_bare", "cot"):
            a = _assembled(cfg.task, count_tokens, bare_labels=name == "zero_shot_bare")
            text = a.text if name != "cot" else a.text + "\n\n" + COT_INSTRUCTION
            note = {"zero_shot": "", "zero_shot_bare": "label names without descriptions",
                    "cot": f"reasoning up to {cfg.evaluate.cot_max_tokens} tokens, then the label"}[name]
            conds.append(Condition(name, version_id(text), text, "zero_shot" if name != "cot" else "cot",
                                   count_tokens(text), note, label_system=a.text))
        elif name in ("few_shot", "few_shot_rules"):
            k = cfg.evaluate.few_shot_k if name == "few_shot" else n_rules
            if train is None or len(train) == 0 or not k:
                skipped[name] = "no train examples for the shots" if k else "no PLD prompt to take k from"
                continue
            shots = select_shots(train, k, cfg.task.label_names, cfg.evaluate.seed)
            a = _assembled(cfg.task, count_tokens, shots)
            conds.append(Condition(name, a.version, a.text, "few_shot", a.token_count,
                                   f"k={len(shots)} (seed {cfg.evaluate.seed})", [s["example_id"] for s in shots]))
        else:
            ref = pld.get(name)
            if ref is None or isinstance(ref, str):
                skipped[name] = ref or f"no prompt for {name}"
                continue
            conds.append(Condition(name, ref.version, ref.text, ref.kind or name, count_tokens(ref.text),
                                   f"alias '{ref.alias}'" if ref.alias else f"prompt version {ref.version}"))
    return conds, skipped


def resolve_pld(versions, prompt_version: str | None = None) -> dict[str, Any]:
    """condition -> resolved PLD prompt, or the reason it cannot be evaluated (the aliases of
    ``PLD_ALIASES``, or ``pld`` for an explicit version/alias)."""
    from pld_spark.prompts.versions import PromptNotFoundError

    refs = {"pld": prompt_version} if prompt_version else dict(PLD_ALIASES)
    out: dict[str, Any] = {}
    for name, ref in refs.items():
        try:
            out[name] = versions.resolve(ref)
        except PromptNotFoundError as e:
            if prompt_version:
                raise
            out[name] = f"{e} (run `pld distill` first)"
    return out


#: figures measured while scoring (time, prefix cache); a reused condition did not measure them
MEASURED_KEYS = ("latency_p50", "latency_p95", "latency_mean", "latency_first", "prefix_hit_rate",
                 "prefix_reused_share", "prefix_reused_mean", "wall_s")


def reuse_plan(conds: Sequence[Condition]) -> dict[str, str]:
    """condition -> the earlier condition it reuses, for conditions whose prompt version was
    already scored in this evaluation (e.g. ``pld_resolved`` when the conflict loop kept the
    clustered prompt). Scoring the same prompt twice would only measure the caches (a cached
    answer or a fully reused KV prefix takes ~0 ms), so it is scored once. ``cot`` scores
    differently from the same prompt and is never merged with a non-cot condition."""
    first: dict[tuple[str, bool], str] = {}
    plan: dict[str, str] = {}
    for c in conds:
        key = (c.prompt_version, c.name == "cot")
        if key in first:
            plan[c.name] = first[key]
        else:
            first[key] = c.name
    return plan


def reused_result(source: dict[str, Any], cond: Condition) -> dict[str, Any]:
    """The result entry of ``cond``, reusing ``source``'s (same prompt): quality figures are
    copied (same prompt, student and inputs give the same predictions); figures measured while
    scoring are None, never a 0 that was not measured."""
    note = f"same prompt as {source['condition']}; figures reused"
    out = {**source, "condition": cond.name, "kind": cond.kind, "reused_from": source["condition"],
           "note": "; ".join(x for x in (cond.note, note) if x)}
    out.update(dict.fromkeys(MEASURED_KEYS))
    return out


def baseline_versions(task: str, conds: Sequence[Condition], run_id: str) -> list:
    """The zero/few-shot/cot prompts as prompt versions (so every prediction's version resolves)."""
    from pld_spark.prompts.versions import PromptVersion

    return [PromptVersion(task=task, kind=c.kind, text=c.text, example_ids=tuple(c.shots),
                          token_count=int(c.token_count), run_id=run_id, prompt_version=c.prompt_version)
            for c in conds if c.kind in ("zero_shot", "few_shot", "cot")]


