"""The training step's schedule and time budget (train/trainer.py), on the Trainer's own state objects."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerControl, TrainerState, get_linear_schedule_with_warmup

from ocrloop.train.trainer import StepPlan, TimeBudget


def test_a_plan_that_is_not_moved_is_the_trainers_linear_schedule():
    plan = StepPlan(total_steps=50, warmup_steps=5)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    linear = get_linear_schedule_with_warmup(optimizer, 5, 50)
    for step in range(52):
        assert plan.factor(step) == pytest.approx(linear.lr_lambdas[0](step))


def test_a_moved_end_decays_from_where_the_rate_was_to_zero_at_the_new_end():
    plan = StepPlan(total_steps=100, warmup_steps=10)
    before = plan.factor(40)
    plan.end_at(60, step=40)
    assert plan.factor(40) == pytest.approx(before)  # no jump
    assert plan.factor(50) == pytest.approx(before / 2)
    assert plan.factor(60) == 0.0 and plan.factor(80) == 0.0
    assert plan.factor(5) == pytest.approx(0.5)  # the steps before are as they were


class StepClock:
    """A clock that says how long the steps took: ``seconds_per_step`` a step, so the budget's arithmetic is tested
    without timing anything."""

    def __init__(self, seconds_per_step: float):
        self.seconds_per_step, self.steps = seconds_per_step, 0

    def __call__(self) -> float:
        return self.steps * self.seconds_per_step


def run_steps(budget: TimeBudget, clock: StepClock, max_steps: int) -> TrainerState:
    """Step the callback as the Trainer would, until it (or the planned end) stops training."""
    state, control = TrainerState(max_steps=max_steps), TrainerControl()
    budget.on_train_begin(None, state, control)
    while not control.should_training_stop and state.global_step < state.max_steps:
        clock.steps += 1
        state.global_step += 1
        budget.on_step_end(None, state, control)
    return state


def test_a_time_budget_keeps_the_steps_that_fit_and_ends_the_schedule_there():
    clock = StepClock(seconds_per_step=0.5)
    plan = StepPlan(total_steps=1000, warmup_steps=100)
    budget = TimeBudget(120.0, plan, clock=clock)
    state = run_steps(budget, clock, 1000)
    # 0.5 s a step: 240 steps fit in 120 s. The first cut (at a tenth, step 100) already sees it.
    assert state.global_step == 240
    assert budget.cuts == [{"at_step": 100, "end": 240}]
    assert plan.total_steps == 240 and plan.factor(240) == 0.0
    assert budget.summary()["planned_steps"] == 1000


def test_a_run_that_fits_is_not_cut_and_a_slower_one_is_cut_again():
    clock = StepClock(seconds_per_step=0.1)
    budget = TimeBudget(120.0, StepPlan(1000, 100), clock=clock)
    assert run_steps(budget, clock, 1000).global_step == 1000 and budget.cuts == []

    class SlowingClock(StepClock):
        def __call__(self) -> float:  # steps after the 300th take four times as long
            return min(self.steps, 300) * 0.1 + max(0, self.steps - 300) * 0.4

    clock = SlowingClock(0.1)
    budget = TimeBudget(120.0, StepPlan(1000, 100), clock=clock)
    state = run_steps(budget, clock, 1000)
    assert len(budget.cuts) >= 2 and [c["end"] for c in budget.cuts] == sorted(c["end"] for c in budget.cuts)[::-1]
    assert clock() <= 120.0 + 0.4 * 50  # past the budget by less than the steps between two checks
    assert state.global_step == budget.cuts[-1]["end"]


def test_a_budget_already_spent_stops_at_the_first_cut():
    clock = StepClock(seconds_per_step=2.0)
    budget = TimeBudget(10.0, StepPlan(200, 0), clock=clock)
    assert run_steps(budget, clock, 200).global_step == 20
    assert budget.cuts == [{"at_step": 20, "end": 20}]
