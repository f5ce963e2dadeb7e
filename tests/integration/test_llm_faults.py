"""The openai backend against a real local HTTP server that injects faults.

Retryable faults end in success within the retry budget; fatal ones fail at once with the
typed error; the number of requests the server saw equals what the policy says.
"""
from __future__ import annotations

import time

import pytest

from pld_spark.config import LLMConfig
from pld_spark.errors import (
    AuthError, BadRequestError, ContextLengthError, LLMConnectionError, LLMTimeoutError, MalformedResponseError,
    RateLimitError, ServerError)
from pld_spark.llm.base import ChatRequest
from pld_spark.llm.openai import OpenAILLM
from tests.integration.servers import FaultServer, free_port

pytestmark = pytest.mark.integration

SCHEMA = {"type": "object", "properties": {"reasoning": {"type": "string"}, "rule": {"type": "string"}},
          "required": ["reasoning", "rule"]}


def client(url: str, *, max_retries: int = 3, timeout_s: float = 2.0, sleeps: list | None = None, **cfg) -> OpenAILLM:
    c = LLMConfig(type="openai", model="test-model", base_url=url, max_retries=max_retries, backoff_base_s=0.01,
                  backoff_max_s=0.05, timeout_s=timeout_s, cache=False, **cfg)
    kw = {"sleep": sleeps.append} if sleeps is not None else {}
    return OpenAILLM(c, role="teacher", **kw)


def ask(text: str = "hi", **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], max_tokens=8, **kw)


@pytest.mark.parametrize("fault", ["429", "500", "503", "malformed", "empty_choices", "drop"])
def test_each_retryable_fault_then_success(fault_server, fault):
    srv = fault_server([fault], retry_after="0", reply_text="fine")
    c = client(srv.url)
    r = c.chat_one(ask())
    assert r.text == "fine" and r.attempts == 2
    assert srv.requests == 2 and srv.counts[fault] == 1 and srv.counts["ok"] == 1
    assert c.stats()["retries"] == 1


def test_mixed_faults_succeed_within_budget_and_attempts_match(fault_server):
    faults = ["429", "500", "malformed", "empty_choices"]
    srv = fault_server(faults, retry_after="0")
    c = client(srv.url, max_retries=4)
    r = c.chat_one(ask())
    assert r.ok and r.attempts == 5 and srv.requests == 5


def test_retry_budget_exhausted_fails_with_typed_error(fault_server):
    srv = fault_server(["500"] * 10)
    c = client(srv.url, max_retries=3)
    with pytest.raises(ServerError):
        c.chat_one(ask())
    assert srv.requests == 4  # 1 + max_retries
    # as data: the row carries the error and the attempts
    srv.set_script(["503"] * 10)
    r = c.chat([ask("row")])[0]
    assert r.error_type == "ServerError" and r.attempts == 4 and srv.requests == 4


@pytest.mark.parametrize("fault,exc", [("401", AuthError), ("400", BadRequestError),
                                       ("context", ContextLengthError)])
def test_fatal_faults_fail_at_once(fault_server, fault, exc):
    srv = fault_server([fault, "ok"])
    sleeps: list[float] = []
    c = client(srv.url, max_retries=5, sleeps=sleeps)
    with pytest.raises(exc):
        c.chat_one(ask())
    assert srv.requests == 1 and sleeps == []


def test_retry_after_header_is_honoured_for_real(fault_server):
    srv = fault_server(["429"], retry_after="1")
    c = client(srv.url, max_retries=2)
    t0 = time.perf_counter()
    r = c.chat_one(ask())
    elapsed = time.perf_counter() - t0
    assert r.ok and srv.requests == 2
    assert elapsed >= 1.0  # the backoff cap is 0.05 s: only the header explains the wait
    gap = srv.log[1]["time"] - srv.log[0]["time"]
    assert gap >= 1.0


def test_retry_after_value_reaches_the_policy(fault_server):
    srv = fault_server(["429", "429"], retry_after="7")
    sleeps: list[float] = []
    c = client(srv.url, max_retries=3, sleeps=sleeps)
    c.chat_one(ask())
    assert len(sleeps) == 2 and all(7.0 <= s <= 7.7 for s in sleeps)


