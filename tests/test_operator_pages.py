"""The operator pages as an operator reads them (Django's test client): the dry-run, the batch page,
the confirmation steps, who started a batch, rollback states, 403 pages and the favicon."""

import re
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from workflows_admin.dashboard.diffs import diff_rows
from workflows_admin.workflows import selectors
from workflows_admin.workflows.cli.version_actions import cli_actor
from workflows_admin.workflows.models import BatchItem, MigrationBatch, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services import batches
from workflows_admin.workflows.services.instances import start_workflows

from .helpers import drain_steps, run_batch, waiting_instances

pytestmark = pytest.mark.django_db


def version(label, workflow="toy"):
    return WorkflowVersion.objects.get(workflow__name=workflow, version=label)


def preview(client, workflow, label, **form):
    url = reverse("dashboard:version_migrate", args=[version(label, workflow).pk])
    response = client.post(url, {"target": "2.0.0", **form})
    assert response.status_code == 200, response.content.decode()[:2000]
    return response.content.decode()


def section(html, selector):
    """The inner HTML of the element whose opening tag contains `selector` (no nesting of the same tag)."""
    match = re.search(rf"<(\w+)[^>]*{re.escape(selector)}[^>]*>(.*?)</\1>", html, re.S)
    return match.group(2) if match else None


@pytest.fixture
def page_client(client, operator, synced):
    client.force_login(operator)
    return client


# --- 15. the dry-run page -----------------------------------------------------------------------------
def test_a_dry_run_where_everything_fails_offers_no_migration_and_no_empty_headings(page_client):
    start_workflows("toy", [{"n": 1, "poison": True}], version="1.0.0")
    html = preview(page_client, "toy", "1.0.0")
    assert "data-would-fail" in html and 'name="confirm"' not in html  # nothing to confirm
    assert "None of the 1 selected instance would migrate" in html
    assert "Step mapping" not in html and "Examples" not in html
    assert "1 instances" not in html


def test_the_confirm_button_counts_what_would_migrate_in_proper_plurals(page_client):
    start_workflows("toy", [{"n": 1}, {"n": 2}, {"n": 3, "poison": True}], version="1.0.0")
    html = preview(page_client, "toy", "1.0.0")
    assert re.search(r'name="confirm" value="1">Migrate 2 instances</button>', html)
    assert "exactly these 3 instances are taken" in html
    assert "Step mapping" in html and "Examples" in html
    start_workflows("toy", [{"n": 4}], version="1.0.0")
    WorkflowInstance.objects.filter(context__poison=True).delete()
    WorkflowInstance.objects.filter(context__n__in=[2, 3]).delete()
    single = preview(page_client, "toy", "1.0.0")
    assert ">Migrate 2 instances<" in single  # n=1 and n=4
    WorkflowInstance.objects.filter(context__n=4).delete()
    one = preview(page_client, "toy", "1.0.0")
    assert ">Migrate 1 instance<" in one and "exactly this 1 instance is taken" in one


def test_the_pacing_chosen_is_shown_before_confirming_and_checked_at_the_dry_run(page_client):
    start_workflows("toy", [{"n": 1}], version="1.0.0")
    html = preview(
        page_client,
        "toy",
        "1.0.0",
        not_before="2030-01-02T03:04",
        rate_limit="8",
        canary_size="5",
        canary_max_failure_rate="10",
    )
    pacing = section(html, "data-pacing")
    assert "Starts at 2030-01-02 03:04 UTC" in pacing
    assert "at most 8 instances a second" in pacing
    assert "canary of the first 5 instances, then continue if at most 10% failed" in pacing
    assert "Starts at once" in section(preview(page_client, "toy", "1.0.0"), "data-pacing")
    drafts = MigrationBatch.objects.filter(state="draft").count()
    url = reverse("dashboard:version_migrate", args=[version("1.0.0").pk])
    refused = page_client.post(url, {"target": "2.0.0", "rate_limit": "0"})
    assert refused.status_code == 400 and "rate_limit must be a whole number" in refused.content.decode()
    assert MigrationBatch.objects.filter(state="draft").count() == drafts  # nothing frozen for it


