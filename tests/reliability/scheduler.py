"""A deterministic scheduler that explores every interleaving of a few actors.

Each *actor* (a release, a resume, a webhook delivery) runs in its own thread,
but only one runs at a time: at each of its I/O points (a load, a save, a scan
of the log, a Stripe request and Stripe's commit) it stops and waits until the
scheduler picks it. A run is therefore fully described by its sequence of
choices, and ``explore`` enumerates them depth first, model-checking style:
it re-runs the scenario from a fresh store with every choice prefix until each
alternative at each step has been taken once. Every complete run is one
interleaving; ``Exploration.runs`` counts them.

A choice can also be "crash this actor here" (bounded by a crash budget): the
actor dies at that point, as a process killed by the OOM killer or a deploy
would. What it did before stays done; at Stripe's commit point a crash means
Stripe executes the request and the caller dies before reading the answer.

Each I/O call is one atomic step, which is what the stores give: a save is one
transaction, a load one consistent read.

Partial-order reduction (sleep sets, Godefroid 1996): two steps of different
actors that touch no common resource, or only read it, give the same state in
either order, so only one of the two orders needs running. Each step's
footprint comes from its label (``FOOTPRINTS``): the store, Stripe's keys,
Stripe's transfers, the clock. Every interleaving is then *covered*: it is
equivalent (same final state, same answers to every actor) to one that ran.
``explore(..., reduce=False)`` runs every interleaving itself instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.reliability.system import SimulatedCrash

WATCHDOG_SECONDS = 60.0
"""How long the scheduler waits for an actor to reach its next point: a hang is a bug."""


class DeadlockError(RuntimeError):
    """An actor did not reach its next I/O point (blocked outside the scheduler's control)."""


class NondeterminismError(RuntimeError):
    """Replaying a choice prefix did not reproduce the same choices: the scenario leaks state."""


@dataclass
class _Actor:
    name: str
    body: Callable[[], Any]
    state: str = "new"  # new, waiting, granted, running, done
    label: str = "start"
    crash_now: bool = False
    thread: threading.Thread | None = None
    result: Any = None
    error: BaseException | None = None
    crashed_at: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What one actor did in one run."""

    result: Any
    error: BaseException | None
    crashed_at: str | None


Transition = tuple[str, bool, str]
"""(actor, crash?, label): the step an actor would take next."""

DB, KEYS, TRANSFERS, CLOCK = "db", "stripe_keys", "stripe_transfers", "clock"
EVERYTHING = frozenset({DB, KEYS, TRANSFERS, CLOCK})

FOOTPRINTS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # label: (reads, writes) of the step taken at that point
    "start": (frozenset(), frozenset()),
    "db.select_events": (frozenset({DB}), frozenset()),
    "db.select_notifications": (frozenset({DB}), frozenset()),
    "db.insert_events": (frozenset({DB}), frozenset({DB})),
    "stripe.send": (frozenset({KEYS, CLOCK}), frozenset({KEYS})),
    "stripe.commit": (frozenset({KEYS, TRANSFERS}), frozenset({KEYS, TRANSFERS})),
    "stripe.list": (frozenset({TRANSFERS}), frozenset()),
    "webhook.deliver": (frozenset({TRANSFERS}), frozenset()),
    "clock.jump_24h": (EVERYTHING, EVERYTHING),
}
"""Unknown labels are treated as touching everything (never reduced)."""


def footprint(transition: Transition) -> tuple[frozenset[str], frozenset[str]]:
    _, crash, label = transition
    if crash and label != "stripe.commit":
        return frozenset(), frozenset()  # the actor dies without touching anything shared
    return FOOTPRINTS.get(label, (EVERYTHING, EVERYTHING))


def independent(a: Transition, b: Transition) -> bool:
    """Whether the two steps commute in every state where both can be taken."""
    if a[0] == b[0] or (a[1] and b[1]):  # same actor; two crashes share the budget
        return False
    reads_a, writes_a = footprint(a)
    reads_b, writes_b = footprint(b)
    return not (writes_a & (reads_b | writes_b) or writes_b & reads_a)


@dataclass
class Node:
    """One step of the current path: what could run, what was run, what is asleep."""

    options: list[Transition]
    chosen: int
    sleep: frozenset[Transition]
    done: set[Transition] = field(default_factory=set)

    def child_sleep(self) -> frozenset[Transition]:
        taken = self.options[self.chosen]
        return frozenset(u for u in self.sleep | self.done if independent(u, taken))


class Scheduler:
    """Runs actors one at a time along a planned path, extending it depth first."""

    def __init__(
        self, plan: Sequence[Node] = (), *, crash_budget: int = 0, reduce: bool = True
    ) -> None:
        self.path: list[Node] = list(plan)
        self._planned = len(self.path)
        self._cv = threading.Condition()
        self._local = threading.local()
        self._actors: list[_Actor] = []
        self.crash_budget = crash_budget
        self.reduce = reduce
        self.crashes = 0
        self.blocked = False
        """Every enabled step was asleep: this run repeats an explored class."""
        self.schedule: list[str] = []
        """Each step, readable: ``release_1 db.insert_events`` or ``release_2 CRASH at ...``."""

    # -- inside actors -------------------------------------------------------

    def point(self, label: str) -> bool:
        """Stop here until picked; True if the pick is "crash here".

        Outside an actor thread (set-up, audits) it returns False at once.
        """
        actor: _Actor | None = getattr(self._local, "actor", None)
        if actor is None:
            return False
        with self._cv:
            actor.label = label
            actor.state = "waiting"
            self._cv.notify_all()
            if not self._cv.wait_for(lambda: actor.state == "granted", WATCHDOG_SECONDS):
                raise DeadlockError(f"{actor.name} was never picked at {label}")
            actor.state = "running"
            return actor.crash_now

    def hook(self, label: str, call: Callable[[], Any]) -> Any:
        """The ``harness.Hook`` form: stop at the point, then run the call (or die)."""
        if self.point(label):
            raise SimulatedCrash(f"before {label}")
        return call()

    # -- driving -------------------------------------------------------------

    def spawn(self, name: str, body: Callable[[], Any]) -> None:
        self._actors.append(_Actor(name, body))

    def run(self) -> dict[str, Outcome]:
        """Run every actor to its end, one step at a time; return what each did."""
        for actor in self._actors:
            actor.thread = threading.Thread(
                target=self._main, args=(actor,), name=f"actor-{actor.name}", daemon=True
            )
            actor.thread.start()
        depth = 0
        while True:
            with self._cv:
                settled = self._cv.wait_for(
                    lambda: all(a.state in ("waiting", "done") for a in self._actors),
                    WATCHDOG_SECONDS,
                )
                if not settled:
                    stuck = [f"{a.name}@{a.label}" for a in self._actors if a.state == "running"]
                    raise DeadlockError(f"actors did not reach a point: {stuck}")
                by_name = {a.name: a for a in self._actors if a.state == "waiting"}
                if not by_name:
                    break
                options: list[Transition] = [(a.name, False, a.label) for a in by_name.values()]
                if self.crashes < self.crash_budget:
                    options += [
                        (a.name, True, a.label) for a in by_name.values() if a.label != "start"
                    ]
                pick = self._choose(depth, options)
                name, crash, label = options[pick]
                actor = by_name[name]
                self.crashes += crash
                actor.crash_now = crash
                actor.state = "granted"
                self.schedule.append(f"{name} {'CRASH at ' if crash else ''}{label}")
                self._cv.notify_all()
            depth += 1
        for actor in self._actors:
            assert actor.thread is not None
            actor.thread.join(WATCHDOG_SECONDS)
        return {a.name: Outcome(a.result, a.error, a.crashed_at) for a in self._actors}

    def _choose(self, depth: int, options: list[Transition]) -> int:
        if depth < self._planned:
            node = self.path[depth]
            if node.options != options:
                raise NondeterminismError(f"step {depth}: {options} instead of {node.options}")
            return node.chosen
        if self.blocked:
            return 0  # finish a redundant run without extending the path
        parent = self.path[depth - 1] if depth else None
        sleep = parent.child_sleep() if (parent is not None and self.reduce) else frozenset()
        awake = [i for i, t in enumerate(options) if t not in sleep]
        if not awake:
            self.blocked = True
            return 0
        self.path.append(Node(options, awake[0], sleep))
        return awake[0]

    def _main(self, actor: _Actor) -> None:
        self._local.actor = actor
        try:
            self.point("start")
            actor.result = actor.body()
        except SimulatedCrash as exc:
            actor.crashed_at = str(exc)
        except BaseException as exc:
            actor.error = exc
        finally:
            with self._cv:
                actor.state = "done"
                self._cv.notify_all()


@dataclass
class Violation:
    """A run whose checks failed, with the schedule that produced it."""

    schedule: list[str]
    error: BaseException


@dataclass
class Exploration:
    """What an exploration covered."""

    runs: int = 0
    """Complete runs that were not redundant: with reduction, one per class of
    equivalent interleavings; without, every interleaving."""
    redundant_runs: int = 0
    """Runs cut short by the sleep sets (they repeat a class already run)."""
    runs_with_crash: int = 0
    steps: int = 0
    max_depth: int = 0
    max_branching: int = 0
    exhaustive: bool = False
    """Every class of interleavings was run (not stopped early)."""
    violations: list[Violation] = field(default_factory=list)


def explore(
    run_once: Callable[[Scheduler], None],
    *,
    crash_budget: int = 0,
    reduce: bool = True,
    stop_after_violations: int = 1,
    max_runs: int | None = None,
) -> Exploration:
    """Run ``run_once`` along every path of choices, depth first.

    ``run_once(scheduler)`` builds a fresh system, spawns its actors, calls
    ``scheduler.run()`` and checks the result, raising ``AssertionError`` on a
    violation (redundant runs are checked too). Exploration stops after
    ``stop_after_violations`` violations, or after ``max_runs`` runs if given
    (then ``exhaustive`` stays False).
    """
    found = Exploration()
    plan: list[Node] = []
    while True:
        scheduler = Scheduler(plan, crash_budget=crash_budget, reduce=reduce)
        try:
            run_once(scheduler)
        except AssertionError as exc:
            found.violations.append(Violation(list(scheduler.schedule), exc))
        path = scheduler.path
        if scheduler.blocked:
            found.redundant_runs += 1
        else:
            found.runs += 1
            found.runs_with_crash += scheduler.crashes > 0
        found.steps += len(scheduler.schedule)
        found.max_depth = max(found.max_depth, len(scheduler.schedule))
        found.max_branching = max([found.max_branching, *(len(n.options) for n in path)])
        if len(found.violations) >= stop_after_violations:
            return found
        if max_runs is not None and found.runs >= max_runs:
            return found
        # Backtrack: the deepest step with an alternative neither run nor asleep.
        while path:
            node = path[-1]
            node.done.add(node.options[node.chosen])
            untried = [
                i
                for i, t in enumerate(node.options)
                if t not in node.done and (not reduce or t not in node.sleep)
            ]
            if untried:
                node.chosen = untried[0]
                break
            path.pop()
        if not path:
            found.exhaustive = True
            return found
        plan = path
