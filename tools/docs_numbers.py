"""Numbers in the notes come from committed data: a generated block per number, a refresh
command, a staleness check, and the MkDocs hook that renders them on the site.

A note never types a measured number. It writes a **block**: the placeholder, as an HTML comment,
followed by the value it renders to and a closing comment. The comments are invisible on GitHub and
on the site, so the number reads the same in the file, on GitHub and on the site::

    m3 serves <!--bench("m3/compare_h100.json", "results.m3.output_tokens_per_s", ",.0f")-->N<!--/--> tok/s
    a diff of <!--diff_lines("m3")-->N<!--/--> lines, budget <!--diff_budget("m3")-->N<!--/-->

(``N`` stands for the value ``refresh`` writes.) A placeholder is written on one line. A line
should not start with a block (GitHub would take the line for raw HTML): put a word before it.

The value between ``-->`` and ``<!--/-->`` is written by ``refresh``, never by hand::

    python tools/docs_numbers.py refresh [FILE...]   # rewrite every block's value from the data
    python tools/docs_numbers.py check [FILE...]     # exit 1, naming file, line and placeholder,
                                                     # when a value is stale or a file/key is missing
    python tools/docs_numbers.py show FILE...        # print FILE with every block rendered

Without FILE both scan every ``NOTE*.md`` and ``README*.md`` of the repository and every page under
``learn/`` (files git ignores, such as the generated ``learn/diffs/``, excepted). To add a number,
write the placeholder in the short form ``{{ bench(...) }}`` and run ``refresh``: it turns it into a
block. ``check`` (run by ``tests/test_docs_numbers.py``) fails on a short form left in a file.

The placeholders, Python call expressions over these functions only (file names are relative to
``benchmarks/results/``; a milestone's files live in its folder, ``m3/compare_h100.json``):

``bench(file, key, fmt=",.1f", scale=1)``: ``key`` is a dotted path into the JSON (list items by
index: ``results.folovllm.runs.0.wall_s``); the value is multiplied by ``scale`` and formatted
with Python's ``format(value, fmt)`` (``",.0f"`` thousands separators, ``".1%"`` percent,
``"d"`` integers). ``ratio(file, num_key, den_key, fmt=".2f", scale=1, den_file=None)``: one value
over another (``den_file`` when the denominator lives in another file; ``scale=1000`` for seconds
-> ms). ``diff_lines(m)`` / ``diff_budget(m)``: the ``folovllm/`` diff of milestone ``m`` against
its predecessor, added + removed lines, and the budget its manifest declares; ``diff_stat(m)``: the
whole table ``python tools/milestones.py diff m --stat`` prints. ``interview_index(lang)``: the
interview questions of every milestone note. ``results_table()``: the table of
``benchmarks/results/README.md`` (``tools/results_page.py``).

A value of several lines (``diff_stat``, ``interview_index``, ``results_table``) sits between the
two comments on lines of its own, with the indentation of the opening comment; ``diff_stat``'s
block goes inside a ``text`` code block (there GitHub shows the two comment lines as text).

A block works anywhere in a page: in tables, lists, admonitions and code blocks, and in files
pulled in with ``--8<--`` (the hook runs after pymdownx.snippets). On the site the hook replaces
every block by the value computed from the data at build time, so a stale file still builds with
the right numbers, and ``check`` catches the file. A backslash before a placeholder
(``\\<!--bench(...)-->...<!--/-->`` or ``\\{{ ... }}``) shows it as written, without the
backslash, and ``refresh`` leaves it alone. A missing file, a missing key, a non-number or a syntax
error stops the build (and ``check``) with the page and the placeholder named: a number cannot
silently go stale. ``render(text)`` is the site's substitution for scripts and tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
CALL = r"(?:bench|ratio|diff_lines|diff_budget|diff_stat|interview_index|results_table)\([^\n]*?\)"
# A block: <!--CALL-->value<!--/-->, the value on the same line or on lines of its own.
BLOCK = re.compile(r"(\\?)<!--(" + CALL + r")-->(.*?)<!--/-->", re.S)
# The short form, {{ CALL }}: what an author types; refresh turns it into a block.
SHORT = re.compile(r"(\\?)\{\{\s*(" + CALL + r")\s*\}\}")
PLACEHOLDER = re.compile(BLOCK.pattern + "|" + SHORT.pattern, re.S)


class NumberError(Exception):
    """A placeholder that cannot be rendered (missing file or key, bad format)."""


@cache
def _load(name: str) -> object:
    path = RESULTS_DIR / name
    if not path.is_file():
        known = ", ".join(
            sorted(p.relative_to(RESULTS_DIR).as_posix() for p in RESULTS_DIR.rglob("*.json"))
        )
        raise NumberError(f"no benchmarks/results/{name} (have: {known})")
    return json.loads(path.read_text(encoding="utf-8"))


def value(name: str, key: str) -> float:
    """The number at dotted ``key`` in ``benchmarks/results/<name>``."""
    node = _load(name)
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise NumberError(f"{name}: no key {key!r} (stopped at {part!r})")
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise NumberError(f"{name}: {key!r} is {node!r}, not a number")
    return node


def _fmt(x: float, fmt: str) -> str:
    try:
        return format(x, fmt)
    except ValueError as exc:
        raise NumberError(f"format {fmt!r} does not fit {x!r}: {exc}") from None


def bench(name: str, key: str, fmt: str = ",.1f", scale: float = 1) -> str:
    x = value(name, key) * scale
    if fmt.endswith("d"):
        x = round(x)
    return _fmt(x, fmt)


def ratio(
    name: str,
    num_key: str,
    den_key: str,
    fmt: str = ".2f",
    scale: float = 1,
    den_file: str | None = None,
) -> str:
    den = value(den_file or name, den_key)
    if den == 0:
        raise NumberError(f"{name}: {den_key!r} is zero")
    return _fmt(value(name, num_key) / den * scale, fmt)


@cache
def _diffs() -> dict[str, tuple[int, int | None]]:
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        import milestones as ms_tool
    finally:
        sys.path.pop(0)
    found = ms_tool.find_milestones(REPO_ROOT)
    out = {}
    for prev, cur in zip(found, found[1:], strict=False):
        diffs = ms_tool.compare(prev, cur)
        budget = cur.manifest.diff_budget
        stat = ms_tool.format_stat(diffs, budget).rstrip("\n")
        for key in (cur.name, f"m{cur.number}"):
            out[key] = (ms_tool.package_lines(diffs), budget, stat)
    return out


def _diff(milestone: str) -> tuple[int, int | None, str]:
    diffs = _diffs()
    if milestone not in diffs:
        raise NumberError(f"no diff for milestone {milestone!r} (have: {', '.join(diffs)})")
    return diffs[milestone]


def diff_lines(milestone: str) -> str:
    return str(_diff(milestone)[0])


def diff_stat(milestone: str) -> str:
    """The whole ``tools/milestones.py diff m --stat`` table (several lines: put it in a code block)."""
    return _diff(milestone)[2]


def diff_budget(milestone: str) -> str:
    budget = _diff(milestone)[1]
    if budget is None:
        raise NumberError(f"{milestone} declares no diff_budget")
    return str(budget)


def _slug(heading: str) -> str:
    from pymdownx.slugs import slugify

    text = re.sub(r"[`*]", "", heading)
    return slugify(case="lower")(text, "-")


def interview_index(lang: str = "zh") -> str:
    """Every milestone's interview questions with their difficulty, linked into the notes.

    Generated from the notes themselves (``### Qn.`` headings and the ``??? success`` line below each),
    for every milestone that has a page under learn/milestones/: a new milestone appears by itself.
    """
    suffix = "" if lang == "zh" else ".en"
    section = r"^## (面试题|Interview)"
    out = []
    for note in sorted(
        REPO_ROOT.glob(f"m*_*/NOTE{suffix}.md"), key=lambda p: _milestone_key(p.parent)
    ):
        name = note.parent.name
        if not (REPO_ROOT / "learn" / "milestones" / f"{name}.md").is_file():
            continue
        lines = render(note.read_text(encoding="utf-8"), str(note)).split("\n")
        starts = [i for i, line in enumerate(lines) if re.match(section, line)]
        if not starts:
            continue
        title = lines[0].lstrip("# ").strip()
        anchor = _slug(lines[starts[0]][3:])
        link = f"../milestones/{name}.md"
        out += [
            f"## {title}",
            "",
            f"[{'全部题目' if lang == 'zh' else 'All questions'}]({link}#{anchor})",
            "",
        ]
        for i in range(starts[0], len(lines)):
            m = re.match(r"^### (Q\d+\. .*)$", lines[i])
            if not m:
                continue
            level = next(
                (
                    re.search(r"[★☆]{3}\s*[^\"\s]+", x).group(0)
                    for x in lines[i + 1 : i + 4]
                    if "★" in x
                ),
                "",
            )
            out.append(f"- [{m.group(1)}]({link}#{_slug(m.group(1))}) {level}".rstrip())
        out.append("")
    return "\n".join(out)


def _milestone_key(path: Path) -> int:
    m = re.match(r"m(\d+)_", path.name)
    return int(m.group(1)) if m else 0


def results_table() -> str:
    """The generated table of ``benchmarks/results/README.md`` (``tools/results_page.py``)."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        import results_page
    finally:
        sys.path.pop(0)
    return results_page.table()


NAMESPACE = {
    "__builtins__": {},
    "bench": bench,
    "ratio": ratio,
    "diff_lines": diff_lines,
    "diff_budget": diff_budget,
    "diff_stat": diff_stat,
    "interview_index": interview_index,
    "results_table": results_table,
}


def evaluate(expr: str, where: str = "<text>") -> str:
    """The value of one placeholder expression; NumberError naming ``where`` on failure."""
    try:
        return str(eval(expr, dict(NAMESPACE)))  # noqa: S307 (our own notes)
    except NumberError as exc:
        raise NumberError(f"{where}: {expr}: {exc}") from None
    except Exception as exc:  # a typo in the placeholder itself
        raise NumberError(f"{where}: {expr}: {type(exc).__name__}: {exc}") from None


def _indent(text: str, start: int) -> str:
    """The whitespace before ``start`` on its line, if nothing else precedes it there."""
    line_start = text.rfind("\n", 0, start) + 1
    before = text[line_start:start]
    return before if not before.strip() else ""


def _stored(value: str, indent: str) -> str:
    """How a block holds ``value``: inline, or on lines of its own when it has several."""
    if "\n" not in value:
        return value
    lines = value.split("\n")
    return "\n" + "\n".join(indent + line if line else line for line in lines) + "\n" + indent


def _shown(value: str, indent: str) -> str:
    """What replaces a whole block on the site: the value, continued at the block's indentation."""
    return "\n".join(
        (indent + line if i and line else line) for i, line in enumerate(value.split("\n"))
    )


def _escaped(match: re.Match) -> bool:
    return bool(match.group(1) or match.group(4))


def _expr(match: re.Match) -> str:
    return match.group(2) or match.group(5)


OPENING = re.compile(r"(?<!\\)<!--(" + CALL + r")-->")


def _unclosed(match: re.Match, text: str, where: str) -> None:
    """A block whose value holds another block's opening lost its own closing comment."""
    if match.group(3) is not None and OPENING.search(match.group(3)):
        line = text.count("\n", 0, match.start()) + 1
        raise NumberError(f"{where}:{line}: <!--{match.group(2)}--> has no closing <!--/-->")


def render(text: str, where: str = "<text>") -> str:
    """Replace every block and short placeholder in ``text`` by its value (the site's view)."""

    def one(match: re.Match) -> str:
        if _escaped(match):  # shown as written, without the backslash
            return match.group(0)[1:]
        return _shown(evaluate(_expr(match), where), _indent(text, match.start()))

    return PLACEHOLDER.sub(one, text)


def refresh(text: str, where: str = "<text>") -> str:
    """Every block's value rewritten from the data; every short placeholder made a block."""

    def one(match: re.Match) -> str:
        if _escaped(match):
            return match.group(0)
        _unclosed(match, text, where)
        expr = _expr(match)
        value = _stored(evaluate(expr, where), _indent(text, match.start()))
        return f"<!--{expr}-->{value}<!--/-->"

    return PLACEHOLDER.sub(one, text)


def problems(text: str, where: str = "<text>") -> list[str]:
    """What ``check`` reports for one file: stale values, failing placeholders, short forms."""
    out = []
    for match in PLACEHOLDER.finditer(text):
        if _escaped(match):
            continue
        line = text.count("\n", 0, match.start()) + 1
        expr = _expr(match)
        try:
            _unclosed(match, text, where)
            want = _stored(evaluate(expr, f"{where}:{line}"), _indent(text, match.start()))
        except NumberError as exc:
            out.append(str(exc))
            continue
        if match.group(5):
            out.append(f"{where}:{line}: {{{{ {expr} }}}}: not a block yet (run refresh)")
        elif match.group(3) != want:
            have, new = match.group(3).strip(), want.strip()
            if "\n" in have or "\n" in new or len(have) + len(new) > 60:
                have, new = "(several lines)", "(see refresh)"
            out.append(f"{where}:{line}: <!--{expr}-->: has {have!r}, the data gives {new!r}")
    fenced = False
    for i, line in enumerate(text.split("\n"), 1):
        if re.match(r"^\s*(```|~~~)", line):
            fenced = not fenced
        elif not fenced and re.match(r"^ {0,3}<!--" + CALL + r"-->\S", line):
            out.append(
                f"{where}:{i}: a line starting with a block is raw HTML on GitHub: put a word first"
            )
    for match in OPENING.finditer(text):
        if not BLOCK.match(text, match.start()):
            line = text.count("\n", 0, match.start()) + 1
            out.append(f"{where}:{line}: <!--{match.group(1)}--> has no closing <!--/-->")
    return out


def placeholders(text: str) -> list[str]:
    """The expressions of every (unescaped) block and short placeholder in ``text``."""
    return [_expr(m) for m in PLACEHOLDER.finditer(text) if not _escaped(m)]


def documents() -> list[Path]:
    """Every NOTE*.md and README*.md of the repository and every page under learn/ (not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    keep = [
        p
        for p in listed
        if p.startswith("learn/") or re.match(r"(NOTE|README)[\w.]*\.md$", Path(p).name)
    ]
    return [REPO_ROOT / p for p in sorted(set(keep)) if (REPO_ROOT / p).is_file()]


# --------------------------------------------------------------------------- the MkDocs side

_current_page = ["<page>"]
_code_base = [""]  # "<repo_url>/blob/<branch>/" when the site knows its repository
CODE_PATH = re.compile(
    r"(?<![\[\w])`((?:m\d+_\w+|benchmarks|tools|examples|tests)/[\w./-]+\.(?:py|md|toml|sh|json))((?::[^`]*)?)`"
)
FENCE = re.compile(r"^\s*(```|~~~)")


def link_code(lines: list[str], base: str) -> list[str]:
    """`m3_paged/folovllm/x.py: Cls.fn` outside code blocks -> a link to the file in the repository."""
    out, fenced = [], False
    for line in lines:
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            line = CODE_PATH.sub(
                lambda m: f"[`{m.group(1)}{m.group(2)}`]({base}{m.group(1)})", line
            )
        out.append(line)
    return out


def _extension():
    from markdown.extensions import Extension
    from markdown.preprocessors import Preprocessor

    class Numbers(Preprocessor):
        def run(self, lines: list[str]) -> list[str]:
            page = _current_page[0]
            try:
                lines = render("\n".join(lines), page).split("\n")
                return link_code(lines, _code_base[0]) if _code_base[0] else lines
            except NumberError as exc:
                from mkdocs.exceptions import PluginError

                raise PluginError(f"docs_numbers: {exc}") from None

    class NumbersExtension(Extension):
        def extendMarkdown(self, md):  # noqa: N802 (Markdown's API)
            # Priority below pymdownx.snippets (32): runs on the text the snippets pulled in.
            md.preprocessors.register(Numbers(md), "folo_numbers", 31)

    return NumbersExtension()


def on_config(config, **kwargs):
    # With repo_url set (FOLOVLLM_REPO_URL), file paths the notes quote link to the code.
    if config.repo_url:
        branch = os.environ.get("FOLOVLLM_REPO_BRANCH", "main")
        _code_base[0] = f"{config.repo_url.rstrip('/')}/blob/{branch}/"
    config.markdown_extensions.append(_extension())
    return config


def on_page_markdown(markdown, page, **kwargs):
    # The preprocessor does the work (after the snippets are pulled in); this only tells it which
    # page it converts, so that an error names the page.
    _current_page[0] = page.file.src_uri
    return markdown


def main(argv: list[str]) -> int:
    cmd, files = (
        (argv[0], argv[1:]) if argv and argv[0] in ("refresh", "check", "show") else ("show", argv)
    )
    if not argv:
        print("usage: python tools/docs_numbers.py refresh|check [FILE...] | show FILE...")
        return 2
    if cmd == "show":
        for arg in files:
            sys.stdout.write(render(Path(arg).read_text(encoding="utf-8"), arg))
        return 0
    paths = [Path(f).resolve() for f in files] or documents()
    found, changed = [], []
    for path in paths:
        where = (
            path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)
        )
        text = path.read_text(encoding="utf-8")
        if cmd == "check":
            found += problems(text, where)
            continue
        try:
            new = refresh(text, where)
        except NumberError as exc:
            found.append(str(exc))
            continue
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(where)
    for line in found:
        print(line, file=sys.stderr)
    if cmd == "refresh":
        print(
            f"refreshed {len(changed)} of {len(paths)} files" + "".join(f"\n  {c}" for c in changed)
        )
    elif not found:
        print(f"docs numbers OK: {len(paths)} files")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
