# -*- test-case-name: tests.engine.test_transitions -*-
"""The engines' state machines: automat's TypeMachineBuilder, with named states and a list of transitions.

automat, rightly, gives no way to ask a machine which state it is in: the
machine decides, from its state, what an input does.  An engine still needs
its state's *name*, for status.json and its log lines, and its tests need the
list of transitions to check that they cover each.  So every transition is
declared through L{MachineBuilder.upon}, which records it and hands the
engine the name of the state it enters before the transition's behaviour runs
(as a tracer would, without automat's private one).

A state may carry data (L{MachineBuilder.state}'s ``enter``): made by automat
as the state is entered, given to ``leave`` as any transition leaves it, and
never seen by the behaviours, which stay alike for every state they serve.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar

from automat import TypeMachineBuilder

Name = TypeVar("Name", bound=StrEnum)
Inputs = TypeVar("Inputs")
Core = TypeVar("Core", bound="Named[Any]")
Data = TypeVar("Data")
P = ParamSpec("P")

#: A transition's behaviour: the machine (to feed later inputs), the engine, then the input's arguments.
Behaviour = Callable[Concatenate[Inputs, Core, P], None]


class Named(Protocol[Name]):
    """An engine as its machine sees it: it keeps the name of the state its machine is in."""

    state: Name


@dataclass(frozen=True)
class Transition:
    """One declared transition, by names: for tests and documentation."""

    old: str
    input: str
    new: str


@dataclass(frozen=True)
class State(Generic[Name]):
    """A state: its name, automat's state, and the hook that ends its data (None: it has none)."""

    name: Name
    automat: Any
    leave: Callable[[Any], None] | None


class MachineBuilder(Generic[Inputs, Core, Name]):
    """Declares an engine's machine (a TypeMachineBuilder) and builds it.

    The first state declared is the initial one.
    """

    def __init__(self, inputs: Callable[[], Inputs], core: type[Core]) -> None:
        """``inputs`` is the inputs' Protocol class, typed as automat types it (mypy holds a ``type[]``
        of a Protocol abstract)."""
        self._builder: TypeMachineBuilder[Inputs, Core] = TypeMachineBuilder(inputs, core)
        self._initial: Name | None = None
        self.transitions: list[Transition] = []

    def state(self, name: Name, enter: Callable[..., Data] | None = None,
              leave: Callable[[Data], None] | None = None) -> State[Name]:
        """A state named ``name``; with ``enter``, one with data: ``enter`` makes it (from the machine,
        the core, and the arguments of the input that enters the state), ``leave`` ends it."""
        if enter is None:
            if self._initial is None:
                self._initial = name
            return State(name, self._builder.state(name), None)
        assert leave is not None, f"{name}: a state's data must be ended when it is left"
        return State(name, self._builder.state(name, enter), leave)

    def upon(self, old: State[Name] | Iterable[State[Name]], input: Callable[Concatenate[Inputs, P], None],
             new: State[Name] | None = None,
             ) -> Callable[[Behaviour[Inputs, Core, P]], Behaviour[Inputs, Core, P]]:
        """Decorate the behaviour of ``input`` in ``old`` (a state, or several), which enters ``new``
        (by default, stays); decorators stack, so one behaviour may serve several transitions."""
        olds = [old] if isinstance(old, State) else list(old)

        def register(behaviour: Behaviour[Inputs, Core, P]) -> Behaviour[Inputs, Core, P]:
            for each in olds:
                self._register(each, input, new or each, behaviour)
            return behaviour

        return register

    def _register(self, old: State[Name], input: Callable[..., None], new: State[Name],
                  behaviour: Callable[..., None]) -> None:
        self.transitions.append(Transition(old.name, input.__name__, new.name))
        def entering(machine: Inputs, core: Core, *args: object) -> None:
            if old.leave is not None:  # automat hands a state's data first
                data, args = args[0], args[1:]
                if new is not old:
                    old.leave(data)
            core.state = new.name
            behaviour(machine, core, *args)

        entering.__name__ = behaviour.__name__
        old.automat.upon(input).to(new.automat)(entering)

    def build(self) -> Callable[[Core], Inputs]:
        """Finish the machine; returns what starts one for an engine, named in the initial state."""
        assert self._initial is not None, "a machine needs an initial state"
        machine, initial = self._builder.build(), self._initial

        def start(core: Core) -> Inputs:
            core.state = initial
            return machine(core)

        return start


def nothing(machine: object, core: object, /, *args: object, **named: object) -> None:
    """A transition that only changes the state (and so its name)."""
