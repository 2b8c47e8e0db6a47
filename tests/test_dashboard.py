"""Operator pages with Django's test client: content, permissions, CSRF, errors, admin actions, metrics."""

import re

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from workflows_admin.workflows.models import AuditEvent, MigrationBatch, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.selectors import status_counts_by_version
from workflows_admin.workflows.services import batches
from workflows_admin.workflows.services.instances import start_workflow, start_workflows

from .helpers import drain_steps, run_batch

pytestmark = pytest.mark.django_db


def version(label, workflow="toy"):
    return WorkflowVersion.objects.get(workflow__name=workflow, version=label)


@pytest.fixture
def viewer(django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw-viewer-1")
    user.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
    return user


@pytest.fixture
def data(synced):
    started = start_workflows("toy", [{"n": i} for i in range(12)], version="1.0.0")
    drain_steps([started[0].pk])
    waiting = start_workflow("toy", {"n": 0, "wait": True}, version="1.0.0")
    drain_steps([waiting.pk])
    batch = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", selection={"ids": [started[1].pk, started[2].pk]}
    )
    run_batch(batch.pk)
    return {"instance": started[3], "waiting": waiting, "batch": batch}


def pages(data):
    return [
        reverse("dashboard:overview"),
        reverse("dashboard:version", args=[version("1.0.0").pk]),
        reverse("dashboard:batch", args=[data["batch"].pk]),
        reverse("dashboard:instance", args=[data["instance"].pk]),
        reverse("dashboard:audit"),
        reverse("dashboard:cleanup"),
        reverse("dashboard:version_migrate", args=[version("1.0.0").pk]),
    ]


def mutations(data):
    v1, batch, instance = version("1.0.0"), data["batch"], data["instance"]
    return [
        (reverse("dashboard:version_lifecycle", args=[v1.pk]), {"action": "drain"}),
        (reverse("dashboard:version_migrate", args=[v1.pk]), {"target": "2.0.0"}),
        (reverse("dashboard:batch_action", args=[batch.pk]), {"action": "rollback"}),
        (reverse("dashboard:batch_action", args=[batch.pk]), {"action": "pause"}),
        (reverse("dashboard:instance_action", args=[instance.pk]), {"action": "migrate", "target": "2.0.0"}),
        (reverse("dashboard:instance_action", args=[instance.pk]), {"action": "cancel"}),
        (reverse("dashboard:instance_action", args=[data["waiting"].pk]), {"action": "signal", "payload": "{}"}),
    ]


def test_anonymous_users_are_sent_to_login(client, data):
    for url in pages(data):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login")), url
    for url, form in mutations(data):
        assert client.post(url, form).status_code == 302


def test_a_user_without_permissions_gets_403(client, django_user_model, data):
    client.force_login(django_user_model.objects.create_user("nobody", password="pw-nobody-1"))
    for url in pages(data):
        assert client.get(url).status_code == 403, url


def test_a_viewer_sees_pages_but_no_buttons_and_every_action_is_403(client, viewer, data):
    client.force_login(viewer)
    before = WorkflowInstance.objects.values_list("pk", "revision", "version_id", "status").order_by("pk")
    before = list(before)
    for url in pages(data)[:-1]:
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        for label in ("Make current", "Migrate instances", "Roll back", "Force-complete", ">Pause<", ">Signal<"):
            assert label not in html, (url, label)
    for url, form in mutations(data):
        assert client.post(url, form).status_code == 403, url
    assert list(WorkflowInstance.objects.values_list("pk", "revision", "version_id", "status").order_by("pk")) == before


