"""The training step's schedule and time budget (train/trainer.py), on the Trainer's own state objects."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerControl, TrainerState, get_linear_schedule_with_warmup

from ocrloop.train.trainer import LengthGroupedSampler, StepPlan, TimeBudget


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


def padded_share(order: list[int], lengths: list[int], batch_size: int) -> float:
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return 1 - sum(lengths[i] for i in order) / sum(max(lengths[i] for i in b) * len(b) for b in batches)


def test_length_grouped_batches_pad_less_and_hold_every_page_once_in_an_order_of_seed_and_epoch():
    generator = torch.Generator().manual_seed(0)
    # two kinds of page, as receipts and invoices differ: short and long token sequences, mixed
    lengths = [int(x) for x in torch.cat([torch.randint(300, 400, (700,)), torch.randint(900, 1200, (301,))])[
        torch.randperm(1001, generator=generator)]]
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1001)) and len(sampler) == 1001
    shuffled = torch.randperm(1001, generator=generator).tolist()
    assert padded_share(order, lengths, 16) < padded_share(shuffled, lengths, 16) / 3
    # the batches come in random order, not from the longest pages to the shortest
    maxima = [max(lengths[i] for i in order[s:s + 16]) for s in range(0, 1000 - 16 + 1, 16)]
    assert maxima != sorted(maxima, reverse=True) and maxima != sorted(maxima)
    # the one partial batch (1001 = 62 x 16 + 9) is last, so every full batch stays one group
    assert len(order[62 * 16:]) == 9
    assert list(LengthGroupedSampler(lengths, 16, seed=3)) == order  # every process draws the same
    sampler.set_epoch(1)
    assert list(sampler) != order and sorted(sampler) == list(range(1001))
