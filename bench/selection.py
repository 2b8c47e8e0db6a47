"""Selection by query at 1,000,000 instances: the wizard's live count and a live batch's first chunk
(the next 500 matching instances in id order, as a chunk takes them) for each kind of query, with
the GIN index on context (jsonb_path_ops) and, as the baseline in the same run, without it; and what
the index costs a migration-sized UPDATE of contexts. Median of repeated runs, in milliseconds.

    python bench/selection.py [--quick]
"""

from __future__ import annotations

import statistics
import time

from common import print_table, setup_django, size, truncate, vacuum_analyze

INDEX = "instance_context_path_ops"
# The index is measured, not shipped: it made a migration's UPDATE of contexts about 2x slower
# (the figures below), and the product keeps batch throughput; this run builds it for the comparison.
CREATE_INDEX = (
    f"CREATE INDEX {INDEX} ON workflows_workflowinstance USING gin (context jsonb_path_ops) "
    "WHERE status IN ('pending', 'running', 'waiting', 'parked', 'failed')"
)
STATUSES = ["pending", "running", "waiting", "completed", "completed", "completed", "failed", "parked"]
STEPS = ["analyze", "enrich", "summarize"]
# (label, selection): from every in-flight instance down to a rare few.
QUERIES = [
    ("statuses only (counters)", {}),
    ("step = enrich (counters)", {"step": "enrich"}),
    ('where style = "shout" (1%)', {"where": 'model_config.style = "shout"'}),
    ('where style = "plain" (99%)', {"where": 'model_config.style = "plain"'}),
    ("where has needs_review (0.1%)", {"where": "has needs_review"}),
    ("where has sources (50%)", {"where": "has sources"}),
    ('where sources contains [".../b"] (0.5%)', {"where": 'sources contains ["https://example.org/wiki/b"]'}),
    ('step + where style = "shout"', {"step": "enrich", "where": 'model_config.style = "shout"'}),
    ('error "timeout" (failed, 10%)', {"error": "timeout"}),
]


def fill(total: int) -> None:
    """research-agent instances straight in SQL: 60% on 2.0.0 (the source measured), 20% each on 1.0.0
    and 2.1.0, over 8 statuses and 3 steps, with contexts that the queries above pick from."""
    from django.db import connection

    from workflows_admin.workflows.models import WorkflowVersion

    versions = {v.version: v for v in WorkflowVersion.objects.filter(workflow__name="research-agent")}
    spread = [versions["2.0.0"].pk] * 3 + [versions["1.0.0"].pk, versions["2.1.0"].pk]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workflows_workflowinstance
                (workflow_id, version_id, status, current_step, context, revision, attempt, start_key,
                 status_reason, patches, created_at, updated_at, move_pending)
            SELECT %s, (%s::bigint[])[1 + g %% 5], status, (%s::text[])[1 + (g / 7) %% 3],
                   jsonb_build_object('topic', 'bench', 'n', g, 'enriched_text', 'text of instance ' || g,
                                      'model_config', jsonb_build_object(
                                          'style', CASE WHEN g %% 101 = 3 THEN 'shout' ELSE 'plain' END))
                   || CASE WHEN g %% 2 = 0 THEN jsonb_build_object('sources', jsonb_build_array(
                          'https://example.org/wiki/a',
                          CASE WHEN g %% 200 = 0 THEN 'https://example.org/wiki/b'
                               ELSE 'https://example.org/wiki/c' END))
                      ELSE '{}'::jsonb END
                   || CASE WHEN g %% 1000 = 11 THEN '{"needs_review": true}'::jsonb ELSE '{}'::jsonb END,
                   1, 0, '',
                   CASE WHEN status <> 'failed' THEN ''
                        WHEN g %% 10 = 1 THEN 'RuntimeError: model Timeout after 30 s'
                        ELSE 'ValueError: bad input at step enrich' END,
                   '{}'::jsonb, now() - (g %% 5000) * interval '1 minute', now(), false
            FROM (SELECT g, (%s::text[])[1 + (g / 5) %% 8] AS status FROM generate_series(1, %s) AS g) AS rows
            """,
            [versions["2.0.0"].workflow_id, spread, STEPS, STATUSES, total],
        )


def median_ms(run, repeats: int) -> float:
    run()  # warm
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def measure(source, repeats: int) -> dict[str, tuple[float, float, int]]:
    from workflows_admin.workflows.services.batches.validation import parse_selection, selected_instances
    from workflows_admin.workflows.wizard_selectors import count_selection

    results = {}
    for label, raw in QUERIES:
        selection = parse_selection(raw)
        matched = count_selection(source, raw)
        count = median_ms(lambda raw=raw: count_selection(source, raw), repeats)
        chunk = median_ms(
            lambda selection=selection: list(selected_instances(source, selection).values_list("pk")[:500]), repeats
        )
        results[label] = (count, chunk, matched)
    return results


def update_ms(source, target, rows: int) -> float:
    """One statement moving `rows` in-flight instances (the indexed ones) to `target` with a new
    context, as a migration chunk does, rolled back."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        start = time.perf_counter()
        cursor.execute(
            "UPDATE workflows_workflowinstance SET version_id = %s, context = context || '{\"migrated\": true}'::jsonb "
            "WHERE id IN (SELECT id FROM workflows_workflowinstance WHERE version_id = %s "
            "AND status IN ('pending', 'running', 'waiting', 'parked') ORDER BY id LIMIT %s)",
            [target.pk, source.pk, rows],
        )
        elapsed = (time.perf_counter() - start) * 1000
        transaction.set_rollback(True)
    return elapsed


