"""The key tables of `docs/recipes.md`, rendered from `SCHEMA` so the reference cannot drift
from the parser. Regenerate them with `python -m sysext_bakery.recipe.docs docs/recipes.md`."""
from __future__ import annotations

import sys
from pathlib import Path

from sysext_bakery.files import write_atomic
from sysext_bakery.recipe.catalogue import catalogue_markdown
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
CATALOGUE_START = "<!-- catalogue:start (generated from recipes/) -->\n"
CATALOGUE_END = "<!-- catalogue:end -->"


def _replace(text: str, start: str, end: str, body: str) -> str:
    head, found, rest = text.partition(start)
    if not found:
        raise SystemExit(f"marker {start.strip()!r} not found")
    _, _, tail = rest.partition(end)
    return f"{head}{start}{body}{end}{tail}"


def update_docs(path: Path, recipes: Path | None = None) -> None:
    """Replace the generated parts of the recipe reference: the key tables and the catalogue
    (from `recipes`, default: the recipes/ next to the docs/ directory holding `path`)."""
    recipes = recipes or path.resolve().parent.parent / "recipes"
    text = _replace(path.read_text(), START, END, reference_markdown())
    text = _replace(text, CATALOGUE_START, CATALOGUE_END, catalogue_markdown(recipes))
    write_atomic(path, text)


if __name__ == "__main__":
    if len(sys.argv) == 2:
        update_docs(Path(sys.argv[1]))
    else:
        print("usage: python -m sysext_bakery.recipe.docs docs/recipes.md", file=sys.stderr)
        sys.exit(2)