def test_posts_without_a_csrf_token_are_refused(operator, data):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    for url, form in mutations(data):
        assert client.post(url, form).status_code == 403, url
    page = client.get(reverse("dashboard:overview")).content.decode()
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page).group(1)  # htmx sends this header on every request
    response = client.post(
        reverse("dashboard:version_lifecycle", args=[version("1.0.0").pk]),
        {"action": "ramp", "percent": "10"},
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 302


def test_overview_counts_match_the_database(client, operator, data):
    client.force_login(operator)
    html = client.get(reverse("dashboard:overview")).content.decode()
    section = re.search(r'data-workflow="toy">(.*?)</section>', html, re.S).group(1)
    toy = WorkflowVersion.objects.filter(workflow__name="toy")
    counted = status_counts_by_version()
    for row_version in toy:
        row = re.search(rf'<tr data-version="{re.escape(row_version.version)}">(.*?)</tr>', section, re.S)
        for status, n in counted.get(row_version.pk, {}).items():
            assert re.search(rf'data-status="{status}">{n}<', row.group(1)), (row_version.version, status, n)
    partial = client.get(reverse("dashboard:overview"), headers={"HX-Request": "true"}).content.decode()
    assert partial.lstrip().startswith('<div id="counts"') and "<html" not in partial


def test_migrate_flow_preview_then_confirm(client, operator, data):
    client.force_login(operator)
    url = reverse("dashboard:version_migrate", args=[version("1.0.0").pk])
    before = MigrationBatch.objects.exclude(state="draft").count()
    preview = client.post(url, {"target": "2.0.0"})
    assert preview.status_code == 200
    html = preview.content.decode()
    selected = int(re.search(r"data-selected>(\d+)<", html).group(1))
    assert (
        selected
        == WorkflowInstance.objects.filter(
            version__version="1.0.0", status__in=["pending", "running", "waiting", "parked"]
        ).count()
    )
    assert MigrationBatch.objects.exclude(state="draft").count() == before  # a preview starts nothing
    token = re.search(r'name="selection_token" value="(\d+)"', html).group(1)
    response = client.post(url, {"target": "2.0.0", "selection_token": token, "confirm": "1"})
    batch = MigrationBatch.objects.get(pk=int(token))
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:batch", args=[batch.pk])
    assert batch.total == selected and batch.state == "running" and batch.created_by == operator


def test_dry_run_page_lists_each_failure_group_with_example_messages(client, operator, synced):
    poisoned = start_workflows("toy", [{"n": i, "poison": True} for i in range(3)], version="1.0.0")
    client.force_login(operator)
    html = client.post(reverse("dashboard:version_migrate", args=[version("1.0.0").pk]), {"target": "2.0.0"}).text
    failures = html.split("Failures, grouped", 1)[1].split("</table>", 1)[0]
    assert failures.count("<tr><td>migrator 1.0.0-&gt;2.0.0 raised ValueError</td>") == 1
    for instance in poisoned:
        shown = rf"#{instance.pk}</a> <span [^>]*>migrator 1.0.0-&gt;2.0.0 raised ValueError: poisoned context<"
        assert re.search(shown, failures)


def test_version_pages_show_patch_usage_of_their_own_instances(client, operator, synced):
    from workflows_admin.workflows.models import Patch

    start_workflows("toy", [{"n": 0}] * 4, version="1.0.0")  # 1.0.0 never checks new-greeting
    start_workflows("toy", [{"n": 0, "label": "x"}] * 2, version="2.0.0")
    Patch.objects.filter(name="new-greeting").update(introduced_at=timezone.now())
    client.force_login(operator)
    v1_page = client.get(reverse("dashboard:version", args=[version("1.0.0").pk])).text
    assert "Patch markers" not in v1_page
    v2_page = client.get(reverse("dashboard:version", args=[version("2.0.0").pk])).text
    row = re.search(r'<tr data-patch="new-greeting">(.*?)</tr>', v2_page, re.S).group(1)
    assert re.search(r"data-old>2<", row) and re.search(r"data-new>0<", row) and "safe to remove" not in row
    WorkflowInstance.objects.filter(version=version("2.0.0")).update(status="completed")
    v2_page = client.get(reverse("dashboard:version", args=[version("2.0.0").pk])).text
    assert "safe to remove the old branch from 2.0.0" in v2_page


def test_bad_input_shows_a_clear_error_and_changes_nothing(client, operator, data):
    client.force_login(operator)
    v1 = version("1.0.0")
    before = list(WorkflowInstance.objects.values_list("pk", "revision").order_by("pk"))
    response = client.post(reverse("dashboard:version_migrate", args=[v1.pk]), {"target": "9.9.9"})
    assert response.status_code == 404 and "has no version 9.9.9" in response.content.decode()
    response = client.post(
        reverse("dashboard:version_migrate", args=[v1.pk]), {"target": "2.0.0", "started_after": "last tuesday"}
    )
    assert response.status_code == 400 and "started_after must be an ISO date-time" in response.content.decode()
    response = client.post(reverse("dashboard:version_lifecycle", args=[v1.pk]), {"action": "retire"})
    assert response.status_code == 409 and "still has" in response.content.decode()
    response = client.post(reverse("dashboard:version_lifecycle", args=[v1.pk]), {"action": "ramp", "percent": "x"})
    assert response.status_code == 400 and "percent must be a whole number" in response.content.decode()
    response = client.post(
        reverse("dashboard:instance_action", args=[data["waiting"].pk]), {"action": "signal", "payload": "{not json"}
    )
    assert response.status_code == 400 and "payload is not valid JSON" in response.content.decode()
    assert client.get(reverse("dashboard:instance", args=[10**12])).status_code == 404
    assert list(WorkflowInstance.objects.values_list("pk", "revision").order_by("pk")) == before


def test_batch_page_polls_only_while_running(client, operator, data):
    client.force_login(operator)
    finished = client.get(reverse("dashboard:batch", args=[data["batch"].pk])).content.decode()
    assert "hx-trigger" not in finished and "data-percent>100.0%" in finished
    running = batches.start_migration("toy", source="1.0.0", target="2.0.0")
    page = client.get(reverse("dashboard:batch", args=[running.pk])).content.decode()
    assert "hx-trigger=\"every 1s [document.visibilityState === 'visible']" in page
    partial = client.get(reverse("dashboard:batch", args=[running.pk]), headers={"HX-Request": "true"})
    assert partial.content.decode().lstrip().startswith('<div id="progress"')
    run_batch(running.pk)
    # The poll that finds it finished reloads the page once (the final failures list); then no polling.
    last = client.get(reverse("dashboard:batch", args=[running.pk]), headers={"HX-Request": "true"})
    assert last.headers["HX-Refresh"] == "true"
    assert "hx-trigger" not in client.get(reverse("dashboard:batch", args=[running.pk])).content.decode()


def test_actions_are_recorded_with_the_user(client, operator, data):
    client.force_login(operator)
    client.post(reverse("dashboard:batch_action", args=[data["batch"].pk]), {"action": "rollback", "confirmed": "1"})
    client.post(
        reverse("dashboard:instance_action", args=[data["waiting"].pk]), {"action": "signal", "payload": '{"ok": true}'}
    )
    client.post(reverse("dashboard:version_lifecycle", args=[version("1.0.0").pk]), {"action": "make_current"})
    actions = set(AuditEvent.objects.filter(actor=operator).values_list("action", flat=True))
    assert {"batch.rollback_started", "instance.signalled", "version.made_current"} <= actions


def test_admin_actions_use_the_services(client, operator, data):
    client.force_login(operator)
    url = reverse("admin:workflows_workflowinstance_changelist")
    assert client.get(url).status_code == 200
    ids = [data["instance"].pk]
    page = client.post(url, {"action": "migrate_selected", "_selected_action": ids})
    assert page.status_code == 200 and b"Migrate selected instances" in page.content
    client.post(url, {"action": "migrate_selected", "_selected_action": ids, "apply": "1", "target": "2.0.0"})
    run_started_batches()
    assert WorkflowInstance.objects.get(pk=ids[0]).version.version == "2.0.0"
    client.post(url, {"action": "roll_back_selected", "_selected_action": ids})
    run_started_batches()
    assert WorkflowInstance.objects.get(pk=ids[0]).version.version == "1.0.0"
    client.post(url, {"action": "force_complete_selected", "_selected_action": ids})
    assert WorkflowInstance.objects.get(pk=ids[0]).status == "completed"
    assert AuditEvent.objects.filter(action="instance.force_completed", actor=operator).exists()


def run_started_batches() -> None:
    """What the workers do with the batches the admin started, and with those queued behind them."""
    while running := list(MigrationBatch.objects.filter(state="running").values_list("pk", flat=True)):
        for batch_id in running:
            run_batch(batch_id)


def test_admin_actions_start_one_batch_per_source_for_the_workers(
    client, operator, synced, monkeypatch, django_capture_on_commit_callbacks
):
    from workflows_admin.workflows import tasks
    from workflows_admin.workflows.services.instances import force_complete

    sent = []
    monkeypatch.setattr(tasks.process_batch_chunk, "apply_async", lambda args, **kwargs: sent.append(args[0]))
    on_v1 = start_workflows("research-agent", [{"topic": "t", "raw_text": "x"}] * 3, version="1.0.0")
    on_v2 = start_workflows(
        "research-agent", [{"topic": "t", "enriched_text": "x", "sources": []}] * 2, version="2.0.0"
    )
    finished = force_complete(on_v1[0].pk)
    ids = [i.pk for i in on_v1 + on_v2]
    client.force_login(operator)
    url = reverse("admin:workflows_workflowinstance_changelist")

    def act(action, **form):
        with django_capture_on_commit_callbacks(execute=True):
            page = client.post(url, {"action": action, "_selected_action": ids, **form}, follow=True)
        return page.content.decode()

    page = act("migrate_selected", apply="1", target="2.1.0")
    started = list(MigrationBatch.objects.filter(kind="migrate").order_by("pk"))
    assert [(b.source_version.version, b.target_version.version, b.total, b.state) for b in started] == [
        ("1.0.0", "2.1.0", 2, "running"),
        ("2.0.0", "2.1.0", 2, "running"),
    ]
    assert {frozenset(b.items.values_list("instance_id", flat=True)) for b in started} == {
        frozenset(i.pk for i in on_v1[1:]),
        frozenset(i.pk for i in on_v2),
    }
    assert set(sent) == {b.pk for b in started}  # sent to the workers, not run in the request
    assert set(WorkflowInstance.objects.filter(pk__in=ids).values_list("version__version", flat=True)) == {
        "1.0.0",
        "2.0.0",
    }
    for batch in started:
        assert f'<a href="{reverse("dashboard:batch", args=[batch.pk])}">batch #{batch.pk}</a>' in page
    assert f"#{finished.pk}: completed; only in-flight or failed instances move" in page
    run_started_batches()
    assert WorkflowInstance.objects.filter(pk__in=ids, version__version="2.1.0").count() == 4

    sent.clear()
    page = act("roll_back_selected")
    rollbacks = list(MigrationBatch.objects.filter(kind="rollback").order_by("pk"))
    # Both roll back instances now on 2.1.0: the second waits for the first (one batch per source version).
    assert [(b.parent_id, b.total, b.state) for b in rollbacks] == [
        (started[0].pk, 2, "running"),
        (started[1].pk, 2, "queued"),
    ]
    assert set(sent) == {rollbacks[0].pk}
    for batch in rollbacks:
        assert f'<a href="{reverse("dashboard:batch", args=[batch.pk])}">batch #{batch.pk}</a>' in page
    run_started_batches()
    versions = dict(WorkflowInstance.objects.filter(pk__in=ids).values_list("pk", "version__version"))
    assert versions == {**{i.pk: "1.0.0" for i in on_v1}, **{i.pk: "2.0.0" for i in on_v2}}


def test_metrics_need_a_token_or_staff(client, settings, viewer, operator, data):
    url = reverse("dashboard:metrics")
    assert client.get(url).status_code == 403
    settings.WORKFLOWS_METRICS_TOKEN = "s3cret-token"
    assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    body = client.get(url, headers={"Authorization": "Bearer s3cret-token"}).content.decode()
    waiting = WorkflowInstance.objects.filter(version__version="1.0.0", status="waiting").count()
    assert f'workflows_instances{{status="waiting",version="1.0.0",workflow="toy"}} {waiting}.0' in body
    assert "workflows_step_runs" in body
    client.force_login(viewer)
    assert client.get(url).status_code == 403  # not staff
    client.force_login(operator)
    assert client.get(url).status_code == 200


def test_a_broker_outage_does_not_turn_a_committed_action_into_an_error(
    client, operator, data, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    """The batch is committed before its first chunk is published: with the broker down the operator
    still gets the batch page, and the stall resumer sends the chunk once the broker is back."""
    from kombu.exceptions import OperationalError as BrokerUnavailable

    from workflows_admin.workflows import tasks

    sent = []

    def broker_down(*args, **kwargs):
        raise BrokerUnavailable("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.process_batch_chunk, "apply_async", broker_down)
    client.force_login(operator)
    url = reverse("dashboard:version_migrate", args=[version("1.0.0").pk])
    token = re.search(r'name="selection_token" value="(\d+)"', client.post(url, {"target": "2.0.0"}).text).group(1)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"target": "2.0.0", "selection_token": token, "confirm": "1"})
    assert response.status_code == 302
    assert MigrationBatch.objects.get(pk=int(token)).state == "running"
    assert "left to periodic recovery" in caplog.text
    monkeypatch.setattr(tasks.process_batch_chunk, "apply_async", lambda args, **kwargs: sent.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        # Its chains' leases ran out with no task to renew them: each is replaced.
        assert batches.resume_stalled_batches(now=timezone.now() + timezone.timedelta(seconds=6)) >= 1
    assert [args[:2] for args in sent] == [(int(token), 0)] * 2  # the batch id, each chain from the beginning
