"""Issue 19 on the pages: the step graph (version page and wizard), the mapping override in the
wizard form, and the live count of a selection by query."""

import re

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from workflows_admin.workflows.models import InstanceStatus, MigrationBatch, WorkflowInstance, WorkflowVersion

from .helpers import run_batch
from .test_hostile_requests import database_checksum

pytestmark = pytest.mark.django_db


def make(workflow, version, step, context, status=InstanceStatus.WAITING) -> int:
    row = WorkflowVersion.objects.get(workflow__name=workflow, version=version)
    now = timezone.now()
    return WorkflowInstance.objects.create(
        workflow_id=row.workflow_id,
        version=row,
        status=status,
        current_step=step,
        context=context,
        created_at=now,
        updated_at=now,
    ).pk


@pytest.fixture
def page_client(client, operator, synced):
    client.force_login(operator)
    return client


def boxes(html, column) -> dict[str, tuple[int, str]]:
    """{step: (in-flight count, kind)} of one column of the graph."""
    found = re.findall(rf'data-{column}-step="([^"]+)" data-in-flight="(\d+)" data-kind="(\w+)"', html)
    return {step: (int(count), kind) for step, count, kind in found}


def arrows(html) -> dict[tuple[str, str], int]:
    found = re.findall(r'data-arrow-from="([^"]+)" data-arrow-to="([^"]+)" data-count="(\d+)"', html)
    return {(a, b): int(n) for a, b, n in found}


def test_the_version_page_draws_both_versions_steps_counts_and_the_mapping(page_client):
    for _ in range(2):
        make("research-agent", "2.0.0", "enrich", {"topic": "t", "enriched_text": "x", "sources": []})
    make("research-agent", "2.0.0", "analyze", {"topic": "t", "enriched_text": "x", "sources": []})
    make("research-agent", "2.0.0", "gone-step", {"topic": "t", "enriched_text": "x", "sources": []})  # unmapped
    make("research-agent", "1.0.0", "summarize", {"topic": "t", "raw_text": "x"})
    v2 = WorkflowVersion.objects.get(workflow__name="research-agent", version="2.0.0")
    html = page_client.get(reverse("dashboard:version", args=[v2.pk]), {"graph_to": "1.0.0"}).content.decode()
    assert "<svg" in html and "data-step-graph" in html
    assert boxes(html, "source") == {
        "analyze": (1, "step"),
        "enrich": (2, "removed"),  # 1.0.0 has no enrich step
        "summarize": (0, "step"),
        "gone-step": (1, "unmapped"),
    }
    assert boxes(html, "target") == {"analyze": (0, "step"), "summarize": (1, "step")}
    # 2.0.0 -> 1.0.0 sends enrich to summarize; each arrow carries the source step's count.
    assert arrows(html) == {("analyze", "analyze"): 1, ("enrich", "summarize"): 2, ("summarize", "summarize"): 0}
    assert 'data-unmapped="1"' in html
    # The other target is a link away, and that graph maps enrich onto the same step.
    assert "?graph_to=2.1.0" in html
    html = page_client.get(reverse("dashboard:version", args=[v2.pk]), {"graph_to": "2.1.0"}).content.decode()
    assert arrows(html)[("enrich", "enrich")] == 2 and boxes(html, "source")["enrich"] == (2, "step")


def test_the_wizard_offers_only_target_steps_and_draws_the_override(page_client):
    make("toy", "1.0.0", "second", {"n": 1})
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    html = page_client.get(reverse("dashboard:version_migrate", args=[v1.pk])).content.decode()
    options = re.search(r'<select name="map.second"[^>]*>(.*?)</select>', html, re.S).group(1)
    assert re.findall(r'value="([^"]+)"', options) == ["first", "middle", "second"]  # the target's steps
    assert arrows(html) == {("first", "first"): 0, ("second", "second"): 1}
    # The mapping partial (htmx swaps it in on a change) redraws the arrow the operator chose.
    url = reverse("dashboard:migrate_mapping", args=[v1.pk])
    part = page_client.get(url, {"target": "2.0.0", "map.second": "middle"}).content.decode()
    assert arrows(part) == {("first", "first"): 0, ("second", "middle"): 1}
    assert 'data-arrow-from="second" data-arrow-to="middle" data-count="1" data-overridden' in part
    part = page_client.get(url, {"target": "2.0.0", "map.second": "nowhere"}).content.decode()
    assert "data-graph-error" in part and "step_map" in part and "nowhere" in part


def test_the_wizard_override_reaches_the_dry_run_the_batch_and_where_instances_land(page_client):
    ids = [make("toy", "1.0.0", "second", {"n": i}) for i in range(3)]
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    url = reverse("dashboard:version_migrate", args=[v1.pk])
    form = {"target": "2.0.0", "map.first": "first", "map.second": "middle", "preview": "1"}
    html = page_client.post(url, form).content.decode()
    assert "data-override" in html and "second</strong> resumes on <strong>middle" in html
    assert "second → middle: 3 instances" in html
    token = re.search(r'name="selection_token" value="(\d+)"', html).group(1)
    response = page_client.post(url, {"target": "2.0.0", "selection_token": token, "confirm": "1"})
    batch = MigrationBatch.objects.get(pk=token)
    assert response.status_code == 302 and batch.plan["step_map_override"] == {"second": "middle"}
    run_batch(batch.pk)
    assert set(WorkflowInstance.objects.filter(pk__in=ids).values_list("current_step", flat=True)) == {"middle"}


def test_a_wizard_override_naming_an_unknown_step_is_refused_and_changes_nothing(page_client):
    make("toy", "1.0.0", "second", {"n": 1})
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    before = database_checksum()
    response = page_client.post(
        reverse("dashboard:version_migrate", args=[v1.pk]), {"target": "2.0.0", "map.second": "third"}
    )
    assert response.status_code == 400 and "step_map" in response.content.decode()
    assert database_checksum() == before


def test_the_live_count_follows_the_query_and_names_a_bad_field(page_client):
    make("toy", "1.0.0", "second", {"n": 1, "model_config": {"style": "shout"}})
    make("toy", "1.0.0", "second", {"n": 2, "model_config": {"style": "plain"}})
    make("toy", "1.0.0", "first", {"n": 3}, status=InstanceStatus.PENDING)
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    url = reverse("dashboard:migrate_count", args=[v1.pk])

    def count(**query):
        response = page_client.get(url, query)
        return response.status_code, re.sub(r"<[^>]+>", "", response.content.decode())

    assert count() == (200, "3 instances")
    assert count(step="second") == (200, "2 instances")
    assert count(where='model_config.style = "shout"') == (200, "1 instance")
    assert count(where='has model_config\nmodel_config.style = "plain"') == (200, "1 instance")
    assert count(error="anything") == (200, "0 instances")
    status, text = count(where="model_config.style = shout")
    assert status == 400 and text.startswith("where:") and "quoted" in text


def test_the_count_and_mapping_partials_need_the_migrate_permission(client, synced, django_user_model):
    viewer = django_user_model.objects.create_user("viewer", password="pw-viewer-1")
    viewer.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
    client.force_login(viewer)
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    assert client.get(reverse("dashboard:migrate_count", args=[v1.pk])).status_code == 403
    assert client.get(reverse("dashboard:migrate_mapping", args=[v1.pk]), {"target": "2.0.0"}).status_code == 403
    assert client.get(reverse("dashboard:version", args=[v1.pk])).status_code == 200  # the graph is a view
