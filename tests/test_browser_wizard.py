"""Issue 19 in a real browser (Debian's Chromium, Playwright): the step graph, the mapping override
and the selection by query in the migrate wizard, with a real Celery worker running the batch."""

import re

import pytest
from django.utils import timezone

from workflows_admin.workflows.models import InstanceStatus, MigrationBatch, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services.registry_sync import sync_registry

from .browser import log_in
from .worker import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def waiting_at(step: str, contexts: list[dict]) -> list[int]:
    row = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    now = timezone.now()
    rows = WorkflowInstance.objects.bulk_create(
        WorkflowInstance(
            workflow_id=row.workflow_id,
            version=row,
            status=InstanceStatus.WAITING,
            current_step=step,
            context=context,
            created_at=now,
            updated_at=now,
        )
        for context in contexts
    )
    return [instance.pk for instance in rows]


@pytest.fixture
def ops(django_user_model):
    sync_registry()
    django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-12345")


def graph_facts(page) -> dict:
    """What the drawn SVG says: boxes per column and arrows, read from the rendered elements."""
    return page.evaluate(
        """() => {
            const svg = document.querySelector('[data-step-graph] svg');
            const boxes = (column) => Object.fromEntries([...svg.querySelectorAll(`[data-${column}-step]`)].map(
                (g) => [g.dataset[column + 'Step'], [g.querySelector('.step-count').textContent, g.dataset.kind]]));
            return {
                drawn: svg.getBoundingClientRect().width > 300,
                source: boxes('source'),
                target: boxes('target'),
                arrows: [...svg.querySelectorAll('[data-arrow-from]')].map((g) => [
                    g.dataset.arrowFrom, g.dataset.arrowTo, g.dataset.count, g.hasAttribute('data-overridden'),
                    g.querySelector('path').getTotalLength() > 0]),
            };
        }"""
    )


def test_the_graph_shows_the_counts_and_arrows_even_without_javascript(browser, live_server, ops):
    waiting_at("second", [{"n": i} for i in range(5)])
    waiting_at("first", [{"n": i} for i in range(2)])
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    for javascript in (True, False):
        page = browser.new_context(java_script_enabled=javascript).new_page()
        log_in(page, live_server, "ops", "pw-ops-12345")
        page.goto(f"{live_server.url}/versions/{v1.pk}/")
        facts = graph_facts(page) if javascript else None
        if facts is None:  # no script in the page: read the same facts from the DOM through Playwright
            page.wait_for_selector("[data-step-graph] svg")
            assert page.locator("[data-source-step=second] .step-count").text_content() == "5 in flight"
            assert page.locator("[data-source-step=first] .step-count").text_content() == "2 in flight"
            assert page.locator("[data-arrow-from=second]").get_attribute("data-arrow-to") == "second"
            assert page.locator("[data-target-step=middle]").get_attribute("data-kind") == "added"
            continue
        assert facts["drawn"]
        assert facts["source"] == {"first": ["2 in flight", "step"], "second": ["5 in flight", "step"]}
        assert facts["target"] == {
            "first": ["0 in flight", "step"],
            "middle": ["0 in flight · new on the target", "added"],
            "second": ["0 in flight", "step"],
        }
        assert facts["arrows"] == [["first", "first", "2", False, True], ["second", "second", "5", False, True]]


def test_an_override_in_the_wizard_changes_where_instances_land(browser, live_server, worker_process, ops):
    ids = waiting_at("second", [{"n": i} for i in range(30)])
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    page = browser.new_page()
    log_in(page, live_server, "ops", "pw-ops-12345")
    page.goto(f"{live_server.url}/versions/{v1.pk}/migrate/")
    page.select_option("select[name='map.second']", "middle")
    # htmx redraws the graph with the chosen arrow, dashed as an override.
    page.wait_for_selector("[data-arrow-from=second][data-arrow-to=middle][data-overridden]")
    assert page.locator("[data-overridden-step=second]").count() == 1
    page.click("button[name=preview]")
    assert page.locator("[data-would-migrate]").inner_text() == "30"
    assert "second resumes on middle" in page.locator("[data-override]").inner_text()
    assert page.locator("[data-arrow-from=second]").get_attribute("data-arrow-to") == "middle"
    page.click("button[name=confirm]")
    page.wait_for_url(re.compile(r"/batches/\d+/$"))
    page.wait_for_function("document.querySelector('[data-percent]').textContent.startsWith('100')", timeout=90_000)
    landed = set(WorkflowInstance.objects.filter(pk__in=ids).values_list("version__version", "current_step"))
    assert landed == {("2.0.0", "middle")}
    batch = MigrationBatch.objects.get(pk=int(page.url.rstrip("/").split("/")[-1]))
    assert batch.plan["step_map_override"] == {"second": "middle"}


def test_a_query_typed_in_the_wizard_counts_and_selects_the_right_set(browser, live_server, worker_process, ops):
    styles = ["shout" if i % 4 == 0 else "plain" for i in range(20)]
    ids = waiting_at("second", [{"n": i, "model_config": {"style": style}} for i, style in enumerate(styles)])
    shouting = {pk for pk, style in zip(ids, styles, strict=True) if style == "shout"}
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    page = browser.new_page()
    log_in(page, live_server, "ops", "pw-ops-12345")
    page.goto(f"{live_server.url}/versions/{v1.pk}/migrate/")
    count = page.locator("#selection-count")
    assert count.inner_text() == "20 instances"
    page.locator("textarea[name=where]").press_sequentially("model_config.style = shout", delay=20)
    page.wait_for_selector("#selection-count[data-count-error=where]")
    assert "quoted" in count.inner_text()
    page.locator("textarea[name=where]").fill("")
    page.locator("textarea[name=where]").press_sequentially('model_config.style = "shout"', delay=20)
    page.wait_for_function("document.querySelector('#selection-count').textContent === '5 instances'")
    page.locator("input[name=step]").press_sequentially("first", delay=20)
    page.wait_for_function("document.querySelector('#selection-count').textContent === '0 instances'")
    page.locator("input[name=step]").fill("second")
    page.locator("input[name=step]").press("End")  # a keyup: the count follows a paste too
    page.wait_for_function("document.querySelector('#selection-count').textContent === '5 instances'")
    page.click("button[name=preview]")
    assert page.locator("[data-selected]").inner_text() == "5"
    page.click("button[name=confirm]")
    page.wait_for_url(re.compile(r"/batches/\d+/$"))
    page.wait_for_function("document.querySelector('[data-percent]').textContent.startsWith('100')", timeout=90_000)
    moved = set(WorkflowInstance.objects.filter(version__version="2.0.0").values_list("pk", flat=True))
    wait_until(lambda: moved == shouting, timeout=5, message="the selected set")
    assert moved == shouting