def test_a_renamed_field_shows_as_a_rename_with_its_long_value_once_and_whole_on_demand(page_client):
    long_text = "word " * 300
    start_workflows("research-agent", [{"topic": "t", "raw_text": long_text}], version="1.0.0")
    html = preview(page_client, "research-agent", "1.0.0")
    rows = re.findall(r'<tr data-diff="(\w+)">(.*?)</tr>', html, re.S)
    kinds = {kind for kind, _ in rows}
    assert kinds == {"renamed", "added"}  # raw_text -> enriched_text; sources added
    renamed = next(row for kind, row in rows if kind == "renamed")
    assert "<code>raw_text</code> → <code>enriched_text</code>" in renamed
    assert renamed.count(long_text.strip()) == 1  # the whole value once, behind "show all"
    assert "data-full-value" in renamed and "characters: show all" in renamed


def test_diff_rows_pair_renames_by_json_value_not_python_equality():
    rows = diff_rows({"added": {"b": 1, "c": "x"}, "removed": {"a": True, "d": "x"}, "changed": {}})
    assert [(row["kind"], row["key"]) for row in rows] == [
        ("removed", "a"),
        ("added", "b"),
        ("renamed", "d"),
    ]
    assert rows[2]["new_key"] == "c"
    changed = diff_rows({"added": {}, "removed": {}, "changed": {"n": {"before": 1, "after": 2}}})
    assert changed == [
        {
            "kind": "changed",
            "key": "n",
            "before": {"text": "1", "preview": "1", "long": False, "length": 1},
            "after": {"text": "2", "preview": "2", "long": False, "length": 1},
        }
    ]


