import json

from django.core.management.base import BaseCommand, CommandError

from ...cli import subcommands
from ...services.errors import ServiceError


class Command(BaseCommand):
    help = "Operate workflows: status, sync, migrate, rollback, batches, cleanup ..."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True, parser_class=type(parser))
        self._modules = {}
        for module in subcommands():
            subparser = sub.add_parser(module.NAME, help=module.HELP, called_from_command_line=True)
            subparser.add_argument("--json", action="store_true", help="Print one JSON object")
            module.add_arguments(subparser)
            self._modules[module.NAME] = module

    def handle(self, *args, **options):
        module = self._modules[options["subcommand"]]
        as_json = options["json"]

        def out(line: str) -> None:
            if not as_json:
                self.stdout.write(line)

        try:
            result = module.run(options, out)
        except ServiceError as exc:
            where = f" [{exc.field}]" if exc.field else ""
            raise CommandError(f"{exc.message}{where}", returncode=getattr(exc, "exit_code", 2)) from None
        if as_json:
            self.stdout.write(json.dumps(result, default=str))
