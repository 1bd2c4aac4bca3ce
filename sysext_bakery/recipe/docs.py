"""The key tables of `docs/recipes.md`, rendered from `SCHEMA` so the reference cannot drift
from the parser. Regenerate them with `python -m sysext_bakery.recipe.docs docs/recipes.md`."""
from __future__ import annotations

import sys
from pathlib import Path

from sysext_bakery.files import write_atomic
from sysext_bakery.recipe.schema import SCHEMA, Key


def reference_markdown() -> str:
    """The key tables of docs/recipes.md, generated from SCHEMA."""
    out: list[str] = []

    def table(keys: tuple[Key, ...], title: str) -> None:
        out.append(f"### {title}\n")
        out.append("| key | type | required | default | meaning |")
        out.append("| --- | --- | --- | --- | --- |")
        for k in keys:
            meaning = k.doc
            if k.choices:
                meaning += " One of: " + ", ".join(f"`{c}`" for c in k.choices) + "."
            if k.example:
                meaning += f" Example: `{k.name} = {k.example}`."
            default = "" if k.default is None else f"`{str(k.default).lower() if isinstance(k.default, bool) else k.default}`"
            typ = k.type + (f" of {k.values}" if k.values else "")
            out.append(f"| `{k.name}` | {typ} | {'yes' if k.required else ''} | {default} | {meaning} |")
        out.append("")
        for k in keys:
            if k.keys:
                table(k.keys, f"`[{k.name}]`" if k.type == "table" else f"`[[{k.name}]]`")

    table(SCHEMA, "Top-level keys")
    return "\n".join(out)


START, END = "<!-- reference:start (generated from SCHEMA) -->\n", "<!-- reference:end -->"


def update_docs(path: Path) -> None:
    """Replace the generated part of the recipe reference."""
    text = path.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    write_atomic(path, f"{head}{START}{reference_markdown()}{END}{tail}")


if __name__ == "__main__":
    if len(sys.argv) == 2:
        update_docs(Path(sys.argv[1]))
    else:
        print("usage: python -m sysext_bakery.recipe.docs docs/recipes.md", file=sys.stderr)
        sys.exit(2)
