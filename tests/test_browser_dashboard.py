"""The dashboard in a real browser (Debian's Chromium driven by Playwright) with a real Celery worker."""

import re

import pytest
from django.contrib.auth.models import Permission

from workflows_admin.workflows.models import WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.selectors import status_counts_by_version
from workflows_admin.workflows.services.registry_sync import sync_registry

from .browser import SCREENSHOTS, log_in
from .helpers import waiting_instances

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_operator_migrates_watches_progress_and_rolls_back(browser, live_server, worker_process, django_user_model):
    sync_registry()
    waiting_instances(400)
    django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-12345")
    page = browser.new_page()
    log_in(page, live_server, "ops", "pw-ops-12345")

    toy = page.locator('section[data-workflow="toy"]')
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    shown = toy.locator('tr[data-version="1.0.0"] td[data-status="waiting"]').inner_text()
    assert int(shown) == status_counts_by_version()[v1.pk]["waiting"] == 400
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "overview.png", full_page=True)

    toy.locator('tr[data-version="1.0.0"] a').first.click()
    page.click("text=Migrate instances…")
    page.select_option("select[name=target]", "2.0.0")
    page.click("button[name=preview]")
    assert page.locator("[data-selected]").inner_text() == "400"
    assert page.locator("[data-would-migrate]").inner_text() == "400"
    page.click("button[name=confirm]")
    page.wait_for_url(re.compile(r"/batches/\d+/$"))
    page.wait_for_function("document.querySelector('[data-percent]').textContent.startsWith('100')", timeout=90_000)
    page.screenshot(path=SCREENSHOTS / "batch.png", full_page=True)
    assert page.locator("[data-batch-state]").inner_text() == "Completed"
    assert WorkflowInstance.objects.filter(version__version="2.0.0").count() == 400

    page.once("dialog", lambda dialog: dialog.accept())  # "Roll back migration #N?"
    page.click("form:has(input[value=rollback]) button")
    page.wait_for_function(
        "document.querySelector('h1').textContent.includes('Rollback')"
        " && document.querySelector('[data-percent]').textContent.startsWith('100')",
        timeout=90_000,
    )
    assert WorkflowInstance.objects.filter(version__version="1.0.0").count() == 400
    assert sorted(WorkflowInstance.objects.values_list("context__n", flat=True)) == list(range(400))


def test_a_user_without_permission_sees_no_buttons_and_gets_403(browser, live_server, django_user_model):
    sync_registry()
    waiting_instances(3)
    viewer = django_user_model.objects.create_user("viewer", password="pw-viewer-12345")
    viewer.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
    page = browser.new_page()
    log_in(page, live_server, "viewer", "pw-viewer-12345")
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    page.goto(f"{live_server.url}/versions/{v1.pk}/")
    assert page.locator("text=Migrate instances…").count() == 0
    assert page.locator("button[name=action]").count() == 0
    status = page.evaluate(
        """async (url) => {
            const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken'];
            const response = await fetch(url, {method: 'POST', headers: {'X-CSRFToken': token},
                                               body: new URLSearchParams({action: 'retire'})});
            return response.status;
        }""",
        f"{live_server.url}/versions/{v1.pk}/lifecycle/",
    )
    assert status == 403
    v1.refresh_from_db()
    assert v1.state != "retired"


