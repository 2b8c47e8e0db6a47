"""Know what a deploy will do: the version diff with live counts, verification on a stratified sample of
the live population, the rollout gate, and sync flagging code that changed shape under a label."""

import json
import math
import random
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from workflows_admin.engine import Contract, Registry, Workflow
from workflows_admin.engine.planning import plan_migration
from workflows_admin.engine.verification import Sample, VerificationReport, verify_samples
from workflows_admin.testing import check_migration
from workflows_admin.webhooks.models import WebhookDelivery, WebhookSubscription
from workflows_admin.workflows.checks import check_shapes
from workflows_admin.workflows.cli import exit_codes
from workflows_admin.workflows.models import AuditEvent, Rollout, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.runtime import get_registry
from workflows_admin.workflows.services import registry_sync, rollouts, verification
from workflows_admin.workflows.services.errors import InvalidInput
from workflows_admin.workflows.services.lifecycle import make_current

from .helpers import waiting_instances

pytestmark = pytest.mark.django_db
GATES = [{"metric": "step_failure_rate", "threshold": 0.1, "min_samples": 10}]

# --- a workflow whose migration fails only for old instances at one step ---------------------------
drafts = Workflow("drafts", max_retries=0)
drafts_v1 = drafts.version("1.0.0", contract=Contract(required=("n",)))
drafts_v2 = drafts.version("2.0.0", contract=Contract(required=("n", "title")))
for _name in ("collect", "draft", "publish"):
    drafts_v1.add_step(_name, lambda ctx: ctx)
    drafts_v2.add_step(_name, lambda ctx: ctx)


@drafts.migration("1.0.0", "2.0.0")
def drafts_up(context):
    # Written against today's drafts, {"title": ...}; instances that reached `draft` long ago hold the
    # free text drafts were before: this raises TypeError for them, and only for them.
    draft = context.get("draft")
    context["title"] = draft["title"] if draft is not None else ""
    return context


@drafts.migration("2.0.0", "1.0.0")
def drafts_down(context):
    context.pop("title", None)
    return context


TOTAL, OLD_BAD = 5000, 5


@pytest.fixture
def registered(synced):
    registry = get_registry()
    registry.register(drafts)
    registry_sync.sync_registry()
    yield
    registry.unregister("drafts")


