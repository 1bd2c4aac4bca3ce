"""`bakery`: commands that work on files rather than the recipe catalogue (which is doit's).

BakeryError is caught here, once, and printed with its hint; a closed stdout ends the
command quietly with status 141 (output.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sysext_bakery import output
from sysext_bakery.errors import BakeryError


def _inspect(args: argparse.Namespace) -> None:
    from sysext_bakery.build.inspect import format_image

    print(format_image(args.image))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bakery", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="print an image's extension-release and tree")
    inspect.add_argument("image", type=Path)
    inspect.set_defaults(run=_inspect)

    from sysext_bakery.torcx import convert as torcx
    convert = sub.add_parser("torcx-convert", help="turn torcx images or a torcx profile into sysexts",
                             description=torcx.__doc__)
    torcx.add_arguments(convert)
    convert.set_defaults(run=torcx.run)

    from sysext_bakery.publish import compose
    comp = sub.add_parser("compose", help="one Butane config + Ignition JSON for a host's extensions",
                          description=compose.__doc__.split("\n\n")[0],
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    compose.add_arguments(comp)
    comp.set_defaults(run=compose.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
        sys.stdout.flush()   # inside the try: a closed pipe fails here, not at interpreter exit
    except BakeryError as e:
        print(f"bakery: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:   # `bakery inspect IMG | head`: see output.py
        output.closed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
