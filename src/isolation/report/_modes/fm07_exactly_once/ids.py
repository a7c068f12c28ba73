"""FM7, duplicate context ids: request ids are unique across threads, tasks and processes.

Subject: an id generator, a module-level function (so a second process can
import it) returning a new request id. The library's makes a context and takes
its ``request_id`` (128 random bits). Ids are made by 10 threads x 20 requests,
200 tasks, and a second OS process; the property is no duplicates, each id
32 lowercase hex characters. The mutant is a process-local counter formatted as
hex: unique within a process, so only the second process catches it — every
run, since both processes start counting at zero.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import anyio

from isolation.context._model import UserContext
from isolation.report._registry import Backend, Check, ModeRegistry, Settings

__all__ = ["library_request_id", "mutant_request_id", "register"]

IdMaker = Callable[[], str]

THREADS = 10
REQUESTS_PER_THREAD = 20
TASKS = 200
OTHER_PROCESS = 200

_HEX128 = re.compile(r"[0-9a-f]{32}")


def library_request_id() -> str:
    """The library's request id: that of a new context."""
    return UserContext.new("fm7-user").request_id


_counter = itertools.count()


def mutant_request_id() -> str:
    """Mutant: a counter starting at zero in each process."""
    return f"{next(_counter):032x}"


def _ids_in_process(make: IdMaker, count: int) -> list[str]:
    return [make() for _ in range(count)]


def _ids_in_other_process(make: IdMaker, count: int) -> list[str]:
    # A fresh interpreter imports the generator by name: nothing of this
    # process's state (counters, seeds) can reach it.
    code = (
        "import json, sys, importlib\n"
        "module = importlib.import_module(sys.argv[1])\n"
        "make = getattr(module, sys.argv[2])\n"
        "print(json.dumps([make() for _ in range(int(sys.argv[3]))]))\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-c", code, make.__module__, make.__qualname__, str(count)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    ids: list[str] = json.loads(done.stdout)
    return ids


async def _ids_in_tasks(make: IdMaker) -> list[str]:
    ids: list[str] = []

    async def one() -> None:
        await anyio.sleep(0)  # a checkpoint, so the tasks interleave
        ids.append(make())

    async with anyio.create_task_group() as tg:
        for _ in range(TASKS):
            tg.start_soon(one)
    return ids


def check_unique_ids(make: IdMaker, settings: Settings) -> list[str]:
    """Ids from 10 threads x 20 requests, 200 tasks and a second process: no duplicates."""
    with ThreadPoolExecutor(THREADS) as pool:
        batches = list(
            pool.map(lambda _: _ids_in_process(make, REQUESTS_PER_THREAD), range(THREADS))
        )
    ids = [i for batch in batches for i in batch]
    ids += anyio.run(_ids_in_tasks, make, backend="asyncio")
    ids += _ids_in_other_process(make, OTHER_PROCESS)
    violations = []
    malformed = [i for i in ids if not _HEX128.fullmatch(i)]
    if malformed:
        violations.append(f"{len(malformed)} ids are not 32 lowercase hex characters")
    duplicates = len(ids) - len(set(ids))
    if duplicates:
        violations.append(f"{duplicates} duplicate request ids among {len(ids)} (two processes)")
    return violations


def register(registry: ModeRegistry) -> None:
    """Register FM7's id check."""
    registry.register(
        7,
        Check(
            name="unique-request-ids",
            backend=Backend.MEMORY,
            run=check_unique_ids,
            library=lambda: library_request_id,
            mutant=lambda: mutant_request_id,
            description="10 threads x 20 requests, 200 tasks and a second process: no duplicates",
        ),
    )
