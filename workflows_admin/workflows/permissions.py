"""The permissions the operator surfaces check: one name each for the admin, the pages, the API and the rules.

Each is `app_label.codename`, as `user.has_perm` takes it; the codenames are declared once, in
`WorkflowVersion.Meta.permissions` (the webhooks' are Django's default model permissions).
"""

from __future__ import annotations

VIEW = "workflows.view_dashboard"
MIGRATE = "workflows.migrate_instances"
ROLLBACK = "workflows.rollback_instances"
LIFECYCLE = "workflows.change_lifecycle"
OPERATE = "workflows.operate_instances"
ROLLOUTS = "workflows.manage_rollouts"
APPROVE = "workflows.approve_migrations"

VIEW_WEBHOOKS = "webhooks.view_webhooksubscription"
ADD_WEBHOOKS = "webhooks.add_webhooksubscription"
CHANGE_WEBHOOKS = "webhooks.change_webhooksubscription"
DELETE_WEBHOOKS = "webhooks.delete_webhooksubscription"
