"""The CLI's commands, one module each.

Each module has `add_parser(subparsers)`, which registers its sub-command with `run` as the
`run` default; `brushwork.cli` only dispatches and turns errors into exit codes.
"""

from brushwork.commands import data, evaluate, generate, info, merge, models, serve, train, upscale

COMMANDS = [generate, models, info, data, train, evaluate, upscale, merge, serve]
