"""The async state-machine runner: async rules on one loop, tasks across steps, shrinking."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import settings
from hypothesis.stateful import (
    Bundle,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from isolation.testing import AsyncRuleBasedStateMachine


class Mailbox:
    """A stand-in router: messages to a user go to that user's box."""

    def __init__(self, *, misdeliver_after_disconnect: bool = False) -> None:
        self.boxes: dict[str, list[str]] = {}
        self.last_disconnected: str | None = None
        self.buggy = misdeliver_after_disconnect

    async def connect(self, user: str) -> None:
        await anyio.sleep(0)
        self.boxes.setdefault(user, [])

    async def disconnect(self, user: str) -> None:
        await anyio.sleep(0)
        self.boxes.pop(user, None)
        self.last_disconnected = user

    async def publish(self, user: str, message: str) -> None:
        await anyio.sleep(0)
        if self.buggy and self.last_disconnected is not None and self.boxes:
            # The planted bug: after a disconnect, the first live box gets everything.
            next(iter(self.boxes.values())).append(message)
        elif user in self.boxes:
            self.boxes[user].append(message)


class MailboxMachine(AsyncRuleBasedStateMachine):
    """Checks that every message lands in its recipient's box only."""

    buggy = False

    def __init__(self) -> None:
        super().__init__()
        self.box = Mailbox(misdeliver_after_disconnect=self.buggy)
        self.expected: dict[str, list[str]] = {}
        self.counter = 0

    users = Bundle("users")

    @initialize(target=users)
    async def first_user(self) -> str:
        await self.box.connect("u0")
        self.expected["u0"] = []
        return "u0"

    @rule(target=users, n=__import__("hypothesis").strategies.integers(1, 3))
    async def connect(self, n: int) -> str:
        user = f"u{n}"
        await self.box.connect(user)
        self.expected.setdefault(user, [])
        return user

    @rule(user=users)
    async def disconnect(self, user: str) -> None:
        await self.box.disconnect(user)
        self.expected.pop(user, None)

    @rule(user=users)
    async def publish(self, user: str) -> None:
        self.counter += 1
        message = f"m{self.counter}"
        await self.box.publish(user, message)
        if user in self.expected:
            self.expected[user].append(message)

    @invariant()
    async def boxes_match(self) -> None:
        await anyio.sleep(0)
        assert self.box.boxes == self.expected


class BuggyMailboxMachine(MailboxMachine):
    buggy = True


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_correct_machine_passes(backend: str) -> None:
    """A correct stand-in passes on both backends."""
    run_state_machine_as_test(
        MailboxMachine.on_backend(backend),
        settings=settings(max_examples=20, stateful_step_count=15),
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_planted_bug_is_found_and_shrunk(backend: str) -> None:
    """A misdelivery after a disconnect is found and shrunk to a short sequence."""
    with pytest.raises(AssertionError) as info:
        run_state_machine_as_test(
            BuggyMailboxMachine.on_backend(backend),
            settings=settings(max_examples=200, stateful_step_count=20),
        )
    steps = [n for n in info.value.__notes__ if n.startswith("state.") and "teardown" not in n]
    assert any("disconnect" in step for step in steps)
    assert len(steps) <= 6, steps


class TaskAcrossSteps(AsyncRuleBasedStateMachine):
    """A task started in one rule is awaited in a later one."""

    def __init__(self) -> None:
        super().__init__()
        self.done: anyio.Event | None = None
        self.started = False
        self.finished = 0

    @precondition(lambda self: not self.started)
    @rule()
    async def start(self) -> None:
        self.done = anyio.Event()
        release = anyio.Event()

        async def background() -> None:
            await release.wait()
            assert self.done is not None
            self.done.set()

        self.task_group.start_soon(background)
        await anyio.wait_all_tasks_blocked()
        release.set()  # the task finishes only after this step returned
        self.started = True

    @precondition(lambda self: self.started)
    @rule()
    async def join(self) -> None:
        assert self.done is not None
        with anyio.fail_after(30):
            await self.done.wait()
        self.finished += 1
        self.started = False

    async def ateardown(self) -> None:
        await anyio.sleep(0)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_task_lives_across_steps(backend: str) -> None:
    """Tasks started by one step are still running in the next, on one event loop."""
    run_state_machine_as_test(
        TaskAcrossSteps.on_backend(backend),
        settings=settings(max_examples=10, stateful_step_count=10),
    )


class FailingBackground(AsyncRuleBasedStateMachine):
    # The tasks fail only once teardown releases them: a task failing mid-run would
    # surface at whichever later step the scheduler picks, and Hypothesis refuses a
    # failure that moves between replays (FlakyStrategyDefinition).
    def __init__(self) -> None:
        super().__init__()
        self.releases: list[anyio.Event] = []

    @rule()
    async def spawn(self) -> None:
        release = anyio.Event()
        self.releases.append(release)

        async def boom() -> None:
            await release.wait()
            raise RuntimeError("background failure")

        self.task_group.start_soon(boom)

    async def ateardown(self) -> None:
        for release in self.releases:
            release.set()


def test_background_failure_fails_the_run() -> None:
    """A task that fails in the background fails the run at teardown."""
    with pytest.raises(BaseExceptionGroup) as info:
        run_state_machine_as_test(
            FailingBackground, settings=settings(max_examples=5, stateful_step_count=3)
        )
    assert info.group_contains(RuntimeError, match="background failure")


def test_sync_rules_still_work() -> None:
    """Plain sync rules and the portal are available too."""

    class Mixed(AsyncRuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        @rule()
        def bump(self) -> None:
            self.n += 1
            assert self.portal.call(anyio.sleep, 0) is None

    run_state_machine_as_test(Mixed, settings=settings(max_examples=5, stateful_step_count=5))


TestMailboxAsTestCase = MailboxMachine.TestCase
TestMailboxAsTestCase.settings = settings(max_examples=10, stateful_step_count=10)
