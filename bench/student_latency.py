"""Student latency benchmark: per-example latency and throughput of the student (in-process
llama.cpp, the embedded model by default) for five ways of asking it, in one process:

- ``zero_shot``: task header + labels, constrained label scoring;
- ``pld_reuse``: a realistic PLD rule prompt (``--rule-tokens``, default ~1,100 tokens) with the
  backend's KV prefix reuse (the shared rule prompt is prefilled once, then only each input);
- ``pld_no_reuse``: the same prompt with reuse switched off (``student.extra.prefix_reuse:
  false``: every request prefills the whole prompt; ``--noreuse-mode reset`` instead calls
  ``Llama.reset()`` before each request), i.e. what a backend without prefix caching pays;
- ``cot``: the zero-shot prompt plus a "think briefly" instruction; the student generates up
  to ``--cot-tokens`` (64) tokens of reasoning, then the label is scored over input + reasoning
  (:func:`pld_spark.pipeline.evaluate.cot_batch`, the product's CoT path). The tiny model
  usually stops after a dozen tokens, so
- ``cot_forced``: the same, but end-of-turn tokens are banned (``logit_bias``) so exactly
  ``--cot-tokens`` reasoning tokens are generated (llama.cpp directly), then the same label
  scoring: the latency of a CoT that really writes ~64 tokens.

Conditions run interleaved in ``--rounds`` rounds so load drift on a shared machine hits all
of them; each round starts cold for its condition (the previous condition's prompt is in the
KV cache), so the first request of each round is reported apart (``first_s``) and the steady
state excludes it. Ratios (PLD/zero-shot, CoT/PLD, ...) use steady-state mean latency.

The PLD prompt is assembled by :func:`pld_spark.prompts.student.assemble` from synthetic,
hand-written rules for the task (``--prompt-file`` uses any text file as the system prompt
instead, e.g. a distilled prompt from ``pld prompt show``).

    .venv/bin/python bench/student_latency.py --threads 2 --n 16 --n-noreuse 6

Writes ``bench/results/student_latency.json``.
"""
from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Timer, add_config_args, load_cfg, loadavg, model_facts, pct, text_table, write_result)

log = logging.getLogger("bench.student_latency")

