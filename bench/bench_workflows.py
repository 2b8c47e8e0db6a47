"""A 3-step workflow with trivial handlers, so benchmarks measure the runtime, not the work."""

from workflows_admin.engine import Contract, Workflow

three_steps = Workflow("bench-3step", max_retries=0)
bench_v1 = three_steps.version("1.0.0", contract=Contract(required=("n",)))


def bump(ctx):
    ctx["n"] += 1
    return ctx


for name in ("one", "two", "three"):
    bench_v1.add_step(name, bump)
