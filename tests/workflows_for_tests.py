"""Workflows used by the tests. The worker subprocess loads this module too (WORKFLOWS_MODULES)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from workflows_admin.engine import Contract, Wait, Workflow

toy = Workflow("toy", max_retries=2, retry_backoff=0.01)
toy.patch("new-greeting")

toy_v1 = toy.version("1.0.0", contract=Contract(required=("n",)))
toy_v2 = toy.version("2.0.0", contract=Contract(required=("n", "label")), patches=("new-greeting",))


def _marker_fail(ctx) -> None:
    """Fail while a per-instance countdown in the context is positive (to test retries)."""
    if ctx.get("fail_times", 0) >= ctx.attempt:
        raise RuntimeError(f"planned failure on attempt {ctx.attempt}")


def _side_effect(ctx, name: str) -> None:
    """A slow, paid, side-effecting step: it takes `slow_first` seconds, then appends a line to the
    context's `effects` file (an e-mail sent, a model billed), outside any transaction."""
    if ctx.get("slow_first"):
        time.sleep(float(ctx["slow_first"]))
    if ctx.get("effects"):
        with open(ctx["effects"], "a") as effects:
            effects.write(f"{ctx.instance_id} {name}\n")


@toy_v1.step("first")
def first_v1(ctx):
    _marker_fail(ctx)
    _side_effect(ctx, "v1.first")
    ctx.setdefault("trace", []).append("v1.first")
    ctx["n"] += 1
    return ctx


@toy_v1.step("second")
def second_v1(ctx):
    if ctx.get("wait"):
        return Wait("needs approval")
    seconds = float(ctx.get("sleep", 0) or os.environ.get("TOY_STEP_SECONDS", 0))
    if seconds:
        time.sleep(seconds)
    ctx.setdefault("trace", []).append("v1.second")
    ctx["n"] += 1
    return ctx


@toy_v2.step("first")
def first_v2(ctx):
    _side_effect(ctx, "v2.first")
    ctx.setdefault("trace", []).append("v2.first")
    ctx["n"] += 10
    return ctx


@toy_v2.step("middle", version="1.2.0")
async def middle_v2(ctx):
    ctx.setdefault("trace", []).append("v2.middle")
    ctx["greeting"] = "hello" if ctx.patched("new-greeting") else "hi"
    return ctx


@toy_v2.step("second")
def second_v2(ctx):
    seconds = float(ctx.get("sleep", 0) or os.environ.get("TOY_STEP_SECONDS", 0))
    if seconds:
        time.sleep(seconds)
    ctx.setdefault("trace", []).append("v2.second")
    ctx["n"] += 10
    return ctx


@toy.migration("1.0.0", "2.0.0")
def toy_up(context):
    if context.get("poison"):
        raise ValueError("poisoned context")
    # A migrator that takes its time (one calling a model, say), for tests that strike mid-batch.
    seconds = float(os.environ.get("TOY_MIGRATION_SECONDS", 0))
    if seconds:
        time.sleep(seconds)
    return {**context, "label": f"n={context['n']}"}


@toy.migration("2.0.0", "1.0.0", step_map={"middle": "second"})
def toy_down(context):
    return {k: v for k, v in context.items() if k != "label"}


def touch(path: str) -> None:
    Path(path).touch()
