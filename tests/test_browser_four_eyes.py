"""Four eyes in a real browser (Debian's Chromium, Playwright) with a real Celery worker: the
requester's own approval is refused, a second user's starts the batch."""

import re

import pytest
from django.contrib.auth.models import Permission

from workflows_admin.workflows.models import AuditEvent, MigrationBatch, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services.registry_sync import sync_registry

from .browser import log_in
from .helpers import waiting_instances

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def person(django_user_model, name: str, *codenames: str):
    user = django_user_model.objects.create_user(name, password=f"pw-{name}-12345")
    user.user_permissions.add(*Permission.objects.filter(codename__in=("view_dashboard", *codenames)))
    return user


def test_a_second_users_approval_starts_the_batch_and_the_requesters_own_is_refused(
    browser,
    live_server,
    worker_process,
    django_user_model,
    settings,
):
    settings.WORKFLOWS_APPROVAL_THRESHOLD = 5
    sync_registry()
    waiting_instances(8)
    # The requester may approve others' requests: what refuses her is that this one is hers.
    person(django_user_model, "alice", "migrate_instances", "approve_migrations")
    person(django_user_model, "bob", "approve_migrations")
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")

    alice = browser.new_context().new_page()
    log_in(alice, live_server, "alice", "pw-alice-12345")
    alice.goto(f"{live_server.url}/versions/{v1.pk}/")
    alice.click("text=Migrate instances…")
    alice.select_option("select[name=target]", "2.0.0")
    alice.click("button[name=preview]")
    alice.click("button[name=confirm]")
    alice.wait_for_url(re.compile(r"/batches/\d+/$"))
    batch = MigrationBatch.objects.get()
    assert alice.locator("[data-batch-state]").inner_text() == "Awaiting approval"
    assert alice.locator("[data-requested-by]").inner_text() == "alice"
    assert alice.locator("[data-approve]").count() == 0
    assert "alice requested batch" in alice.locator("[data-approval-refused]").inner_text()
    # Posting the approval anyway (a forged form) is refused by the service, with the same reason.
    status, text = alice.evaluate(
        """async (url) => {
            const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken'];
            const response = await fetch(url, {method: 'POST', headers: {'X-CSRFToken': token},
                                               body: new URLSearchParams({action: 'approve', confirmed: '1'})});
            return [response.status, await response.text()];
        }""",
        f"{live_server.url}/batches/{batch.pk}/action/",
    )
    assert status == 409 and "alice requested batch" in text and "a second user" in text
    batch.refresh_from_db()
    assert batch.state == MigrationBatch.State.AWAITING_APPROVAL
    assert WorkflowInstance.objects.filter(version__version="2.0.0").count() == 0

    bob = browser.new_context().new_page()
    log_in(bob, live_server, "bob", "pw-bob-12345")
    bob.goto(f"{live_server.url}/batches/{batch.pk}/")
    bob.once("dialog", lambda dialog: dialog.accept())  # "Approve migration #N of 8 instances ...?"
    bob.click("[data-approve]")
    bob.wait_for_function(
        "document.querySelector('[data-percent]').textContent.startsWith('100')"
        " && document.querySelector('[data-batch-state]').textContent === 'Completed'",
        timeout=90_000,
    )
    assert WorkflowInstance.objects.filter(version__version="2.0.0").count() == 8
    assert list(AuditEvent.objects.filter(batch=batch).order_by("pk").values_list("action", "actor_label")[:3]) == [
        ("batch.approval_requested", "alice"),
        ("batch.approved", "bob"),
        ("batch.started", "bob"),
    ]