def explain(source, raw) -> str:
    from django.db import connection

    from workflows_admin.workflows.services.batches.validation import parse_selection, selected_instances

    sql, params = selected_instances(source, parse_selection(raw)).order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN SELECT count(*) FROM ({sql}) AS q", params)
        return " / ".join(line for (line,) in cursor.fetchall() if "Scan" in line or "Recheck" in line)


def main() -> None:
    setup_django()
    from django.db import connection

    from workflows_admin.workflows.models import WorkflowVersion
    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()
    total, repeats, chunk_rows = size(1_000_000, 50_000), size(5, 3), size(20_000, 2_000)
    truncate()
    fill(total)
    with connection.cursor() as cursor:
        cursor.execute(CREATE_INDEX)
    vacuum_analyze()
    source = WorkflowVersion.objects.get(workflow__name="research-agent", version="2.0.0")
    target = WorkflowVersion.objects.get(workflow__name="research-agent", version="2.1.0")
    with_index = measure(source, repeats)
    plans = {label: explain(source, raw) for label, raw in QUERIES if "where" in raw}
    update_with = statistics.median(update_ms(source, target, chunk_rows) for _ in range(repeats))
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX {INDEX}")
    vacuum_analyze()
    without = measure(source, repeats)
    update_without = statistics.median(update_ms(source, target, chunk_rows) for _ in range(repeats))
    truncate()

    rows = []
    for label, _ in QUERIES:
        count, chunk, matched = with_index[label]
        base_count, base_chunk, _ = without[label]
        rows.append(
            (
                label,
                f"{matched:>7,} match: count {count:7.1f} ms (no index {base_count:7.1f}), "
                f"first chunk {chunk:6.1f} ms (no index {base_chunk:6.1f})",
            )
        )
    rows.append(
        (
            f"UPDATE of {chunk_rows:,} contexts",
            f"{update_with:.0f} ms with the index, {update_without:.0f} ms without "
            f"(ratio {update_with / update_without:.2f})",
        )
    )
    for label, plan in plans.items():
        rows.append((f"plan: {label}", plan))
    print_table(f"Selection by query, {total:,} instances ({total * 3 // 5:,} on the source version)", rows)


if __name__ == "__main__":
    main()
