"""Prompt versions on local Spark + Delta (no model): one lookup rule, one error message.

:class:`pld_spark.prompts.versions.PromptVersions` is the one home of prompt versions and
aliases; every command that takes a prompt resolves it there. Checked here: the default order
(:data:`DEFAULT_ORDER`: live first, then distilled, ..., clustered last), explicit versions and
aliases, that a version of another task is refused, that `pld score`, `pld evaluate
--prompt-version`, `pld prompt show` and `pld rules list --prompt-version` fail on an unknown
reference with the same message, and that after consolidate alone (a prompt and its
``clustered`` alias) `pld score` uses that prompt.
"""
import json
import re

import pytest

from pld_spark.errors import DataError
from pld_spark.prompts.versions import DEFAULT_ORDER, PromptNotFoundError, PromptVersion, PromptVersions, version_id
from tests.conftest import CONF
from tests.distill_fakes import seed_examples, synthetic_examples

pytestmark = pytest.mark.spark

#: a student that is a real client but that nothing answers for (port 9, discard): a command
#: that reached it would fail, so these tests also show no model call is needed
NO_STUDENT = ["student.type=openai", "student.model=unused", "student.base_url=http://127.0.0.1:9/v1",
              "student.max_retries=0"]


def _pld(capfd, argv):
    """``pld`` in this process (the test's Spark session) -> (exit code, stdout, stderr)."""
    from pld_spark import cli

    capfd.readouterr()
    rc = cli.main(argv)
    out, err = capfd.readouterr()
    return rc, out, err


def _argv(ctx, command, *extra):
    sets = [f"lakehouse.path={ctx.cfg.lakehouse.path}", *NO_STUDENT]
    return [*command, "--config", str(CONF / "stereoset.yaml"), *[x for s in sets for x in ("--set", s)], *extra]


def test_default_order_is_live_then_distilled_then_clustered(make_ctx):
    order = list(DEFAULT_ORDER)
    assert [a for a in order if a in ("live", "distilled", "clustered")] == ["live", "distilled", "clustered"]
    assert order[0] == "live" and order[-1] == "clustered"  # consolidate alone is enough; a promotion wins
    ctx = make_ctx()
    pv = PromptVersions(ctx.store, "stereoset")
    with pytest.raises(PromptNotFoundError, match=re.escape(
            f"task 'stereoset' has no prompt to use: none of the aliases {', '.join(order)} is set "
            f"(aliases set: none)")):
        pv.resolve()
    texts = [f"{alias} text" for alias in order]
    ids = pv.write([PromptVersion("stereoset", f"kind-{alias}", t) for alias, t in zip(order, texts)])
    assert ids == [version_id(t) for t in texts] and all(i.startswith("pv-") for i in ids)
    by_alias = dict(zip(order, ids))

    # set the aliases from the last in the order to the first: each one set takes over
    for alias in reversed(order):
        pv.set_alias(alias, by_alias[alias], by="test")
        ref = pv.resolve()
        assert (ref.version, ref.text, ref.kind, ref.alias) == (
            by_alias[alias], f"{alias} text", f"kind-{alias}", alias)
    c, d = by_alias["clustered"], by_alias["distilled"]

    # explicit references: a version id (no alias), an alias by name
    ref = pv.resolve(c)
    assert (ref.version, ref.alias) == (c, None)
    assert pv.resolve("distilled").text == "distilled text"
    # an alias's latest promotion wins; the history is kept
    pv.set_alias("live", d, by="test", note="roll back")
    assert pv.resolve().version == d and pv.aliases() == {**by_alias, "live": d}
    assert ctx.store.read("prompt_aliases").where("alias = 'live'").count() == 2
    # versions are immutable and content-addressed: the same text is the same row
    assert pv.write(PromptVersion("stereoset", "another-kind", "clustered text")) == [c]
    assert ctx.store.read("prompts").count() == len(order) and pv.get(c).kind == "kind-clustered"
    # an alias cannot point at a version that is not stored, nor a version of another task
    with pytest.raises(PromptNotFoundError, match="cannot point alias 'broken' at 'pv-000000000000': no such"):
        pv.set_alias("broken", "pv-000000000000", by="test")
    foreign, = PromptVersions(ctx.store, "contractnli").write(PromptVersion("contractnli", "k", "Decide."))
    with pytest.raises(PromptNotFoundError, match="belongs to task 'contractnli'"):
        pv.set_alias("broken", foreign, by="test")
    assert "broken" not in pv.aliases()
    with pytest.raises(DataError, match="bad alias name"):
        pv.set_alias("two words", c, by="test")


