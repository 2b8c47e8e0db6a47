"""Which audit actions notify webhook subscribers, and under which event name.

Every event is already an audit record written in the transaction of the action that caused it;
`outbox.enqueue` writes the deliveries for it in that same transaction.
"""

# audit action -> webhook event
EVENTS_BY_ACTION = {
    "batch.finished": "batch.finished",  # with its counts
    "batch.canary_paused": "batch.canary_paused",
    "rollout.halt": "rollout.halted",
    "rollout.complete": "rollout.promoted",  # the new version is current (at 100%, or promoted by an operator)
    "version.drained": "version.drained",
    "version.code_missing": "instances.parked",  # a worker without the version's code parks its instances
    "cleanup.expired": "cleanup.expired",  # with how many instances expired
    # Sync found code that changed shape under a label with instances in flight: a pipeline stops there.
    "version.shape_changed": "version.shape_changed",
}
EVENTS = tuple(sorted(set(EVENTS_BY_ACTION.values())))
