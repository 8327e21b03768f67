"""The generate options of the command line (``python -m cfd generate`` and
``batch``): every request parameter as a flag, checked by the request layer,
not argparse, so the CLI and the app say the same."""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from .params import EXPORT_FLAGS, EXPORT_RANGES, EXTRA_NAMES, PARAM_NAMES, PARAMS, help_text
from .request import ExportSettings, Problems, Request, parse_exports, parse_request

def add_generate_arguments(parser: argparse.ArgumentParser, exclude=()) -> argparse.ArgumentParser:
    """The generate options (every request parameter but those named in
    ``exclude``, plus --scenes, --model and the export sizes), each defaulting
    to None = the backend's default; types, choices and ranges are checked by
    ``parse_request`` / ``parse_exports``, not argparse, so the CLI and the app
    say the same."""
    for p in PARAMS:
        if p.name in exclude:
            continue
        kwargs: dict[str, Any] = {"default": None, "help": help_text(p.name).replace("%", "%%")}  # argparse formats help
        if p.kind is not str or p.choices:
            kwargs["metavar"] = p.name.upper()
        parser.add_argument(p.flag, **kwargs)   # values stay text: parse_request checks them
    parser.add_argument("--scenes", nargs="*", default=None, metavar="PLY",
                        help="exact prior over these splat PLYs instead of the bundled objects")
    parser.add_argument("--model", default=None,
                        help="SD hub id or local folder (default: $CFD_MODEL or SD-2.1-base)")
    defaults_ = ExportSettings()
    for name, (flag, text) in EXPORT_FLAGS.items():
        lo, hi = EXPORT_RANGES[name]
        parser.add_argument(flag, dest=name, default=None, metavar="N",
                            help=f"{text} ({lo}–{hi}; default {getattr(defaults_, name)})")
    return parser


def request_from_args(args: argparse.Namespace, **overrides) -> Request:
    """The Request of parsed ``add_generate_arguments`` options (its export
    settings included); ``overrides`` replace options."""
    values = {name: getattr(args, name, None) for name in (*PARAM_NAMES, *EXTRA_NAMES)}
    problems = Problems()
    exports = problems.check(parse_exports, {name: getattr(args, name, None) for name in EXPORT_RANGES})
    request = problems.check(parse_request, values, **overrides)
    problems.raise_any()
    return replace(request, exports=exports)
