from .. import listings
from ..services.numbers import parse_whole_number
from .batch_output import batch_result

NAME = "batches"
HELP = "List migration and rollback batches, newest first."
MAX_LIMIT = 10_000


def add_arguments(parser):
    parser.add_argument("--limit", default=20, help=f"How many, 1 to {MAX_LIMIT} (default 20)")


def run(options, out):
    limit = parse_whole_number(options["limit"], "limit", minimum=1, maximum=MAX_LIMIT)
    rows = listings.batches()[:limit]
    result = []
    for batch in rows:
        item = batch_result(batch)
        result.append(item)
        state = f"{batch.state} #{item['queue_place']}" if item["queue_place"] else batch.state
        out(
            f"#{batch.pk:<5} {batch.kind:<8} {item['source']} -> {item['target']}  {state:<24} "
            f"{batch.processed}/{batch.total} ({batch.failed} failed, {batch.conflicts} conflicts)"
        )
    return {"batches": result}