def seed_drafts():
    """TOTAL in-flight instances of drafts 1.0.0 started in the last 20 hours over every step, and among
    them OLD_BAD started 30 days ago and waiting at `draft` with a draft of the old shape (plain text)."""
    version = WorkflowVersion.objects.get(workflow__name="drafts", version="1.0.0")
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workflows_workflowinstance
                (workflow_id, version_id, status, current_step, context, revision, attempt, start_key,
                 status_reason, patches, created_at, updated_at, move_pending)
            SELECT %s, %s, (ARRAY['waiting', 'pending'])[1 + g %% 2],
                   (ARRAY['collect', 'draft', 'publish'])[1 + g %% 3],
                   CASE WHEN g <= %s THEN jsonb_build_object('n', g, 'draft', 'old free text ' || g)
                        WHEN g %% 3 = 0 THEN jsonb_build_object('n', g)
                        ELSE jsonb_build_object('n', g, 'draft', jsonb_build_object('title', 't' || g)) END,
                   1, 0, '', '', '{}'::jsonb,
                   CASE WHEN g <= %s THEN now() - interval '30 days' ELSE now() - (g %% 1200) * interval '1 minute' END,
                   now(), false
            FROM generate_series(1, %s) AS g
            """,
            [version.workflow_id, version.pk, OLD_BAD, OLD_BAD, TOTAL],
        )
        # The old ones: all waiting at `draft` (the CASE above gave them the old shape).
        cursor.execute(
            "UPDATE workflows_workflowinstance SET status = 'waiting', current_step = 'draft' WHERE version_id = %s "
            "AND created_at < now() - interval '7 days'",
            [version.pk],
        )
    return version


def test_verify_catches_a_migrator_failing_only_for_old_instances_at_one_step(registered):
    seed_drafts()
    report = verification.verify("drafts", "2.0.0", sample=1000).as_dict()
    assert not report["ok"] and report["failed"] == OLD_BAD
    assert report["checked"] <= 1000
    [group] = report["failures"]
    assert group["cause"] == "forward: migrator 1.0.0->2.0.0 raised TypeError"
    assert group["strata"] == ["1.0.0/draft/waiting/>=7d"]
    assert group["examples"][0]["message"].startswith("migrator 1.0.0->2.0.0 raised TypeError")
    # Every stratum of the live population is represented, at least 5 each where it has them.
    sampled = {(s["step"], s["status"], s["age"]): s["sampled"] for s in report["strata"]}
    for step in ("collect", "draft", "publish"):
        for status in ("waiting", "pending"):
            for age in ("<1h", "1h-1d"):
                assert sampled[(step, status, age)] >= 5
    assert sampled[("draft", "waiting", ">=7d")] == OLD_BAD
    assert report["paths"] == {"1.0.0": {"forward": ["1.0.0", "2.0.0"], "back": ["2.0.0", "1.0.0"]}}


def test_a_uniform_one_percent_sample_would_miss_it(registered):
    version = seed_drafts()
    rows = list(WorkflowInstance.objects.filter(version=version).values_list("pk", "current_step", "context"))
    size = len(rows) // 100
    # The chance that a uniform 1% sample holds one of the 5 at all: under 5%.
    miss = math.comb(TOTAL - OLD_BAD, size) / math.comb(TOTAL, size)
    assert 1 - miss < 0.05
    # And one such sample, run through the same verification, passes.
    chosen = random.Random(17).sample(rows, size)
    plans = {"1.0.0": (plan_migration(drafts, "1.0.0", "2.0.0"), plan_migration(drafts, "2.0.0", "1.0.0"))}
    uniform = verify_samples(
        VerificationReport("drafts", "2.0.0"),
        plans,
        (Sample(pk, "1.0.0", step, "waiting", "any", context) for pk, step, context in chosen),
    )
    assert uniform.checked == 50 and uniform.ok


def test_verify_command_exits_non_zero_with_the_grouped_report(registered, capsys):
    seed_drafts()
    with pytest.raises(CommandError) as refused:
        call_command("workflows", "verify", "drafts", "--to", "2.0.0", "--sample", "500", "--json")
    assert refused.value.returncode == exit_codes.VERIFY_FAILED
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == OLD_BAD and report["failures"][0]["count"] == OLD_BAD
    assert report["checked"] <= 500
    # Bad input names the field.
    with pytest.raises(CommandError, match=r"\[sample\]") as bad:
        call_command("workflows", "verify", "drafts", "--to", "2.0.0", "--sample", "0")
    assert bad.value.returncode == exit_codes.BAD_INPUT
    with pytest.raises(CommandError, match=r"\[version\]"):
        call_command("workflows", "verify", "drafts", "--to", "9.0.0")


def test_verify_passes_and_exits_zero_on_the_young_population(registered, capsys):
    seed_drafts()
    WorkflowInstance.objects.filter(created_at__lt=timezone.now() - timedelta(days=7)).delete()
    call_command("workflows", "verify", "drafts", "--to", "2.0.0")
    out = capsys.readouterr().out
    assert "verify drafts -> 2.0.0: ok" in out and "0 failed" in out


def test_the_sampler_uses_the_index_and_a_bounded_number_of_small_queries(registered):
    seed_drafts()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE workflows_workflowinstance")
    statements = []

    def record(execute, sql, params, many, context):
        statements.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        report = verification.verify("drafts", "2.0.0", sample=1000)
    probes = [(sql, params) for sql, params in statements if "ORDER BY created_at DESC" in sql]
    strata = {(s.step, s.status) for s in report.strata}
    assert len(strata) == 6
    # A probe per (stratum, age bucket) and a second for the buckets with more: never a GROUP BY over instances.
    assert len(probes) <= 6 * 4 * 2
    assert not [sql for sql, _ in statements if "GROUP BY" in sql and "workflows_instancecount" not in sql]
    sql, params = probes[0]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "instance_version_status_age" in plan and "Seq Scan" not in plan


def test_check_migration_uses_the_same_sampler(registered):
    seed_drafts()
    with pytest.raises(AssertionError, match=rf"fails for {OLD_BAD} of \d+ context\(s\)") as failed:
        check_migration("drafts", "1.0.0", "2.0.0", from_database=1000)
    assert "raised TypeError" in str(failed.value)


# --- the diff ------------------------------------------------------------------------------------------
def test_diff_counts_the_in_flight_instances_on_each_affected_step(synced, capsys):
    from workflows_admin.workflows.services.instances import start_workflows

    context = {"topic": "t", "enriched_text": "x", "sources": []}
    instances = start_workflows("research-agent", [context] * 3, version="2.0.0")
    WorkflowInstance.objects.filter(pk__in=[i.pk for i in instances]).update(current_step="enrich")
    diff = verification.version_diff("research-agent", source="2.0.0", target="1.0.0")
    assert diff["classification"] == "breaking"
    [step] = diff["affected_steps"]
    assert (step["step"], step["change"], step["destination"], step["in_flight"]) == (
        "enrich",
        "removed",
        "summarize",
        3,
    )
    assert (
        step["sentence"] == "3 instances sit on `enrich`, which 1.0.0 removes; the step map sends them to `summarize`"
    )
    call_command("workflows", "diff", "research-agent", "2.0.0", "1.0.0")
    out = capsys.readouterr().out
    assert "research-agent 2.0.0 -> 1.0.0: breaking" in out and "3 instances sit on `enrich`" in out
    assert "  2.0.0->1.0.0: a function (what it does is in its code)" in out
    call_command("workflows", "diff", "research-agent", "1.0.0", "2.1.0")
    out = capsys.readouterr().out
    assert "  1.0.0->2.0.0: rename raw_text to enriched_text; add sources = [] where it is missing" in out
    with pytest.raises(CommandError, match=r"\[version\]"):
        call_command("workflows", "diff", "research-agent", "2.0.0", "2.0.0")


def test_the_version_page_and_the_migrate_wizard_show_the_diff(synced, client, operator):
    client.force_login(operator)
    v1 = WorkflowVersion.objects.get(workflow__name="research-agent", version="1.0.0")
    page = client.get(reverse("dashboard:version", args=[v1.pk]) + "?compare=2.0.0").content.decode()
    assert 'data-diff-classification="breaking"' in page and "step &#x27;enrich&#x27; added" in page
    assert "<strong>1.0.0-&gt;2.0.0</strong>: rename raw_text to enriched_text;" in page  # what the move does
    from workflows_admin.workflows.services.instances import start_workflows

    start_workflows("research-agent", [{"topic": "t", "raw_text": "x"}], version="1.0.0")
    preview = client.post(reverse("dashboard:version_migrate", args=[v1.pk]), {"target": "2.0.0", "preview": "1"})
    assert preview.status_code == 200
    assert 'data-diff-classification="breaking"' in preview.content.decode()
    assert "data-diff-operations" not in preview.content.decode()  # the dry-run lists them once, above


# --- the rollout gate ----------------------------------------------------------------------------------
@pytest.fixture
def drafts_on_v1(registered):
    make_current(WorkflowVersion.objects.get(workflow__name="drafts", version="1.0.0"))
    seed_drafts()


def test_a_rollout_is_refused_on_a_failed_verification(drafts_on_v1, operator):
    with pytest.raises(verification.VerificationFailed) as refused:
        rollouts.start_rollout("drafts", "2.0.0", strategy="linear", gates=GATES, actor=operator)
    assert refused.value.status_code == 409 and refused.value.report["failed"] == OLD_BAD
    assert not Rollout.objects.exists()
    assert WorkflowVersion.objects.get(workflow__name="drafts", version="2.0.0").state != "ramping"
    event = AuditEvent.objects.get(action="rollout.refused")
    assert event.actor == operator and "TypeError" in event.details["failures"][0]["cause"]


def test_a_rollout_started_with_an_audited_skip(drafts_on_v1, operator):
    with pytest.raises(InvalidInput, match="needs a reason"):
        rollouts.start_rollout("drafts", "2.0.0", strategy="linear", gates=GATES, actor=operator, skip_verification=" ")
    rollout = rollouts.start_rollout(
        "drafts", "2.0.0", strategy="linear", gates=GATES, actor=operator, skip_verification="old drafts fixed by hand"
    )
    skipped = AuditEvent.objects.get(action="rollout.verify_skipped")
    assert (skipped.actor, skipped.details["reason"]) == (operator, "old drafts fixed by hand")
    first = rollout.events.order_by("at", "id").first()
    assert first.decision == "verify_skipped" and "operator: old drafts fixed by hand" in first.message


def test_a_passing_verification_is_on_the_timeline(registered, operator, client):
    make_current(WorkflowVersion.objects.get(workflow__name="drafts", version="1.0.0"))
    rollout = rollouts.start_rollout("drafts", "2.0.0", strategy="linear", gates=GATES, actor=operator)
    assert [e.decision for e in rollout.events.order_by("at", "id")][:2] == ["verify", "start"]
    client.force_login(operator)
    page = client.get(reverse("dashboard:rollout", args=[rollout.pk])).content.decode()
    assert 'data-verification="verify"' in page and "verification passed" in page


def test_the_rollout_gate_from_the_cli_and_the_dashboard(drafts_on_v1, operator, client, capsys):
    with pytest.raises(CommandError) as refused:
        call_command("workflows", "rollout", "start", "drafts", "2.0.0", "--gate", "step_failure_rate<=0.1")
    assert refused.value.returncode == exit_codes.VERIFY_FAILED
    assert "FAILED 5x forward: migrator 1.0.0->2.0.0 raised TypeError" in capsys.readouterr().out
    client.force_login(operator)
    url = reverse(
        "dashboard:rollout_start", args=[WorkflowVersion.objects.get(version="2.0.0", workflow__name="drafts").pk]
    )
    form = {"strategy": "linear", "gates": "step_failure_rate<=0.1", "on_breach": "keep"}
    page = client.post(url, form)
    assert page.status_code == 409
    body = page.content.decode()
    assert 'data-verification="failed"' in body and "raised TypeError" in body
    started = client.post(url, {**form, "skip_verification": "1", "skip_reason": "accepted: old drafts get fixed"})
    assert started.status_code == 302
    assert AuditEvent.objects.get(action="rollout.verify_skipped").actor == operator


# --- sync and a label whose code changed shape -------------------------------------------------------
def _shapes(steps):
    workflow = Workflow("shapes")
    version = workflow.version("1.0.0", contract=Contract(required=("n",)))
    for step in steps:
        version.add_step(step, lambda ctx: ctx)
    registry = Registry()
    registry.register(workflow)
    return registry


def _in_flight_label_whose_code_becomes(steps, monkeypatch) -> WorkflowVersion:
    """shapes 1.0.0 registered with steps fetch, write and one instance waiting at write; this
    process's code then has `steps` under the same label (not synced yet)."""
    registry_sync.sync_registry(_shapes(["fetch", "write"]))
    row = WorkflowVersion.objects.get(workflow__name="shapes")
    now = timezone.now()
    WorkflowInstance.objects.create(
        workflow_id=row.workflow_id,
        version=row,
        status="waiting",
        current_step="write",
        context={"n": 1},
        created_at=now,
        updated_at=now,
    )
    changed = _shapes(steps)
    monkeypatch.setattr(registry_sync, "get_registry", lambda: changed)
    return row


