"""Context profiles for the benchmarks, generated deterministically (the same bytes every run).

- small: about 150 bytes, the shape the benchmarks always used (a topic, a short text, an analysis);
- agent: what an agent pipeline carries, a transcript: a source text, a list of messages (user,
  assistant, tool calls with their outputs) and a few ids. Sizes are spread around a 4 KB median
  with a tail to 64 KB (three in a hundred at 32 to 64 KB), of text that compresses only partly: prose
  drawn from a vocabulary, with tool outputs that carry hex ids, numbers and base64-like blobs.

A pool of POOL contexts is generated once and the instances cycle through it (each gets its own
topic): generating a million 4 KB contexts in Python would cost more than the migration measured.
Every context holds `raw_text` (research-agent 1.0.0's contract) and `n` (bench-3step's).
"""

from __future__ import annotations

import json
import random
from functools import cache

POOL = 512
PROFILES = ("small", "agent")
_WORDS = (  # noqa: SIM905  (prose reads better than a list of words)
    "the model retrieved three sources about battery chemistry and compared their claims on cycle life "
    "while the user asked for a shorter summary with citations tool call returned search results ranked "
    "by relevance each snippet mentions lithium iron phosphate cathodes thermal runaway electrolyte "
    "additives solid state separators cost per kilowatt hour manufacturing yield recycling recovery rate "
    "assistant drafted an outline then revised it after reading the second paper which disagreed on "
    "degradation under fast charging because the test temperature differed by ten degrees"
).split()


def _prose(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def _blob(rng: random.Random, size: int) -> str:
    """Tool output that barely compresses: ids, figures and encoded bytes."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return "".join(rng.choice(alphabet) for _ in range(size))


def _target_size(rng: random.Random) -> int:
    if rng.random() < 0.03:
        return rng.randint(32 * 1024, 64 * 1024)  # the tail: a long transcript, a fetched page
    return int(min(max(rng.lognormvariate(0, 0.45) * 3300, 800), 24 * 1024))


def agent_context(index: int) -> dict:
    rng = random.Random(f"agent-{index}")
    size = _target_size(rng)
    text_share = rng.uniform(0.2, 0.4)
    messages, used = [], int(size * text_share)
    turn = 0
    while used < size:
        role = ("user", "assistant", "tool")[turn % 3]
        length = max(40, int(rng.expovariate(1 / 600)))
        if role == "tool":
            content = _prose(rng, length // 2) + " " + _blob(rng, length // 2)
            call_id = f"call_{rng.getrandbits(64):016x}"
            messages.append({"role": role, "name": "search", "call_id": call_id, "content": content})
        else:
            messages.append({"role": role, "content": _prose(rng, length)})
        used += length + 40
        turn += 1
    return {
        "topic": f"topic {index}",
        "raw_text": _prose(rng, int(size * text_share)),
        "messages": messages,
        "trace_id": f"{rng.getrandbits(128):032x}",
        "analysis": {"words": size // 6, "keywords": ["battery", "cathode"]},
        "n": 0,
    }


def small_context(index: int) -> dict:
    return {
        "topic": f"topic {index}",
        "raw_text": f"some research text number {index}",
        "analysis": {"words": 5, "keywords": ["research"]},
        "n": 0,
    }


def context(profile: str, index: int) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"BENCH_PROFILE: unknown context profile {profile!r}; one of {', '.join(PROFILES)}")
    return agent_context(index) if profile == "agent" else small_context(index)


@cache
def pool(profile: str) -> tuple[str, ...]:
    """POOL contexts of the profile, as JSON text."""
    return tuple(json.dumps(context(profile, i)) for i in range(POOL))


def describe(profile: str) -> str:
    sizes = sorted(len(text.encode()) for text in pool(profile))
    median, p99 = sizes[len(sizes) // 2], sizes[int(len(sizes) * 0.99)]
    return f"{profile} contexts: median {median:,} B, p99 {p99:,} B, max {sizes[-1]:,} B"


def profiles_to_run(env_value: str | None) -> tuple[str, ...]:
    """BENCH_PROFILE=small|agent (default: both, each against its own floor)."""
    if not env_value:
        return PROFILES
    chosen = tuple(part.strip() for part in env_value.split(",") if part.strip())
    for profile in chosen:
        context(profile, 0)  # validates the name
    return chosen
