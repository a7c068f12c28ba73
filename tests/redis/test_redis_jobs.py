"""A job handed to a worker process runs as its user; bad tokens are refused.

The request side signs its context into the job (``tokens.dumps(ctx, key=...,
purpose="job")``); a separate worker process pops it from a Redis list and
opens ``isolation.scope.from_token(...)``, so the job runs as that user and
nothing else. Tampered, expired, wrong-purpose and foreign-key tokens never run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from redis_support import KEY, OTHER_KEY

import redis
from isolation import UserContext, tokens
from isolation.testing import FakeClock, use_clock

HERE = Path(__file__).resolve().parent


def job_token(ctx: UserContext, **options: Any) -> str:
    return tokens.dumps(
        ctx, key=options.pop("key", KEY), purpose=options.pop("purpose", "job"), **options
    )


def test_worker_runs_jobs_as_their_user(live_redis: str, namespace: str) -> None:
    """Each job runs in a scope of its own user; every bad token is refused and does not run."""
    queue, results = f"{namespace}:jobs", f"{namespace}:results"
    alice = UserContext.new("alice", tenant_id="acme", ttl=300)
    bob = UserContext.new("alice", tenant_id="globex", ttl=300)  # same user id, another tenant
    good = job_token(alice)
    head, _, signature = good.rpartition(".")
    forged_body = tokens.dumps(
        UserContext.new("mallory", tenant_id="acme"), key=OTHER_KEY, purpose="job"
    )
    with use_clock(FakeClock()):  # signed "in 2023": long expired now
        expired = job_token(alice, ttl=60)
    jobs = {
        "alice": good,
        "bob": job_token(bob),
        "tampered": head[:-4] + ("AAAA" if head[-4:] != "AAAA" else "BBBB") + "." + signature,
        "expired": expired,
        "wrong-purpose": job_token(alice, purpose="ws-connect"),
        "foreign-key": forged_body,
        "not-a-token": "pickle:\x80\x04",
    }
    client = redis.Redis.from_url(live_redis)
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "proc_worker.py"), live_redis, queue, results],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for job_id, token in jobs.items():
            client.rpush(queue, json.dumps({"id": job_id, "token": token}))
        client.rpush(queue, json.dumps({"stop": True}))
        assert worker.wait(timeout=30) == 0
        outcomes = {o["id"]: o for o in (json.loads(r) for r in client.lrange(results, 0, -1))}
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        for stream in (worker.stdout, worker.stderr):
            if stream is not None:
                stream.close()
        client.delete(queue, results)
        client.close()
    assert outcomes["alice"]["ran"] == {
        "user": "alice",
        "tenant": "acme",
        "parent": alice.request_id,
    }
    assert outcomes["bob"]["ran"] == {"user": "alice", "tenant": "globex", "parent": bob.request_id}
    assert outcomes["tampered"]["refused"] in ("TokenSignatureError", "MalformedTokenError")
    assert outcomes["expired"]["refused"] == "TokenExpiredError"
    assert outcomes["wrong-purpose"]["refused"] == "TokenPurposeError"
    assert outcomes["foreign-key"]["refused"] == "TokenSignatureError"
    assert outcomes["not-a-token"]["refused"] == "MalformedTokenError"
    assert len(outcomes) == len(jobs)