# Synthetic rules in the shape the teacher writes them ("If <condition>, the label is X.").
RULES = {
    "stereoset": {
        "gender": [
            "If the sentence is about mothers, fathers, wives, husbands, sisters, brothers or other family roles "
            "defined by sex, the label is gender.",
            "If the target is a gendered word such as 'gentlemen', 'ladies', 'schoolgirl', 'schoolboy', 'male' or "
            "'female' and the sentence describes traits attributed to that group, the label is gender.",
            "If the sentence attributes emotions, caring, weakness, strength or household duties to men or women as "
            "a group, the label is gender.",
            "If the blank is filled with an adjective about appearance or temperament of a girl, boy, woman or man, "
            "and no occupation or nationality is named, the label is gender.",
            "If the context mentions a grandmother, grandfather, bride, groom or stepfather and the sentence says "
            "what such people are like, the label is gender.",
            "If pronouns 'she' or 'he' refer back to a gendered target and the filled word describes typical "
            "behaviour of that sex, the label is gender.",
            "If the sentence contrasts what men do with what women do (sports, cooking, driving, crying), "
            "the label is gender.",
            "If the sentence is about a gentleman or lady and mentions manners, chivalry or politeness, "
            "the label is gender.",
        ],
        "profession": [
            "If the target is an occupation (nurse, engineer, plumber, chess player, software developer, "
            "politician, prosecutor) and the sentence describes people in that job, the label is profession.",
            "If the filled word describes intelligence, income, honesty or work habits of a worker named by their "
            "job title, the label is profession.",
            "If the context is set at a workplace (office, hospital, court, construction site, studio) and the "
            "sentence characterises the employee, the label is profession.",
            "If the sentence is about a manager, CEO, banker, lawyer or accountant and their wealth or greed, "
            "the label is profession.",
            "If the sentence describes a performing artist, musician, dancer or producer and their lifestyle, "
            "the label is profession.",
            "If the target is a scientist, physicist, mathematician or researcher and the sentence talks about "
            "being nerdy, smart or socially awkward, the label is profession.",
            "If the sentence describes a soldier, guard, police officer or firefighter as brave, aggressive or "
            "strong, the label is profession.",
            "If the sentence is about a tailor, cook, butcher, delivery man, mover or other manual trade and its "
            "skill or education, the label is profession.",
        ],
        "race": [
            "If the target is a country, nationality or ethnic group (e.g. a people of Africa, Asia, Europe, the "
            "Middle East or Latin America) and the sentence describes that people, the label is race.",
            "If the sentence describes the climate, poverty, food, war or politics of a named country and what its "
            "inhabitants are like, the label is race.",
            "If the filled word is an adjective about skin colour, accent, immigrants or refugees, the label is "
            "race.",
            "If the context names a region such as a continent, a desert country or an island nation and the "
            "sentence generalises about the people living there, the label is race.",
            "If the sentence talks about a family or neighbour 'from' a foreign country and their habits, "
            "the label is race.",
            "If the target is an adjective of nationality (e.g. 'the Ethiopian', 'the Norwegian') used as a noun "
            "for a person, the label is race.",
            "If the sentence is about terrorism, crime or danger attributed to people of a country or ethnicity, "
            "and not to a faith, the label is race.",
            "If the sentence describes the cuisine, music or dress of a nation as typical of its people, "
            "the label is race.",
        ],
        "religion": [
            "If the target is a religion or its followers (Muslim, Christian, Jewish, Hindu, Buddhist, Brahmin) "
            "and the sentence describes their beliefs or behaviour, the label is religion.",
            "If the sentence mentions a holy book, church, mosque, temple, prayer, priest or imam, the label is "
            "religion.",
            "If the filled word describes a believer as devout, extreme, peaceful, judgmental or violent because "
            "of their faith, the label is religion.",
            "If the context is a religious holiday or ritual and the sentence generalises about those who practise "
            "it, the label is religion.",
            "If the target is 'Bible' or a scripture and the sentence says what it teaches or how people read it, "
            "the label is religion.",
            "If the sentence is about converts, missionaries, atheists or religious schools, the label is "
            "religion.",
            "If the sentence is about terrorism or violence attributed to a faith rather than to a country, "
            "the label is religion.",
            "If the sentence says what a follower of a faith eats, wears or is forbidden to do, the label is "
            "religion.",
        ],
    },
    "contractnli": {
        "Entailment": [
            "If a clause of the contract states the obligation described in the hypothesis in the same or stronger "
            "terms, the label is Entailment.",
            "If the contract defines confidential information to include the kind of information named in the "
            "hypothesis (oral, visual, technical, business), the label is Entailment.",
            "If the contract allows the receiving party to share information with employees, advisers or "
            "affiliates who need to know it, and the hypothesis says so, the label is Entailment.",
            "If the contract requires the return or destruction of confidential information on request or at "
            "termination, and the hypothesis states that, the label is Entailment.",
            "If the contract says obligations survive termination for a period and the hypothesis says some "
            "obligations continue after the agreement ends, the label is Entailment.",
            "If the contract permits disclosure required by law or court order, usually with notice, and the "
            "hypothesis says compelled disclosure is allowed, the label is Entailment.",
        ],
        "Contradiction": [
            "If a clause of the contract states the opposite of the hypothesis (forbids what it allows or allows "
            "what it forbids), the label is Contradiction.",
            "If the contract says no licence or right is granted and the hypothesis says the receiving party gets "
            "a licence, the label is Contradiction.",
            "If the contract lets the receiving party keep copies (for legal or archival purposes) and the "
            "hypothesis says all copies must be destroyed, the label is Contradiction.",
            "If the contract limits disclosure to named persons and the hypothesis says the party may share with "
            "anyone, the label is Contradiction.",
            "If the contract states that the agreement does not restrict independent development and the "
            "hypothesis says it does, the label is Contradiction.",
            "If the contract excludes information that is already public from confidentiality and the hypothesis "
            "says public information stays confidential, the label is Contradiction.",
        ],
        "NotMentioned": [
            "If no clause of the contract deals with the subject of the hypothesis, the label is NotMentioned.",
            "If the contract discusses a related topic but never decides the specific point of the hypothesis, "
            "the label is NotMentioned.",
            "If the hypothesis is about solicitation of employees, reverse engineering or notice of breach and the "
            "contract has no such clause, the label is NotMentioned.",
            "If the retrieved contract text is about payment, governing law or signatures only, the label is "
            "NotMentioned.",
            "If the hypothesis depends on a definition the contract never gives, the label is NotMentioned.",
            "If the contract only says the parties will negotiate later about the point in the hypothesis, "
            "the label is NotMentioned.",
        ],
    },
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (student.n_threads)")
    ap.add_argument("--n", type=int, default=16, help="examples per condition (zero_shot, pld_reuse, cot)")
    ap.add_argument("--n-noreuse", type=int, default=6, help="examples for pld_no_reuse (each prefills the prompt)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each condition's n split over them)")
    ap.add_argument("--rule-tokens", type=int, default=1100, help="token budget of the synthetic PLD prompt")
    ap.add_argument("--prompt-file", default=None, help="use this file's text as the PLD system prompt")
    ap.add_argument("--cot-tokens", type=int, default=64, help="reasoning tokens generated per example in cot")
    ap.add_argument("--noreuse-mode", choices=["switch", "reset"], default="switch",
                    help="switch: client option extra.prefix_reuse=false; reset: Llama.reset() before each request")
    ap.add_argument("--conditions", default="zero_shot,pld_reuse,pld_no_reuse,cot,cot_forced")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--name", default="student_latency")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def sample_inputs(cfg, n: int, seed: int) -> list[str]:
    """``n`` rendered inputs of the configured dataset (input policy applied, as ingest does)."""
    from pld_spark.data.input_policy import apply_policy, render_input
    from pld_spark.data.loaders import load_dataset

    rows = [r for r in load_dataset(cfg.dataset).rows if r.get("text")]
    random.Random(seed).shuffle(rows)
    pol = cfg.input_policy
    splitter = pol.splitter if pol.splitter != "spark_nlp" else "regex"
    out = []
    for r in rows[:n]:
        body = apply_policy(r["text"], r.get("pair"), pol.mode, pol.max_tokens, pol.chars_per_token, None, splitter)
        out.append(render_input(body, r.get("pair"), cfg.task.input_template))
    return out


def pld_prompt(cfg, count_tokens, budget: int, prompt_file: str | None):
    from pld_spark.prompts.student import PromptRule, assemble

    if prompt_file:
        text = Path(prompt_file).read_text(encoding="utf-8")
        return text, {"source": prompt_file, "rules": None, "token_count": count_tokens(text)}
    rules_by_label = RULES.get(cfg.task.name)
    if rules_by_label is None:  # any other task: rules built from the label descriptions
        rules_by_label = {lab.name: [f"If the input is {lab.description or lab.name} (variant {i}), the label is "
                                     f"{lab.name}." for i in range(1, 9)] for lab in cfg.task.labels}
    rules = [PromptRule(rule_id=f"syn-{lab}-{i}", label=lab, instruction=txt, support=100 - i)
             for lab, texts in rules_by_label.items() for i, txt in enumerate(texts)]
    a = assemble(cfg.task, rules, count_tokens=count_tokens, token_budget=budget)
    return a.text, {"source": "synthetic rules (bench/student_latency.py RULES)", "rules": len(a.rule_ids),
                    "dropped": len(a.dropped_rule_ids), "token_count": a.token_count, "token_budget": budget}


def run_condition(name, client, system, inputs, labels, calibration, cot_tokens, noreuse_reset):
    """Score ``inputs`` one request at a time; returns per-example latencies and token counts."""
    import pandas as pd

    from pld_spark.pipeline.evaluate import cot_batch

    lat, tin, tout, reused = [], [], [], []
    t0 = time.perf_counter()
    if name == "cot":
        batch = pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(inputs))], "input_text": inputs})
        res = cot_batch(client, batch, system, labels, calibration, cot_tokens, run_id=uuid.uuid4().hex)
        lat = [float(x) for x in res["latency_s"]]
        tin = [int(x or 0) for x in res["tokens_in"]]
        tout = [int(x or 0) for x in res["tokens_out"]]
        reused = [int(x or 0) for x in res["prefix_reused_tokens"]]
        errors = int(res["error"].notna().sum())
    elif name == "cot_forced":
        errors = 0
        m = client.model
        ban = {int(t): -1e9 for t in {m.llama.token_eos(), *m.llama.tokenize(b"<|im_end|>", add_bos=False, special=True),
                                      *m.llama.tokenize(b"<|endoftext|>", add_bos=False, special=True)}}
        for x in inputs:
            t1 = time.perf_counter()
            with m.lock:
                out = m.llama.create_chat_completion(
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": x}],
                    max_tokens=cot_tokens, temperature=0.0, seed=0, logit_bias=ban)
            usage = out.get("usage") or {}
            reasoning = ((out.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
            r = client.classify(system, [f"{x}\nReasoning: {reasoning.strip()}"], labels, calibration=calibration)[0]
            lat.append(time.perf_counter() - t1)
            tin.append(int(usage.get("prompt_tokens", 0)) + r.tokens_in)
            tout.append(int(usage.get("completion_tokens", 0)))
            reused.append(r.prefix_reused_tokens)
            errors += r.error is not None
    else:
        errors = 0
        for x in inputs:
            if noreuse_reset:
                client.model.llama.reset()  # drop the KV state: the next eval starts from token 0
            t1 = time.perf_counter()
            r = client.classify(system, [x], labels, calibration=calibration)[0]
            lat.append(time.perf_counter() - t1)
            tin.append(r.tokens_in)
            tout.append(r.tokens_out)
            reused.append(r.prefix_reused_tokens)
            errors += r.error is not None
    return {"latency_s": lat, "tokens_in": tin, "tokens_out": tout, "prefix_reused": reused, "errors": errors,
            "wall_s": time.perf_counter() - t0}


def summarise(name: str, parts: list[dict]) -> dict:
    lat_all = [x for p in parts for x in p["latency_s"]]
    steady = [x for p in parts for x in p["latency_s"][1:]]
    first = [p["latency_s"][0] for p in parts if p["latency_s"]]
    tin = [x for p in parts for x in p["tokens_in"]]
    tout = [x for p in parts for x in p["tokens_out"]]
    reused = [x for p in parts for x in p["prefix_reused"]]
    wall = sum(p["wall_s"] for p in parts)
    n = len(lat_all)
    steady_or_all = steady or lat_all
    return {"condition": name, "n": n, "mean_s": statistics.fmean(steady_or_all) if steady_or_all else None,
            "p50_s": pct(steady_or_all, 50), "p95_s": pct(steady_or_all, 95),
            "first_s_mean": statistics.fmean(first) if first else None, "mean_all_s": statistics.fmean(lat_all) if n else None,
            "throughput_per_s": n / wall if wall else None, "wall_s": round(wall, 2),
            "prompt_tokens_mean": statistics.fmean(tin) if tin else None,
            "output_tokens_mean": statistics.fmean(tout) if tout else None,
            "prefix_reused_share": (sum(reused) / sum(tin)) if sum(tin) else 0.0,
            "errors": sum(p["errors"] for p in parts), "latencies_s": [round(x, 4) for x in lat_all]}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    started = time.perf_counter()
    from pld_spark.config import with_overrides
    from pld_spark.llm.registry import build_client
    from pld_spark.pipeline.evaluate import COT_INSTRUCTION
    from pld_spark.prompts.student import assemble

    cfg = load_cfg(args.config, args.set)
    if cfg.student.type != "llamacpp":
        log.warning("student type %s: prefix reuse is the server's business; pld_no_reuse is not meaningful",
                    cfg.student.type)
    cfg = with_overrides(cfg, {"student.n_threads": args.threads, "student.cache": False})
    labels = cfg.task.label_names
    reuse = build_client(cfg.student, role="student")
    noreuse_cfg = cfg.student.model_copy(update={"extra": {**cfg.student.extra, "prefix_reuse": False}})
    noreuse = reuse if args.noreuse_mode == "reset" else build_client(noreuse_cfg, role="student")
    t_load = time.perf_counter()
    count = reuse.count_tokens  # loads the model (shared by both clients: same load key)
    count("x")
    load_s = time.perf_counter() - t_load

    zs = assemble(cfg.task, count_tokens=count).text
    pld_text, pld_info = pld_prompt(cfg, count, args.rule_tokens, args.prompt_file)
    cot_text = zs + "\n\n" + COT_INSTRUCTION
    systems = {"zero_shot": zs, "pld_reuse": pld_text, "pld_no_reuse": pld_text, "cot": cot_text,
               "cot_forced": cot_text}
    clients = {"zero_shot": reuse, "pld_reuse": reuse, "pld_no_reuse": noreuse, "cot": reuse, "cot_forced": reuse}
    wanted = [c.strip() for c in args.conditions.split(",") if c.strip()]
    for c in wanted:
        if c not in systems:
            raise SystemExit(f"unknown condition {c!r}; known: {sorted(systems)}")
    sizes = {c: (args.n_noreuse if c == "pld_no_reuse" else args.n) for c in wanted}
    inputs = sample_inputs(cfg, max(sizes.values()), args.seed)
    if len(inputs) < max(sizes.values()):
        raise SystemExit(f"only {len(inputs)} inputs in {cfg.dataset.path}")
    # warm-up (not measured): one classify so the first measured round does not pay one-time costs
    reuse.classify(zs, [inputs[0]], labels, calibration="none")

    parts: dict[str, list[dict]] = {c: [] for c in wanted}
    loads = [loadavg()]
    with Timer() as total:
        for rnd in range(args.rounds):
            for c in wanted:
                k = sizes[c]
                lo, hi = rnd * k // args.rounds, (rnd + 1) * k // args.rounds
                if hi <= lo:
                    continue
                p = run_condition(c, clients[c], systems[c], inputs[lo:hi], labels, "none", args.cot_tokens,
                                  noreuse_reset=(c == "pld_no_reuse" and args.noreuse_mode == "reset"))
                parts[c].append(p)
                loads.append(loadavg())
                print(f"round {rnd + 1} {c}: {len(p['latency_s'])} in {p['wall_s']:.1f}s (load {loads[-1]})",
                      flush=True)
    res = {c: summarise(c, parts[c]) for c in wanted}

    def ratio(a, b, key="mean_s"):
        if a in res and b in res and res[a][key] and res[b][key]:
            return res[a][key] / res[b][key]
        return None

    ratios = {"pld_reuse/zero_shot": ratio("pld_reuse", "zero_shot"),
              "pld_no_reuse/zero_shot": ratio("pld_no_reuse", "zero_shot"),
              "pld_no_reuse/pld_reuse": ratio("pld_no_reuse", "pld_reuse"),
              "cot/pld_reuse": ratio("cot", "pld_reuse"), "cot/zero_shot": ratio("cot", "zero_shot"),
              "cot_forced/pld_reuse": ratio("cot_forced", "pld_reuse"),
              "cot_forced/zero_shot": ratio("cot_forced", "zero_shot"),
              "pld_reuse_first/zero_shot_first": ratio("pld_reuse", "zero_shot", "first_s_mean")}
    rows = [(r["condition"], r["n"], r["mean_s"], r["p50_s"], r["p95_s"], r["first_s_mean"], r["throughput_per_s"],
             r["prompt_tokens_mean"], r["output_tokens_mean"], r["prefix_reused_share"], r["errors"])
            for r in res.values()]
    print()
    print(text_table(("condition", "n", "mean_s", "p50_s", "p95_s", "first_s", "ex_per_s", "prompt_tok", "out_tok",
                      "reused", "errors"), rows))
    print()
    print(text_table(("ratio (steady-state mean latency)", "value"),
                     [(k, v) for k, v in ratios.items() if v is not None]))
    print(f"\nmodel load {load_s:.2f}s; PLD prompt {pld_info}; load average during run: {loads[0]} -> {loads[-1]}")
    payload = {"student": model_facts(cfg.student), "threads": args.threads, "calibration": "none",
               "rounds": args.rounds, "noreuse_mode": args.noreuse_mode, "cot_tokens": args.cot_tokens,
               "task": cfg.task.name, "model_load_s": round(load_s, 3),
               "prompts": {"zero_shot_tokens": count(zs), "pld": pld_info, "cot_tokens_prompt": count(cot_text)},
               "pld_prompt_text": pld_text, "conditions": res, "ratios": ratios, "loadavg_trace": loads,
               "measured_wall_s": round(total.s, 1)}
    path = write_result(args.name, payload, started)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
