"""Exit codes of `manage.py workflows`, the same for every subcommand, for deploy pipelines to gate on.

The README's "Command line" section has this table; keep the two in step.
"""

OK = 0  # done; with --wait: the batch completed, every instance migrated (or skipped as changed)
# 1 is Python's own for an unexpected error (a traceback): never a refusal or an outcome.
BAD_INPUT = 2  # refused: bad input or an action the current state does not allow (argparse's usage errors too)
FAILURES = 3  # --wait: the batch completed with failed instances or rollback conflicts
PAUSED = 4  # --wait: the batch paused (its canary held it, or an operator paused it)
CANCELLED = 5  # --wait: the batch was cancelled
TIMED_OUT = 6  # --wait --timeout: the batch had not finished in time (it goes on)
NO_WORKER = 7  # --wait: no worker consumes the queue the batch's chunks are sent to (it waits for one)
VERIFY_FAILED = 8  # verify (or a rollout start it gates): a sampled instance failed its migration or round trip
SHAPE_CHANGED = 9  # sync: a version label's code changed shape while instances are in flight on it
