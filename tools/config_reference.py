"""Print the README's config reference (every key glip_d2 adds, its default, its comment) as a markdown table.

The table is generated from glip_d2/config.py so it cannot drift: `tests/test_readme.py` checks README.md holds
exactly this output between the `<!-- config-reference -->` markers. Update with:
    .venv/bin/python tools/config_reference.py --write-readme
"""
import argparse
import inspect
import re
from pathlib import Path

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def config_rows():
    """(key, default, comment) for every key assignment in glip_d2/config.py, in file order."""
    from detectron2.config import get_cfg

    import glip_d2.config as config_module
    from glip_d2 import add_glip_config

    cfg = add_glip_config(get_cfg())
    rows, comment, after_key = [], [], False
    for line in inspect.getsource(config_module).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if after_key:  # a new comment block starts: keys below it share only this one
                comment, after_key = [], False
            comment.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"_C\.([A-Z0-9_.]+)\s*=", stripped)
        if match and "CN()" not in stripped:
            key = match.group(1)
            node = cfg
            for part in key.split("."):
                node = node[part]
            rows.append((key, node, " ".join(comment)))
            after_key = True
            continue
        if not stripped.startswith("_C."):
            comment, after_key = [], False
    return rows


def markdown_table() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, comment in config_rows():
        lines.append(f"| `{key}` | `{default!r}` | {comment.replace('|', '/')} |")
    return "\n".join(lines)


def readme_with_table(text: str) -> str:
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + markdown_table() + "\n" + text[stop:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-readme", action="store_true", help="rewrite the table inside README.md")
    args = parser.parse_args()
    if args.write_readme:
        README.write_text(readme_with_table(README.read_text()))
    else:
        print(markdown_table())


if __name__ == "__main__":
    main()
