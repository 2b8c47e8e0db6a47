"""A 3-step workflow with trivial handlers, so benchmarks measure the runtime, not the work."""

from workflows_admin.engine import Contract, Workflow

three_steps = Workflow("bench-3step", max_retries=0)
bench_v1 = three_steps.version("1.0.0", contract=Contract(required=("n",)))


def bump(ctx):
    ctx["n"] += 1
    return ctx


for name in ("one", "two", "three"):
    bench_v1.add_step(name, bump)


# Ten versions of one workflow, for the dashboard benchmark.
ten_versions = Workflow("bench-10v", max_retries=0)
for major in range(1, 11):
    version = ten_versions.version(f"{major}.0.0", contract=Contract(required=("n",)))
    for name in ("one", "two", "three"):
        version.add_step(name, bump)