# --- 16. the batch page -------------------------------------------------------------------------------
def batch_page(client, batch):
    response = client.get(reverse("dashboard:batch", args=[batch.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_a_scheduled_batch_says_when_it_starts_not_running(page_client):
    waiting_instances(3)
    window = timezone.now() + timedelta(hours=2)
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", pacing={"not_before": window.isoformat()})
    assert batches.process_chunk(batch.pk) == "scheduled"
    state = section(batch_page(page_client, batch), "data-batch-state")
    assert state == f"Scheduled for {window:%Y-%m-%d %H:%M} UTC"
    poll = page_client.get(reverse("dashboard:batch", args=[batch.pk]), headers={"HX-Request": "true"})
    assert "Scheduled for" in poll.content.decode()
    MigrationBatch.objects.filter(pk=batch.pk).update(not_before=timezone.now() - timedelta(seconds=1))
    assert section(batch_page(page_client, batch), "data-batch-state") == "Running"


def test_the_rate_of_a_rate_limited_batch_never_reads_above_its_limit(page_client):
    """Chunks of 8 a second apart: 24 done when the third chunk ends 2 s after the first began.
    Measured to the last chunk's end that read 12/s under an 8/s limit; the 24 cover 3 s."""
    waiting_instances(40)
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", pacing={"rate_limit": 8})
    began = MigrationBatch.objects.get(pk=batch.pk).started_at
    for second in range(3):
        assert batches.process_chunk(batch.pk, now=began + timedelta(seconds=second), hand_on=False) == "handed on"
    batch.refresh_from_db()
    assert batch.processed == 24
    progress = selectors.batch_progress(batch)
    assert progress["rate_per_second"] == 8.0
    assert progress["eta_seconds"] == 2  # 16 left at 8/s
    assert "8.0 / s" in section(batch_page(page_client, batch), "data-rate")


def test_a_scheduled_batch_s_rate_counts_from_its_window_not_from_its_launch():
    launched = timezone.now() - timedelta(hours=1)
    batch = MigrationBatch(
        state="running",
        total=100,
        succeeded=50,
        started_at=launched,
        not_before=launched + timedelta(minutes=59, seconds=50),
        progressed_at=launched + timedelta(hours=1),
    )
    assert selectors.batch_progress(batch)["rate_per_second"] == 5.0  # 50 in 10 s, not in an hour


def test_zero_failures_are_not_red_and_counts_are_pluralised(page_client):
    waiting_instances(2)
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0").pk)
    html = batch_page(page_client, batch)
    assert "<span data-failed>0 failed</span>" in html
    assert "<span data-conflicts>0 conflicts</span>" in html
    WorkflowInstance.objects.update(status="completed", current_step="", revision=99)
    rollback = run_batch(batches.start_rollback(batch.pk).pk)
    html = batch_page(page_client, rollback)
    assert '<span class="bad" data-conflicts>2 conflicts</span>' in html


def test_a_rollback_conflict_names_no_empty_step_and_the_page_offers_the_forced_rollback(page_client, operator):
    started = start_workflows("toy", [{"n": 1}], version="1.0.0")
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0").pk)
    drain_steps([started[0].pk])  # it completes on 2.0.0: moved on since its migration
    assert WorkflowInstance.objects.get(pk=started[0].pk).status == "completed"
    rollback = run_batch(batches.start_rollback(batch.pk, actor=operator).pk)
    error = BatchItem.objects.get(batch=rollback).error
    assert "now completed)" in error and "at ''" not in error
    html = batch_page(page_client, rollback)
    assert "Roll back the 1 conflict with force" in html
    url = reverse("dashboard:batch_action", args=[rollback.pk])
    confirm = page_client.post(url, {"action": "force_conflicts"})
    assert confirm.status_code == 200 and "restored from its snapshot anyway" in confirm.content.decode()
    assert MigrationBatch.objects.filter(parent=batch).count() == 1  # nothing started before confirming
    response = page_client.post(url, {"action": "force_conflicts", "confirmed": "1"})
    forced = MigrationBatch.objects.get(parent=batch, force=True)
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:batch", args=[forced.pk])
    forced = run_batch(forced.pk)
    # Forced, it still does not reopen finished work (issue 15, item 2): skipped, with the reason.
    assert (forced.succeeded, forced.skipped) == (0, 1)
    assert WorkflowInstance.objects.get(pk=started[0].pk).version.version == "2.0.0"
    forced_url = reverse("dashboard:batch_action", args=[forced.pk])
    again = page_client.post(forced_url, {"action": "force_conflicts"})
    assert again.status_code == 409  # a forced rollback offers no second force: refused at once


@pytest.mark.parametrize("action", ["rollback", "cancel"])
def test_roll_back_and_cancel_ask_for_confirmation_first(page_client, action):
    waiting_instances(3)
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0")
    if action == "rollback":
        batch = run_batch(batch.pk)
    url = reverse("dashboard:batch_action", args=[batch.pk])
    before = list(MigrationBatch.objects.values_list("pk", "state").order_by("pk"))
    asked = page_client.post(url, {"action": action, "force": "1"})
    html = asked.content.decode()
    assert asked.status_code == 200 and f'data-confirm-page="{action}"' in html
    assert 'name="confirmed" value="1"' in html and 'href="/' in html  # confirm, or go back
    if action == "rollback":
        assert "The 3 instances it migrated to 2.0.0 go back to 1.0.0" in html and "Forced:" in html
        assert 'name="force" value="1"' in html  # carried to the confirmation
    else:
        assert "The 3 instances not processed yet stay as they are" in html
    assert list(MigrationBatch.objects.values_list("pk", "state").order_by("pk")) == before
    done = page_client.post(url, {"action": action, "force": "1", "confirmed": "1"})
    assert done.status_code == 302
    if action == "rollback":
        assert MigrationBatch.objects.get(parent=batch, kind="rollback").force
    else:
        assert MigrationBatch.objects.get(pk=batch.pk).state == "cancelled"


def test_an_action_the_rule_refuses_is_refused_before_any_confirmation(page_client):
    waiting_instances(2)
    running = batches.start_migration("toy", source="1.0.0", target="2.0.0")
    response = page_client.post(reverse("dashboard:batch_action", args=[running.pk]), {"action": "rollback"})
    assert response.status_code == 409 and "pause or cancel it" in response.content.decode()


def test_a_finished_rollback_shows_no_empty_actions_box(page_client):
    waiting_instances(2)
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0").pk)
    assert "data-actions" in batch_page(page_client, batch)  # Roll back is offered
    rollback = run_batch(batches.start_rollback(batch.pk).pk)
    assert rollback.state == "completed"
    assert "data-actions" not in batch_page(page_client, rollback)
    assert "Roll back" not in section(batch_page(page_client, batch), 'id="progress"')  # nothing left to undo


# --- 17. one rule per action, in the page and the service ----------------------------------------------
def test_a_paused_batch_shows_roll_back_as_the_service_accepts_it(page_client):
    waiting_instances(10)
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=4)
    assert batches.process_chunk(batch.pk, hand_on=False) == "more"
    batches.pause_batch(batch.pk)
    html = batch_page(page_client, batch)
    assert 'value="rollback"' in html and ">Resume<" in html and ">Pause<" not in html
    rollback = batches.start_rollback(batch.pk)
    assert rollback.total == 4


# --- 18. elsewhere ------------------------------------------------------------------------------------
def test_a_batch_started_from_the_cli_names_the_cli_user_as_the_audit_log_does(page_client):
    waiting_instances(2)
    call_command("workflows", "migrate", "toy", "--from", "1.0.0", "--to", "2.0.0", stdout=StringIO())
    batch = MigrationBatch.objects.get(kind="migrate")
    label = batch.auditevent_set.get(action="batch.started").actor_label
    assert label == cli_actor() and label.startswith("cli:")
    version_page = page_client.get(reverse("dashboard:version", args=[version("1.0.0").pk])).content.decode()
    assert section(version_page, "data-started-by") == label
    assert section(batch_page(page_client, batch), "data-started-by") == label
    run_batch(batch.pk)
    instance = BatchItem.objects.filter(batch=batch).first().instance_id
    history = page_client.get(reverse("dashboard:instance", args=[instance])).content.decode()
    assert f"<td>{label}</td>" in history and "<td>system</td>" not in history


def test_a_rolled_back_migration_says_so_on_its_version_page(page_client):
    waiting_instances(3)
    partly = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0").pk)
    one = BatchItem.objects.filter(batch=partly).order_by("pk").first().instance_id
    batches.rollback_instance(one)
    page = page_client.get(reverse("dashboard:version", args=[version("1.0.0").pk])).content.decode()
    assert section(page, "data-rolled-back") == "partly rolled back"
    run_batch(batches.start_rollback(partly.pk).pk)
    page = page_client.get(reverse("dashboard:version", args=[version("1.0.0").pk])).content.decode()
    assert section(page, "data-rolled-back") == "rolled back"
    assert section(batch_page(page_client, partly), "data-rolled-back") == "rolled back"


def test_a_403_page_has_the_navigation_and_names_the_missing_permission(client, django_user_model, synced):
    viewer = django_user_model.objects.create_user("viewer", password="pw-viewer-1")
    client.force_login(viewer)
    response = client.get(reverse("dashboard:overview"))
    html = response.content.decode()
    assert response.status_code == 403
    assert 'href="/audit/"' in html and "Log out" in html  # the site's frame, not Django's bare page
    assert section(html, "data-missing-permission") == "needs the permission workflows.view_dashboard"
    viewer.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
    client.force_login(viewer)
    url = reverse("dashboard:version_migrate", args=[version("1.0.0").pk])
    refused = client.get(url).content.decode()
    assert section(refused, "data-missing-permission") == "needs the permission workflows.migrate_instances"


def test_every_page_has_a_favicon(page_client):
    html = page_client.get(reverse("dashboard:overview")).content.decode()
    href = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', html).group(1)
    assert href.endswith("/favicon.svg")
    path = finders.find("favicon.svg")
    assert path and Path(path).read_text().lstrip().startswith("<svg")


def test_the_dry_run_says_what_each_hop_does_to_a_context(page_client, capsys):
    start_workflows("research-agent", [{"topic": "t", "raw_text": "x"}], version="1.0.0")
    url = reverse("dashboard:version_migrate", args=[version("1.0.0", "research-agent").pk])
    html = page_client.post(url, {"target": "2.1.0"}).content.decode()
    done = section(html, "data-operations")
    assert (
        "<strong>1.0.0-&gt;2.0.0</strong>: rename raw_text to enriched_text; add sources = [] where it is missing"
        in done
    )
    assert "<strong>2.0.0-&gt;2.1.0</strong>: add model_config = " in done
    start_workflows("toy", [{"n": 1}], version="1.0.0")
    toy = section(preview(page_client, "toy", "1.0.0"), "data-operations")
    assert "a function: what it does is in its code" in toy
    call_command("workflows", "migrate", "research-agent", "--from", "1.0.0", "--to", "2.0.0", "--dry-run")
    assert "  1.0.0->2.0.0: rename raw_text to enriched_text; add sources = [] where it is missing" in (
        capsys.readouterr().out
    )
