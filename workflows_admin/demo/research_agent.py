"""The demo workflow from the seed article: a research agent in three versions.

Deterministic: the "model" is a fake that transforms text, so the demo needs no network and no LLM.
`RESEARCH_AGENT_STEP_SECONDS` slows each step down so an operator can watch instances move in the demo.
"""

from __future__ import annotations

import os
import time
from typing import Any

from workflows_admin.engine import Contract, Wait, Workflow, default, rename

research_agent = Workflow(
    "research-agent",
    description="Analyzes a text, optionally enriches it with sources, and summarizes it.",
    max_retries=3,
    retry_backoff=1.0,
)
research_agent.patch("cite-sources", "summaries list their sources inline instead of in a footer")


def _pause() -> None:
    seconds = float(os.environ.get("RESEARCH_AGENT_STEP_SECONDS", "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


def fake_model(prompt: str, *, style: str = "plain") -> str:
    """A stand-in for an LLM: the first words of the prompt, reshaped by style."""
    words = prompt.split()
    head = " ".join(words[:12])
    return head.upper() if style == "shout" else head


def keywords(text: str, limit: int = 5) -> list[str]:
    seen: list[str] = []
    for word in text.lower().split():
        word = word.strip(".,;:!?()\"'")
        if len(word) > 4 and word not in seen:
            seen.append(word)
    return seen[:limit]


def _review_gate(ctx) -> Wait | None:
    """Instances asking for review wait for a human signal before they are summarized."""
    if ctx.get("needs_review") and "review" not in ctx:
        return Wait("waiting for a human review: signal {'review': 'approved'}")
    return None


# --- 1.0.0: analyze, summarize on the raw text -------------------------------------------------
v1 = research_agent.version(
    "1.0.0",
    contract=Contract(
        required=("topic", "raw_text"),
        schema={
            "type": "object",
            "properties": {"topic": {"type": "string"}, "raw_text": {"type": "string"}},
        },
    ),
    description="The first release: analysis and summary of the raw text.",
)


@v1.step("analyze")
def analyze_v1(ctx):
    _pause()
    ctx["analysis"] = {"words": len(ctx["raw_text"].split()), "keywords": keywords(ctx["raw_text"])}
    return ctx


@v1.step("summarize")
def summarize_v1(ctx):
    _pause()
    waiting = _review_gate(ctx)
    if waiting:
        return waiting
    ctx["summary"] = fake_model(f"{ctx['topic']}: {ctx['raw_text']}")
    return ctx


# --- 2.0.0: adds an enrich step; raw_text becomes enriched_text, sources appear ------------------
_V2_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "topic": {"type": "string"},
        "enriched_text": {"type": "string"},
        "sources": {"type": "array", "items": {"type": "string"}},
    },
}
v2 = research_agent.version(
    "2.0.0",
    contract=Contract(required=("topic", "enriched_text", "sources"), schema=_V2_SCHEMA),
    description="Adds enrichment with sources between analysis and summary.",
    patches=("cite-sources",),  # _summarize_v2 checks it
)


def _analyze_v2(ctx):
    _pause()
    ctx["analysis"] = {"words": len(ctx["enriched_text"].split()), "keywords": keywords(ctx["enriched_text"])}
    return ctx


def _enrich(ctx):
    _pause()
    found = [f"https://example.org/wiki/{word}" for word in ctx.get("analysis", {}).get("keywords", [])[:3]]
    ctx["sources"] = sorted(set(ctx.get("sources", [])) | set(found))
    ctx["enriched_text"] = ctx["enriched_text"].rstrip() + f" [enriched with {len(ctx['sources'])} sources]"
    return ctx


def _summarize_v2(ctx, style: str = "plain"):
    _pause()
    waiting = _review_gate(ctx)
    if waiting:
        return waiting
    summary = fake_model(f"{ctx['topic']}: {ctx['enriched_text']}", style=style)
    if ctx["sources"]:
        if ctx.patched("cite-sources"):
            summary += " (sources: " + ", ".join(ctx["sources"]) + ")"
        else:
            summary += f"\n\n{len(ctx['sources'])} sources consulted."
    ctx["summary"] = summary
    return ctx


v2.add_step("analyze", _analyze_v2)
v2.add_step("enrich", _enrich)
v2.add_step("summarize", _summarize_v2)

# --- 2.1.0: the same steps, with a model configuration ------------------------------------------
v21 = research_agent.version(
    "2.1.0",
    contract=Contract(
        required=("topic", "enriched_text", "sources", "model_config"),
        schema={
            **_V2_SCHEMA,
            "properties": {**_V2_SCHEMA["properties"], "model_config": {"type": "object"}},
        },
    ),
    description="Makes the model configurable per instance.",
    patches=("cite-sources",),  # its summarize runs _summarize_v2 too
)
v21.add_step("analyze", _analyze_v2)
v21.add_step("enrich", _enrich, step_version="1.1.0")


@v21.step("summarize", version="1.1.0")
def summarize_v21(ctx):
    return _summarize_v2(ctx, style=ctx["model_config"].get("style", "plain"))


# --- migrations ------------------------------------------------------------------------------
# Declared: what they do is shown before they run, and a batch runs them in SQL (see README).
research_agent.declare_migration("1.0.0", "2.0.0", rename("raw_text", "enriched_text"), default("sources", []))
research_agent.declare_migration(
    "2.0.0", "2.1.0", default("model_config", {"model": "fake-model", "temperature": 0.0, "style": "plain"})
)


# A function, for what operations cannot say (here they could: the demo shows both ways).
@research_agent.migration("2.0.0", "1.0.0", step_map={"enrich": "summarize"})
def enriched_text_back_to_raw_text(context: dict) -> dict:
    context["raw_text"] = context.pop("enriched_text")
    context.pop("sources", None)
    return context