def test_a_version_of_another_task_is_refused(make_ctx):
    ctx = make_ctx()
    other = PromptVersions(ctx.store, "contractnli")
    vid, = other.write(PromptVersion("contractnli", "pld_cluster", "Decide entailment."))
    other.set_alias("live", vid, by="test")
    mine = PromptVersions(ctx.store, "stereoset")
    with pytest.raises(PromptNotFoundError, match=f"prompt version '{vid}' belongs to task 'contractnli', not "
                                                  f"'stereoset'"):
        mine.resolve(vid)
    with pytest.raises(PromptNotFoundError, match="has no prompt to use"):  # its aliases are not ours either
        mine.resolve()
    with pytest.raises(PromptNotFoundError):
        mine.resolve("live")
    assert mine.aliases() == {} and other.resolve().version == vid


def test_every_command_gives_the_same_error_for_an_unknown_prompt(make_ctx, capfd):
    ctx = make_ctx()
    seed_examples(ctx, synthetic_examples(2, "train") + synthetic_examples(2, "test"))  # evaluate reads the splits
    pv = PromptVersions(ctx.store, "stereoset")
    c, = pv.write(PromptVersion("stereoset", "pld_cluster", "Classify the bias category."))
    pv.set_alias("clustered", c, by="test")
    with pytest.raises(PromptNotFoundError) as e:
        pv.resolve("pv-nope")
    expected = f"error: {e.value}"
    assert "prompt 'pv-nope' is neither a prompt version of task 'stereoset' nor one of its aliases" in expected

    commands = {"score": (["score"], ["--prompt-version", "pv-nope"]),
                "evaluate": (["evaluate"], ["--prompt-version", "pv-nope"]),
                "prompt show": (["prompt", "show"], ["pv-nope"]),
                "rules list": (["rules", "list"], ["--prompt-version", "pv-nope"])}
    for name, (command, extra) in commands.items():
        rc, out, err = _pld(capfd, _argv(ctx, command, *extra))
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert rc == 2, (name, rc, err[-2000:])
        assert lines == [expected], (name, err[-2000:])
        assert "Traceback" not in err, name
    assert ctx.store.read("predictions").count() == 0 and ctx.store.read("evaluations").count() == 0


def test_score_after_consolidate_alone_uses_the_clustered_prompt(make_ctx, capfd, tmp_path):
    """consolidate leaves a prompt and its ``clustered`` alias, nothing else: `pld score` with no
    --prompt-version resolves that prompt. The documents are empty, so they are stored as error
    rows without a model call."""
    ctx = make_ctx()
    pv = PromptVersions(ctx.store, "stereoset")
    c, = pv.write(PromptVersion("stereoset", "pld_cluster", "Classify the bias category.\n1. [race] A country."))
    pv.set_alias("clustered", c, by="pld consolidate")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"doc_id": f"d{i}", "text": "  "}) for i in range(3)))
    rc, out, err = _pld(capfd, _argv(ctx, ["score"], "--input", str(docs), "--set", "score.engine=local"))
    assert rc == 0, err[-3000:]
    got = json.loads(out)["score"]
    assert (got["prompt_version"], got["alias"]) == (c, "clustered")
    assert got["scored"] == 3 and got["empty_inputs"] == 3
    rows = ctx.store.read("predictions").collect()
    assert {(r.doc_id, r.prompt_version, r.condition, r.error) for r in rows} == {
        (f"d{i}", c, "score", "empty input_text") for i in range(3)}
