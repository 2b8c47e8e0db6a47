"""Before a deploy, in a real browser (Debian's Chromium, Playwright): the version page's diff against a
chosen version and its Verify on demand, the dry-run over the approval threshold, and the banner of a
label whose code changed shape with its Acknowledge form; with and without JavaScript where the README
says the forms are plain forms."""

import re

import pytest

from workflows_admin.workflows.models import AuditEvent, MigrationBatch, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services.instances import start_workflows
from workflows_admin.workflows.services.registry_sync import sync_registry

from .browser import SCREENSHOTS, log_in
from .helpers import waiting_instances

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ops(django_user_model):
    sync_registry()
    django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-12345")
    SCREENSHOTS.mkdir(exist_ok=True)


def submit(page, button: str, expected: str):
    """Click a form's button and return the response of the page it navigates to (its status too)."""
    with page.expect_navigation() as navigation:
        page.click(button)
    response = navigation.value
    assert response is not None and expected in response.url, response and response.url
    return response


def ops_page(browser, live_server, path: str):
    """A page logged in as ops, at `path`."""
    page = browser.new_page()
    log_in(page, live_server, "ops", "pw-ops-12345")
    page.goto(f"{live_server.url}{path}")
    return page


def without_javascript(browser, page):
    """A page with JavaScript off, logged in as `page` is (its cookies): a second login costs a second."""
    return browser.new_context(java_script_enabled=False, storage_state=page.context.storage_state()).new_page()


def test_the_version_page_compares_with_a_chosen_version_and_verifies_on_demand(browser, live_server, ops):
    research = start_workflows(
        "research-agent", [{"topic": "t", "enriched_text": "x", "sources": []}] * 3, version="2.0.0"
    )
    WorkflowInstance.objects.filter(pk__in=[i.pk for i in research]).update(current_step="enrich")
    waiting_instances(3)
    poisoned = WorkflowInstance.objects.filter(version__version="1.0.0", workflow__name="toy").order_by("pk")[0]
    WorkflowInstance.objects.filter(pk=poisoned.pk).update(context={"n": 1, "poison": True})
    research_v2 = WorkflowVersion.objects.get(workflow__name="research-agent", version="2.0.0")
    toy_v2 = WorkflowVersion.objects.get(workflow__name="toy", version="2.0.0")

    page = ops_page(browser, live_server, f"/versions/{research_v2.pk}/")
    diff = page.locator("#version-diff")
    # By default against the current version (2.1.0, the newest): no step goes, so nobody is affected.
    assert diff.locator("select[name=compare]").input_value() == "2.1.0"
    assert "2.0.0 → 2.1.0" in diff.locator(".version-diff p").first.inner_text()
    assert "required field 'model_config' added" in diff.locator("tr[data-change=contract]").first.inner_text()
    assert diff.locator("[data-affected-step]").count() == 0
    diff.locator("select[name=compare]").select_option("1.0.0")
    submit(page, "#version-diff button:text('Compare')", "compare=1.0.0")
    assert diff.locator("select[name=compare]").input_value() == "1.0.0"
    assert diff.locator("[data-diff-classification]").get_attribute("data-diff-classification") == "breaking"
    assert diff.locator("[data-classification]").inner_text() == "breaking"
    assert "2.0.0 → 1.0.0" in diff.locator(".version-diff p").first.inner_text()
    assert diff.locator("[data-affected-step=enrich]").inner_text() == (
        "3 3 instances sit on enrich, which 1.0.0 removes; the step map sends them to summarize"
    )
    removed = diff.locator("tr[data-change=step_removed]")
    assert removed.inner_text() == "step 'enrich' removed; the step map sends it to 'summarize'\tbreaking"
    page.screenshot(path=SCREENSHOTS / "version-diff.png", full_page=True)

    # Verify: a GET form, the same with and without JavaScript (the same session).
    events = AuditEvent.objects.count()
    for javascript in (True, False):
        if not javascript:
            page = without_javascript(browser, page)
        page.goto(f"{live_server.url}/versions/{toy_v2.pk}/")
        assert page.locator("[data-verification]").count() == 0  # only when asked: it reads instances
        page.fill("[data-verify-form] input[name=sample]", "50")
        assert submit(page, "[data-verify-form] button", "verify=1").status == 200
        report = page.locator("#verification")
        assert report.get_attribute("data-verification") == "failed"
        assert "3 instance(s) in 1 stratum from 1.0.0: 2 passed, 1 failed" in report.inner_text()
        failure = report.locator("tr[data-failure]")
        assert failure.count() == 1 and "poisoned context" in failure.inner_text()
        assert failure.locator(f"a[href='/instances/{poisoned.pk}/']").count() == 1
        if javascript:
            page.screenshot(path=SCREENSHOTS / "verify-failed.png", full_page=True)
        page.fill("[data-verify-form] input[name=sample]", "lots")
        assert submit(page, "[data-verify-form] button", "sample=lots").status == 400
        assert "sample" in page.locator("[data-verify-error]").inner_text()
        assert page.locator("[data-verification]").count() == 0
    page.screenshot(path=SCREENSHOTS / "verify-bad-sample.png", full_page=True)
    assert AuditEvent.objects.count() == events  # a read: nothing written