def test_a_label_whose_code_changed_shape_with_instances_in_flight_is_flagged(synced, client, operator, monkeypatch):
    row = _in_flight_label_whose_code_becomes(["fetch", "review", "write"], monkeypatch)
    WebhookSubscription.objects.create(url="http://127.0.0.1:9/", events=["version.shape_changed"], secret="s")
    # Before any sync: manage.py check warns.
    [warning] = check_shapes()
    assert warning.id == "workflows.W001" and "step 'review' added" in warning.msg
    # The sync flags it loudly: a non-zero exit, the flag on the row, an audit event, a banner.
    with pytest.raises(CommandError, match="changed shape") as failed:
        call_command("workflows", "sync")
    assert failed.value.returncode == exit_codes.SHAPE_CHANGED
    row.refresh_from_db()
    assert row.shape_change["in_flight"] == 1 and row.registered_shape["steps"][1]["name"] == "write"
    assert AuditEvent.objects.filter(action="version.shape_changed").count() == 1
    delivery = WebhookDelivery.objects.get(event="version.shape_changed")  # a pipeline subscribed hears it
    assert "step 'review' added" in delivery.payload["message"]
    client.force_login(operator)
    assert 'data-shape-version="1.0.0"' in client.get(reverse("dashboard:overview")).content.decode()
    # Once nothing is in flight on it, the new shape becomes the label's own and the flag clears.
    WorkflowInstance.objects.filter(version=row).update(status="completed")
    call_command("workflows", "sync")
    row.refresh_from_db()
    assert row.shape_change == {} and [s["name"] for s in row.registered_shape["steps"]] == ["fetch", "review", "write"]
    assert check_shapes() == []


