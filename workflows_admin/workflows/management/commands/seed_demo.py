import random

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from ...models import InstanceStatus, WorkflowInstance, WorkflowVersion
from ...services import lifecycle
from ...services.instances import start_workflows
from ...services.registry_sync import sync_registry

TOPICS = [
    "tidal energy",
    "protein folding",
    "urban heat islands",
    "soil carbon",
    "battery recycling",
    "coral bleaching",
    "fusion reactors",
    "monsoon forecasting",
    "bird migration",
    "quantum sensors",
]
TEXT = (
    "Researchers compared observations across several regions and found consistent patterns in "
    "seasonal variation, although measurement methods differed between institutions and decades."
)


def _context(version: str, rng: random.Random, index: int) -> dict:
    topic = rng.choice(TOPICS)
    context = {"topic": topic, "needs_review": index % 7 == 0}
    text = f"{topic.capitalize()}: {TEXT} Sample {index}."
    if version == "1.0.0":
        context["raw_text"] = text
    else:
        context["enriched_text"] = text
        context["sources"] = []
    if version == "2.1.0":
        context["model_config"] = {"model": "fake-model", "temperature": 0.2, "style": rng.choice(["plain", "shout"])}
    return context


class Command(BaseCommand):
    help = "Seed research-agent instances over 1.0.0, 2.0.0 and 2.1.0 in several states."

    def add_arguments(self, parser):
        parser.add_argument("--instances", type=int, default=300)
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args, **options):
        rng = random.Random(options["seed"])
        sync_registry()
        total = options["instances"]
        shares = {"1.0.0": 0.3, "2.0.0": 0.3, "2.1.0": 0.4}
        now = timezone.now()
        with transaction.atomic():
            for label, share in shares.items():
                count = int(total * share)
                version = WorkflowVersion.objects.get(workflow__name="research-agent", version=label)
                # Most start pending and are run by the worker; some are already finished.
                running = count * 6 // 10
                contexts = [_context(label, rng, i) for i in range(count)]
                start_workflows("research-agent", contexts[:running], version=label)
                finished = []
                for i, context in enumerate(contexts[running:]):
                    failed = i % 4 == 0
                    created = now - timezone.timedelta(hours=rng.randint(2, 96))
                    finished.append(
                        WorkflowInstance(
                            workflow=version.workflow,
                            version=version,
                            status=InstanceStatus.FAILED if failed else InstanceStatus.COMPLETED,
                            status_reason="RuntimeError: fake model quota exceeded" if failed else "",
                            current_step="summarize" if failed else "",
                            context={**context, "summary": "done"},
                            created_at=created,
                            updated_at=created,
                            finished_at=created,
                        )
                    )
                WorkflowInstance.objects.bulk_create(finished)
                self.stdout.write(f"research-agent {label}: {count} instances ({running} started)")
            for label in ("1.0.0", "2.0.0"):
                lifecycle.drain(
                    WorkflowVersion.objects.get(workflow__name="research-agent", version=label),
                    actor="system:seed_demo",
                )