def test_a_dry_run_over_the_threshold_asks_for_approval(browser, live_server, ops, settings):
    settings.WORKFLOWS_APPROVAL_THRESHOLD = 2
    waiting_instances(3)
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    page = ops_page(browser, live_server, f"/versions/{v1.pk}/migrate/")
    page.select_option("select[name=target]", "2.0.0")
    page.click("button[name=preview]")
    notice = page.locator("[data-needs-approval]")
    assert "over the approval threshold of 2" in notice.inner_text()
    button = page.locator("button[name=confirm]")
    assert button.inner_text() == "Ask approval to migrate 3 instances"
    page.screenshot(path=SCREENSHOTS / "dry-run-needs-approval.png", full_page=True)
    button.click()
    page.wait_for_url(re.compile(r"/batches/\d+/$"))
    assert page.locator("[data-batch-state]").inner_text() == "Awaiting approval"
    batch = MigrationBatch.objects.get()
    assert page.url.endswith(f"/batches/{batch.pk}/") and batch.state == MigrationBatch.State.AWAITING_APPROVAL
    assert WorkflowInstance.objects.filter(version__version="2.0.0").count() == 0


def test_a_shape_change_is_acknowledged_with_a_reason_with_and_without_javascript(browser, live_server, ops):
    waiting_instances(2)
    row = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    # As if 1.0.0 had been registered with one step and its code now had two: the next sync flags it.
    row.registered_shape = {**row.registered_shape, "steps": row.registered_shape["steps"][:1]}
    row.save(update_fields=["registered_shape"])
    assert "toy 1.0.0" in sync_registry().shape_changed
    url = f"{live_server.url}/versions/{row.pk}/"
    page = ops_page(browser, live_server, f"/versions/{row.pk}/")
    banner = page.locator("[data-shape-changed] [data-shape-version='1.0.0']")
    assert "2 in flight" in banner.inner_text() and "step 'second' added" in banner.inner_text()
    page.screenshot(path=SCREENSHOTS / "shape-banner.png", full_page=True)
    posts = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    banner.locator("[data-acknowledge-shape] button").click()  # no reason: the browser does not send it
    assert banner.locator("input[name=reason]").evaluate("input => input.validity.valueMissing")
    page.wait_for_timeout(200)
    assert posts == [] and page.url == url

    plain = without_javascript(browser, page)
    plain.goto(url)
    form = plain.locator("[data-acknowledge-shape]")
    form.locator("input[name=reason]").fill("   ")  # passes `required`; the service refuses a blank reason
    refused = submit(plain, "[data-acknowledge-shape] button", "/lifecycle/")
    assert refused.status == 400
    assert "needs a reason" in plain.locator(".error-box[role=alert]").first.inner_text()
    row.refresh_from_db()
    assert row.shape_change["in_flight"] == 2
    # The refusal page is the version page in the site's frame, at the POST's URL: its GET forms still
    # lead to the version page (not to that URL, which answers a GET with 405), banner and form there too.
    plain.locator("#version-diff select[name=compare]").select_option("2.0.0")
    assert submit(plain, "#version-diff button:text('Compare')", f"/versions/{row.pk}/?compare=2.0.0").status == 200
    form.locator("input[name=reason]").fill("second follows first, as before")
    submit(plain, "[data-acknowledge-shape] button", f"/versions/{row.pk}/")
    assert plain.url == url
    assert plain.locator("[data-shape-changed]").count() == 0
    row.refresh_from_db()
    assert row.shape_change == {}
    plain.goto(f"{live_server.url}/audit/?action=version.shape")
    acknowledged = plain.locator("tr:has(code:text-is('version.shape_acknowledged'))")
    assert acknowledged.count() == 1
    assert "ops" in acknowledged.inner_text() and "second follows first, as before" in acknowledged.inner_text()
    plain.screenshot(path=SCREENSHOTS / "shape-acknowledged-audit.png", full_page=True)
