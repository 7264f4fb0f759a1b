"""Pages generated at build time (mkdocs-gen-files): nothing here is copied by hand.

* ``reference/api/``: one mkdocstrings page per public module of :data:`API_ROOTS` (private
  modules, whose names start with ``_``, are left out), with its literate-nav ``SUMMARY.md``;
* ``reference/cli.md``: every ``pccd`` command, read from :func:`pccd.cli.build_parser`;
* ``models/``: the list of shipped models (:func:`pccd.generator.shipped_models`) and every
  model card ``src/pccd/weights/*/README.md`` that exists;
* ``benchmarks.md`` and ``changelog.md``: the repository's BENCHMARKS.md and CHANGELOG.md.

Relative links in the repository's Markdown files point at files in the repository; those that
are site pages become links to the page, others become the plain path (the site has no copy).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path, PurePosixPath

import mkdocs_gen_files

from pccd.cli import build_parser
from pccd.generator import shipped_models

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
WEIGHTS = SRC / "pccd" / "weights"
API_ROOTS = (
    "pccd.generator",
    "pccd.data",
    "pccd.representation",
    "pccd.conditioning",
    "pccd.errors",
    "pccd.runs",
    "pccd.evaluate",
    "pccd.screen",
    "pccd.families",
)
"""The public modules and packages whose docstrings make the API reference (a package brings
its public submodules)."""
IMAGES = (".png", ".svg", ".jpg", ".jpeg", ".gif")


# ---- API reference -------------------------------------------------------------------------
def public_modules(root: str) -> list[str]:
    """``root`` and, for a package, its public submodules, depth first."""
    path = SRC.joinpath(*root.split("."))
    if path.with_suffix(".py").is_file():
        return [root]
    names = [root]
    for child in sorted(path.iterdir()):
        if child.name.startswith("_") or child.name == "__pycache__":
            continue
        if child.suffix == ".py":
            names.append(f"{root}.{child.stem}")
        elif (child / "__init__.py").is_file():
            names.extend(public_modules(f"{root}.{child.name}"))
    return names


def write_api_reference() -> None:
    nav = mkdocs_gen_files.Nav()
    for root in API_ROOTS:
        for name in public_modules(root):
            parts = tuple(name.split("."))
            is_package = SRC.joinpath(*parts, "__init__.py").is_file()
            page = (
                Path(*parts[1:], "index.md") if is_package else Path(*parts[1:]).with_suffix(".md")
            )
            nav[parts[1:]] = page.as_posix()
            with mkdocs_gen_files.open(Path("reference/api") / page, "w") as fh:
                fh.write(f"::: {name}\n")
            source = SRC.joinpath(*parts, "__init__.py") if is_package else SRC.joinpath(*parts)
            if not is_package:
                source = source.with_suffix(".py")
            mkdocs_gen_files.set_edit_path(Path("reference/api") / page, source.relative_to(ROOT))
    with mkdocs_gen_files.open("reference/api/SUMMARY.md", "w") as fh:
        fh.writelines(nav.build_literate_nav())


# ---- CLI reference -------------------------------------------------------------------------
def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _option_row(action: argparse.Action) -> str | None:
    skipped = (argparse._HelpAction, argparse._SubParsersAction)
    if action.help == argparse.SUPPRESS or isinstance(action, skipped):
        return None
    if action.option_strings:
        names = ", ".join(f"`{s}`" for s in action.option_strings)
        if action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
    else:
        names = f"`{action.metavar or action.dest}`"
    help_text = (action.help or "") % {**vars(action), "prog": ""} if action.help else ""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        help_text += f" (one of: {', '.join(f'`{c}`' for c in action.choices)})"
    default = action.default
    shown = (
        ""
        if default in (None, argparse.SUPPRESS, False)
        or action.nargs == 0
        or not action.option_strings
        else f"`{default}`"
    )
    required = "yes" if action.required else ""
    return f"| {names} | {_cell(help_text)} | {shown} | {required} |"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out.extend((name, helps.get(name, ""), p) for name, p in action.choices.items())
    return out


def _command_section(
    name: str, summary: str, parser: argparse.ArgumentParser, level: int
) -> list[str]:
    lines = [f"{'#' * level} `{name}`", ""]
    if summary:
        lines += [summary[0].upper() + summary[1:] + ".", ""]
    if parser.description:
        lines += [parser.description, ""]
    usage = " ".join(parser.format_usage().split())
    lines += ["```text", usage, "```", ""]
    rows = [r for r in map(_option_row, parser._actions) if r]
    if rows:
        lines += ["| argument | what it does | default | required |", "| --- | --- | --- | --- |"]
        lines += [*rows, ""]
    for sub_name, sub_help, sub_parser in _subcommands(parser):
        lines += _command_section(f"{name} {sub_name}", sub_help, sub_parser, level + 1)
    return lines


def write_cli_reference() -> None:
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal otherwise
    parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "Generated from the `pccd` argument parser (`pccd.cli.build_parser()`) when the site is "
        "built, so it lists exactly what the installed command accepts. `pccd COMMAND --help` "
        "prints the same.",
        "",
        "Every invalid argument is one `error: ...` line on stderr and exit code 2, before any "
        "file is written; an interrupted command exits with 130 and a rerun resumes.",
        "",
    ]
    commands = _subcommands(parser)
    lines += [f"- [`pccd {n}`](#pccd-{n}): {h}" for n, h, _ in commands] + [""]
    for name, summary, sub in commands:
        lines += _command_section(f"pccd {name}", summary, sub, 2)
    with mkdocs_gen_files.open("reference/cli.md", "w") as fh:
        fh.write("\n".join(lines))


# ---- repository Markdown (model cards, BENCHMARKS.md, CHANGELOG.md) ---------------------------
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)((?:\s+\"[^\"]*\")?)\)")


def site_page(repo_path: PurePosixPath) -> str | None:
    """The site page (docs-relative) that shows a repository file, if any."""
    text = repo_path.as_posix()
    if text == "BENCHMARKS.md":
        return "benchmarks.md"
    if text == "CHANGELOG.md":
        return "changelog.md"
    if text.startswith("docs/"):
        return text[len("docs/") :]
    weights = PurePosixPath("src/pccd/weights")
    if repo_path.parent.parent == weights and repo_path.name == "README.md":
        return f"models/{repo_path.parent.name}.md"
    return None


def _normalise(path: PurePosixPath) -> PurePosixPath | None:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return PurePosixPath(*parts)


def repository_markdown(text: str, source: PurePosixPath, page: str) -> str:
    """``text`` of the repository file ``source`` as the site page ``page``: relative links to
    site pages point at the page, images beside the source are copied, other links become the
    repository path in code."""
    page_dir = PurePosixPath(page).parent

    def relink(match: re.Match) -> str:
        bang, label, target, title = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return match.group(0)
        path_part, _, anchor = target.partition("#")
        repo_path = _normalise(source.parent / path_part)
        if repo_path is None:
            return label
        doc = site_page(repo_path)
        if (
            doc is None
            and bang
            and repo_path.suffix.lower() in IMAGES
            and (ROOT / repo_path).is_file()
        ):
            doc = (page_dir / repo_path.name).as_posix()
            with mkdocs_gen_files.open(doc, "wb") as fh:
                fh.write((ROOT / repo_path).read_bytes())
        if doc is None:
            return (
                f"{label} (`{repo_path}`)"
                if label and label != str(repo_path)
                else f"`{repo_path}`"
            )
        relative = os.path.relpath(doc, page_dir.as_posix() or ".")
        return f"{bang}[{label}]({relative}{'#' + anchor if anchor else ''}{title})"

    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        out.append(line if fenced else LINK.sub(relink, line))
    return "\n".join(out) + "\n"


def include_repository_file(name: str, page: str, missing: str) -> None:
    path = ROOT / name
    text = path.read_text() if path.is_file() else missing
    with mkdocs_gen_files.open(page, "w") as fh:
        fh.write(repository_markdown(text, PurePosixPath(name), page))
    if path.is_file():
        mkdocs_gen_files.set_edit_path(page, name)


def write_models() -> None:
    models = shipped_models(WEIGHTS)
    lines = [
        "# Shipped models",
        "",
        "Every model directory shipped in `src/pccd/weights/`, read from its `pccd.json` and "
        "weights when the site is built (`pccd models` prints the same; `pccd models --json` "
        "for scripts). Headline figures are the `headline` mapping of each `pccd.json`, each "
        "with the result file in `benchmarks/results/` it comes from.",
        "",
        "| model | family | parameters | trained conditions | samplers (default first) |",
        "| --- | --- | --- | --- | --- |",
    ]
    cards = {}  # page name (the model's directory) → its README.md
    for m in models:
        name, slug = m.info.name or m.info.directory.name, m.info.directory.name
        readme = m.info.directory / "README.md"
        if readme.is_file():
            cards[slug] = readme
        label = f"[`{name}`]({slug}.md)" if slug in cards else f"`{name}`"
        default = " (default)" if m.default else ""
        lines.append(
            f"| {label}{default} | {m.info.family} | {m.parameters:,} | "
            f"{', '.join(m.info.trained_conditions)} | {', '.join(m.info.samplers)} |"
        )
    lines.append("")
    for m in models:
        name, slug = m.info.name or m.info.directory.name, m.info.directory.name
        lines += [f"## `{name}`", ""]
        if m.headline:
            lines += ["| figure | value | result file |", "| --- | --- | --- |"]
            lines += [
                f"| {_cell(h.label)} | {_cell(h.value)} | {f'`{h.source}`' if h.source else ''} |"
                for h in m.headline
            ]
        else:
            lines.append("No headline figures recorded (no `headline` in its `pccd.json`).")
        card = f"Model card: [{name}]({slug}.md)." if slug in cards else "No model card yet."
        lines += ["", card, ""]
    with mkdocs_gen_files.open("models/index.md", "w") as fh:
        fh.write("\n".join(lines))
    summary = ["* [Shipped models](index.md)"]
    for slug, readme in cards.items():
        include_repository_file(readme.relative_to(ROOT).as_posix(), f"models/{slug}.md", "")
        summary.append(f"* [{slug}]({slug}.md)")
    with mkdocs_gen_files.open("models/SUMMARY.md", "w") as fh:
        fh.write("\n".join(summary) + "\n")


write_api_reference()
write_cli_reference()
write_models()
include_repository_file("BENCHMARKS.md", "benchmarks.md", "# Benchmarks\n\nNot written yet.\n")
include_repository_file("CHANGELOG.md", "changelog.md", "# Changelog\n\nNot written yet.\n")
