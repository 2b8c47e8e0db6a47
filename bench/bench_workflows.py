"""A 3-step workflow with trivial handlers, so benchmarks measure the runtime, not the work."""

from workflows_admin.demo.research_agent import research_agent
from workflows_admin.engine import Contract, Version, Workflow

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


# Two versions with the same three steps and a migration between them, for the safe-point benchmark:
# pinned on 1.0.0 (plain steps), auto-upgrading to 2.0.0 at the first boundary, or migrated by a batch
# while some steps run (`pause` seconds in step "two").
upgrading = Workflow("bench-upgrade", max_retries=0)
upgrading_versions = [upgrading.version(label, contract=Contract(required=("n",))) for label in ("1.0.0", "2.0.0")]


def slow_bump(ctx):
    if ctx.get("pause"):
        import time

        time.sleep(float(ctx["pause"]))
    ctx["n"] += 1
    ctx.setdefault("ran", []).append(ctx.version + ":" + ctx.step)
    return ctx


for version in upgrading_versions:
    for name in ("one", "two", "three"):
        version.add_step(name, slow_bump if name == "two" else bump)


@upgrading.migration("1.0.0", "2.0.0")
def upgrade(context):
    return {**context, "upgraded": True}


# research-agent's 1.0.0 -> 2.0.0 (the same contracts and step), with its migration written as a
# function: what a batch costs when the migration is code, not declared operations, so its context
# is read out of PostgreSQL, migrated in Python and sent back.
function_agent = Workflow("bench-agent-function", max_retries=0)
for label, contract in (
    ("1.0.0", research_agent.versions[Version.parse("1.0.0")].contract),
    ("2.0.0", research_agent.versions[Version.parse("2.0.0")].contract),
):
    function_agent.version(label, contract=contract).add_step("summarize", bump)


@function_agent.migration("1.0.0", "2.0.0")
def raw_text_to_enriched_text(context):
    context["enriched_text"] = context.pop("raw_text")
    context.setdefault("sources", [])
    return context