def test_an_operator_acknowledges_a_shape_change_with_a_reason_and_sync_goes_quiet(
    synced, client, operator, monkeypatch, django_user_model
):
    row = _in_flight_label_whose_code_becomes(["fetch", "write", "notify"], monkeypatch)
    with pytest.raises(CommandError):
        call_command("workflows", "sync")
    url = reverse("dashboard:version_lifecycle", args=[row.pk])
    client.force_login(operator)
    page = client.get(reverse("dashboard:version", args=[row.pk])).content.decode()
    assert "data-acknowledge-shape" in page
    # No reason: refused naming the field, nothing changes.
    refused = client.post(url, {"action": "acknowledge_shape", "reason": "  "})
    assert refused.status_code == 400 and "needs a reason" in refused.content.decode()
    row.refresh_from_db()
    assert row.shape_change["in_flight"] == 1
    # Someone without change_lifecycle: 403.
    viewer = django_user_model.objects.create_user("viewer-only", password="pw-viewer-1")
    client.force_login(viewer)
    assert client.post(url, {"action": "acknowledge_shape", "reason": "fine"}).status_code == 403
    client.force_login(operator)
    done = client.post(url, {"action": "acknowledge_shape", "reason": "notify is appended after write"})
    assert done.status_code == 302
    row.refresh_from_db()
    assert row.shape_change == {} and [s["name"] for s in row.registered_shape["steps"]] == ["fetch", "write", "notify"]
    event = AuditEvent.objects.get(action="version.shape_acknowledged")
    assert event.actor == operator and event.details["reason"] == "notify is appended after write"
    assert "step 'notify' added" in event.message
    call_command("workflows", "sync")  # exit 0: the label's baseline is the new shape
    assert check_shapes() == []
    assert 'data-shape-version="1.0.0"' not in client.get(reverse("dashboard:overview")).content.decode()
    # Nothing left to acknowledge: refused, exit 2.
    with pytest.raises(CommandError, match="no shape change to acknowledge") as again:
        call_command("workflows", "acknowledge-shape", "shapes", "1.0.0", "--reason", "again")
    assert again.value.returncode == exit_codes.BAD_INPUT