def test_rollout_timeline_and_abort(browser, live_server, django_user_model):
    from datetime import timedelta

    from django.utils import timezone

    from workflows_admin.workflows.models import Rollout, StepRun
    from workflows_admin.workflows.services import rollouts
    from workflows_admin.workflows.services.instances import start_workflows
    from workflows_admin.workflows.services.lifecycle import make_current

    sync_registry()
    make_current(WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0"))
    t0 = timezone.now() - timedelta(minutes=30)
    rollout = rollouts.start_rollout(
        "toy",
        "2.0.0",
        strategy="linear",
        step_percent=20,
        interval_seconds=600,
        gates=[{"metric": "step_failure_rate", "threshold": 0.1, "min_samples": 5}],
        now=t0,
    )
    target = WorkflowVersion.objects.get(workflow__name="toy", version="2.0.0")
    for instance in start_workflows("toy", [{"n": 0, "label": "x"}] * 6, version="2.0.0"):
        StepRun.objects.create(
            instance=instance,
            version=target,
            step="first",
            attempt=1,
            claim_revision=2,
            outcome="succeeded",
            started_at=t0 + timedelta(minutes=5),
            finished_at=t0 + timedelta(minutes=5),
        )
    assert rollouts.tick(rollout.pk, now=t0 + timedelta(minutes=11)) == "advance"
    django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-12345")
    page = browser.new_page()
    log_in(page, live_server, "ops", "pw-ops-12345")
    page.goto(f"{live_server.url}/rollouts/{rollout.pk}/")
    assert page.locator("[data-percent]").inner_text() == "40%"
    assert page.locator("tr[data-decision]").count() == 3  # verify, start, advance
    assert page.locator("[data-verification=verify]").is_visible()
    assert page.locator("svg.timeline polyline").get_attribute("points").count(",") >= 4
    page.screenshot(path=SCREENSHOTS / "rollout.png", full_page=True)
    page.click("button[value=abort]")
    page.wait_for_selector("tr[data-decision=abort]")
    assert page.locator("[data-rollout-state]").inner_text() == "Aborted"
    assert Rollout.objects.get(pk=rollout.pk).state == "aborted"
    assert WorkflowVersion.objects.get(pk=target.pk).state == "active"


def test_roll_back_and_cancel_are_confirmed_with_and_without_javascript(
    browser, live_server, worker_process, django_user_model
):
    """With JavaScript a dialog asks (dismissed: nothing happens); without it a confirmation page does."""
    from workflows_admin.workflows.models import MigrationBatch
    from workflows_admin.workflows.services import batches

    from .worker import wait_until

    sync_registry()
    waiting_instances(30)
    django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-12345")
    migration = batches.start_migration("toy", source="1.0.0", target="2.0.0")
    wait_until(lambda: MigrationBatch.objects.get(pk=migration.pk).is_finished, message="the migration finished")
    rollbacks = MigrationBatch.objects.filter(parent=migration, kind="rollback")

    page = browser.new_page()
    log_in(page, live_server, "ops", "pw-ops-12345")
    page.goto(f"{live_server.url}/batches/{migration.pk}/")
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("form:has(input[value=rollback]) button")
    page.wait_for_timeout(300)
    assert asked and asked[0].startswith(f"Roll back migration #{migration.pk}?")
    assert page.url.endswith(f"/batches/{migration.pk}/") and not rollbacks.exists()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form:has(input[value=rollback]) button")
    page.wait_for_url(re.compile(r"/batches/\d+/$"))
    page.wait_for_function("document.querySelector('h1').textContent.includes('Rollback')")
    assert rollbacks.count() == 1
    wait_until(lambda: rollbacks.get().is_finished, message="the rollback finished")

    no_js = browser.new_context(java_script_enabled=False)
    plain = no_js.new_page()
    log_in(plain, live_server, "ops", "pw-ops-12345")
    running = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", pacing={"rate_limit": 1}
    )  # slow enough to cancel
    plain.goto(f"{live_server.url}/batches/{running.pk}/")
    plain.click("button[value=cancel]")
    assert plain.locator("[data-confirm-page=cancel]").count() == 1  # a page asks; nothing done yet
    assert MigrationBatch.objects.get(pk=running.pk).state == "running"
    plain.screenshot(path=SCREENSHOTS / "confirm-cancel.png", full_page=True)
    plain.click("button[data-confirmed]")
    plain.wait_for_url(f"{live_server.url}/batches/{running.pk}/")
    assert MigrationBatch.objects.get(pk=running.pk).state == "cancelled"
    assert plain.locator("[data-batch-state]").inner_text() == "Cancelled"
    # What it migrated before the cancel can be rolled back: the rule allows it, so the page offers it.
    migrated_some = MigrationBatch.objects.get(pk=running.pk).succeeded > 0
    assert plain.locator("form:has(input[value=rollback])").count() == int(migrated_some)
    no_js.close()


def _set_visibility(page, state: str) -> None:
    page.evaluate(
        """(state) => {
            Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => state});
            document.dispatchEvent(new Event('visibilitychange'));
        }""",
        state,
    )


def test_polling_pauses_while_the_tab_is_hidden(browser, live_server, django_user_model):
    """The overview's counts poll (htmx loaded by django-htmx's {% htmx_script %}) every 5 s only while the tab
    is visible, and once at once when it is shown again."""
    sync_registry()
    django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-12345")
    page = browser.new_page()
    log_in(page, live_server, "ops", "pw-ops-12345")
    assert page.locator("script[src*='django_htmx/htmx-2']").count() == 1

    def is_poll(request) -> bool:
        return request.headers.get("hx-request") == "true"

    with page.expect_request(is_poll, timeout=8_000):
        pass  # polling runs while the tab is visible
    polls = []
    page.on("request", lambda request: polls.append(request.url) if is_poll(request) else None)
    _set_visibility(page, "hidden")
    page.wait_for_timeout(6_500)  # more than one 5 s interval
    assert polls == []
    with page.expect_request(is_poll, timeout=2_000):
        _set_visibility(page, "visible")
