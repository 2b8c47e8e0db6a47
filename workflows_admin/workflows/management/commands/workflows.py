import json

from django.core.management.base import BaseCommand, CommandError

from ...cli import exit_codes, subcommands
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
            raise CommandError(f"{exc.message}{where}", returncode=exit_codes.BAD_INPUT) from None
        if as_json:
            self.stdout.write(json.dumps(result, default=str))
        code = result.get("exit_code", exit_codes.OK)
        if code != exit_codes.OK:  # the outcome a pipeline gates on; the reason goes to stderr
            raise CommandError(result["message"], returncode=code)
