from ..models import MigrationBatch
from .batch_output import batch_result

NAME = "batches"
HELP = "List migration and rollback batches, newest first."


def add_arguments(parser):
    parser.add_argument("--limit", type=int, default=20)


def run(options, out):
    rows = MigrationBatch.objects.select_related("source_version", "target_version").exclude(
        state=MigrationBatch.State.DRAFT
    )[: options["limit"]]
    result = []
    for batch in rows:
        item = batch_result(batch)
        result.append(item)
        out(
            f"#{batch.pk:<5} {batch.kind:<8} {item['source']} -> {item['target']}  {batch.state:<24} "
            f"{batch.processed}/{batch.total} ({batch.failed} failed, {batch.conflicts} conflicts)"
        )
    return {"batches": result}
