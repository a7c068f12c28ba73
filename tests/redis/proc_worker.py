"""A plain background worker: pops jobs from a Redis list and runs each as its user.

Usage: ``python proc_worker.py URL QUEUE RESULTS``. No job framework: ``BLPOP``
a JSON job ``{"id": ..., "token": ...}`` from ``QUEUE``, open a scope from the
token (verified, expiry-checked, purpose "job"), run the job inside it, and
``RPUSH`` a JSON result to ``RESULTS``. A refused token is reported, and the
job does not run. ``{"stop": true}`` ends the worker.
"""

from __future__ import annotations

import json
import sys

import isolation
import redis

KEY = b"redis-backend-test-key-0123456789abcdef"


def whoami() -> dict[str, object]:
    """The job itself: whatever it does, it does as the scope's user."""
    ctx = isolation.current_context()
    return {
        "user": ctx.user_id,
        "tenant": ctx.tenant_id,
        "parent": ctx.attributes.get("parent_request_id"),
    }


def main(url: str, queue: str, results: str) -> None:
    client = redis.Redis.from_url(url)
    while True:
        popped = client.blpop([queue], timeout=30)
        if popped is None:
            return
        job = json.loads(popped[1])
        if job.get("stop"):
            return
        try:
            with isolation.scope.from_token(job["token"], keys=[KEY], purpose="job"):
                outcome: dict[str, object] = {"id": job["id"], "ran": whoami()}
        except isolation.TokenError as exc:
            outcome = {"id": job["id"], "refused": type(exc).__name__}
        client.rpush(results, json.dumps(outcome))


if __name__ == "__main__":
    main(*sys.argv[1:4])