def test_an_unchanged_or_idle_label_is_not_flagged(synced, monkeypatch):
    registry_sync.sync_registry(_shapes(["fetch", "write"]))
    assert registry_sync.sync_registry(_shapes(["fetch", "write"])).shape_changed == {}
    # Changed, but nothing in flight on it: no instance can run on the wrong code.
    assert registry_sync.sync_registry(_shapes(["write"])).shape_changed == {}


def test_the_version_page_verifies_on_demand_before_any_rollout(synced, client, operator):
    waiting_instances(3)
    WorkflowInstance.objects.filter(pk=WorkflowInstance.objects.order_by("pk")[0].pk).update(
        context={"n": 1, "poison": True}
    )
    client.force_login(operator)
    events = AuditEvent.objects.count()
    url = reverse("dashboard:version", args=[WorkflowVersion.objects.get(workflow__name="toy", version="2.0.0").pk])
    assert "data-verify-form" in client.get(url).content.decode()
    assert 'data-verification="' not in client.get(url).content.decode()  # only when asked: it reads instances
    page = client.get(url, {"verify": "1", "sample": "50"})
    body = page.content.decode()
    assert page.status_code == 200 and 'data-verification="failed"' in body
    assert "3 instance(s) in 1 stratum from 1.0.0: 2 passed, 1 failed" in body and "poisoned context" in body
    refused = client.get(url, {"verify": "1", "sample": "lots"})
    assert refused.status_code == 400 and "data-verify-error" in refused.content.decode()
    assert AuditEvent.objects.count() == events  # a read: nothing written