def test_hang_past_timeout_is_retried(fault_server):
    srv = fault_server(["hang"], hang_s=5.0, reply_text="after hang")
    c = client(srv.url, timeout_s=0.5, max_retries=2)
    t0 = time.perf_counter()
    r = c.chat_one(ask())
    assert r.text == "after hang" and r.attempts == 2 and srv.requests == 2
    assert time.perf_counter() - t0 < 4.0  # did not wait for the hang to end


def test_hang_every_time_ends_in_timeout_error(fault_server):
    srv = fault_server(["hang"] * 3, hang_s=3.0)
    c = client(srv.url, timeout_s=0.3, max_retries=2)
    with pytest.raises(LLMTimeoutError):
        c.chat_one(ask())
    assert srv.requests == 3


def test_connection_refused_is_retryable_connection_error():
    c = client(f"http://127.0.0.1:{free_port()}/v1", max_retries=2)
    r = c.chat([ask()])[0]
    assert r.error_type == "LLMConnectionError" and r.attempts == 3
    with pytest.raises(LLMConnectionError):
        c.chat_one(ask())


def test_malformed_every_time_is_typed(fault_server):
    srv = fault_server(["malformed"] * 5)
    c = client(srv.url, max_retries=1)
    with pytest.raises(MalformedResponseError):
        c.chat_one(ask())
    assert srv.requests == 2


def test_json_repair_through_http(fault_server):
    srv = fault_server(["bad_content"], reply_json={"reasoning": "r", "rule": "If x then y."})
    c = client(srv.url)
    r = c.chat_one(ask(json_schema=SCHEMA))
    assert r.data == {"reasoning": "r", "rule": "If x then y."}
    assert srv.requests == 2 and r.attempts == 2
    # the repair request carried the bad answer back to the model
    assert srv.log[1]["body"]["messages"][-2]["role"] == "assistant"
    assert srv.log[0]["body"]["response_format"] == {"type": "json_object", "schema": SCHEMA}


def test_random_fault_rate_all_rows_succeed_and_requests_add_up(fault_server):
    srv = fault_server(fault_rate=0.3, seed=7, retry_after="0", fault_kinds=("429", "500", "malformed", "drop"))
    c = client(srv.url, max_retries=8)
    out = c.chat([ask(f"row {i}") for i in range(30)], max_in_flight=4)
    assert all(r.ok for r in out)
    assert srv.requests == sum(r.attempts for r in out)
    assert sum(v for k, v in srv.counts.items() if k != "ok") == srv.requests - 30
    assert srv.requests > 30  # some faults really happened


def test_api_key_sent_in_header_and_never_in_errors(fault_server, monkeypatch):
    monkeypatch.setenv("PLD_FAULT_KEY", "sk-test-abcdef")
    srv = fault_server(["ok", "401"])
    c = client(srv.url, api_key_env="PLD_FAULT_KEY")
    c.chat_one(ask())
    assert srv.log[0]["headers"].get("Authorization") == "Bearer sk-test-abcdef"
    r = c.chat([ask("again")])[0]
    assert r.error_type == "AuthError" and "sk-test-abcdef" not in (r.error or "")
    assert "PLD_FAULT_KEY" in r.error  # names the variable, not the value


def test_rate_limit_paces_requests(fault_server):
    srv = fault_server()
    c = client(srv.url, requests_per_minute=600)  # 10/s; burst = 10 s worth, so drain it first
    c.limiter.requests._level = 0.0
    t0 = time.perf_counter()
    for i in range(5):
        c.chat_one(ask(f"{i}"))
    assert time.perf_counter() - t0 >= 0.4
    assert srv.requests == 5


def test_fault_server_is_reusable_standalone():
    with FaultServer(["500"], reply_text="x") as srv:
        c = client(srv.url)
        assert c.chat_one(ask()).text == "x"
        srv.set_script(["401"])
        with pytest.raises(AuthError):
            c.chat_one(ask("b"))
        assert srv.requests == 1
    assert RateLimitError.retryable and not AuthError.retryable
