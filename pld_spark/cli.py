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

from pld_spark.errors import PLDError

log = logging.getLogger("pld_spark.cli")

DISTILL_STAGES = ("extract", "cluster", "consolidate", "resolve")
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


def _run_stages(ctx, stages: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for st in stages:
        log.info("stage %s", st)
        out[st] = _stage_runner(st)(ctx)
    return out


# ----------------------------------------------------------------------------- commands
def cmd_stage(args) -> int:
    with _build_ctx(args, args.command) as ctx:
        _print({"run_id": ctx.run_id, args.command: _stage_runner(args.command)(ctx)})
    return 0


def cmd_distill(args) -> int:
    with _build_ctx(args, "distill") as ctx:
        _print({"run_id": ctx.run_id, **_run_stages(ctx, DISTILL_STAGES)})
    return 0


def cmd_run(args) -> int:
    from pld_spark.pipeline import evaluate

    with _build_ctx(args, "run") as ctx:
        out = _run_stages(ctx, ("ingest",) + DISTILL_STAGES)
        out["evaluate"] = evaluate.run(ctx)
        if args.score:
            from pld_spark.pipeline import score

            out["score"] = score.run(ctx, prompt_version=None, input_ref=None)
        print(evaluate.summary_table(out["evaluate"]))
        print(f"\nrun {ctx.run_id}; report: {out['evaluate'].get('report_html')}")
    return 0


def cmd_score(args) -> int:
    from pld_spark.pipeline import score

    with _build_ctx(args, "score") as ctx:
        _print({"run_id": ctx.run_id, "score": score.run(ctx, prompt_version=args.prompt_version,
                                                         input_ref=args.input)})
    return 0


def cmd_llm_check(args) -> int:
    from pld_spark.llm.check import check

    from pld_spark.config import load_config
    from pld_spark.context import RunContext

    ctx = RunContext(load_config(args.config, args.set or []), command="llm check")
    _print(check(ctx, args.role, args.prompt))
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


def cmd_config_show(args) -> int:
    from pld_spark.config import load_config

    cfg = load_config(args.config, args.set or [])
    print(cfg.text)
    print(f"# config hash: {cfg.hash}")
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
        p.set_defaults(fn=cmd_stage)
    p = sub.add_parser("distill", help="extract -> cluster -> consolidate -> resolve")
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

    cf = sub.add_parser("config", help="config tools").add_subparsers(dest="config_cmd", required=True)
    p = cf.add_parser("show", help="print the merged config and its hash")
    _common(p)
    p.set_defaults(fn=cmd_config_show)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pld_spark").setLevel(logging.INFO)
    try:
        return args.fn(args)
    except PLDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
