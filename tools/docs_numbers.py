"""MkDocs hook: numbers in the notes are rendered from committed data at build time.

A note never types a measured number. It writes a placeholder, and the build fills it in from a
JSON file under ``benchmarks/results/`` or from the lineage tool (``tools/milestones.py``)::

    {{ bench("m3_vs_m2_h100.json", "results.m3.output_tokens_per_s", ",.1f") }}      -> 1,173.0
    {{ bench("m3_vs_m2_h100.json", "results.m3.engine_stats.tpot_p99", ".1f", scale=1000) }} -> 294.7
    {{ bench("m3_throughput_h100.json", "engine_stats.kv_utilization", ".1%") }}     -> 99.2%
    {{ ratio("m3_vs_m2_h100.json", "results.m3.output_tokens_per_s",
             "results.m2.output_tokens_per_s", ".2f") }}                              -> 1.20
    {{ diff_lines("m3") }}   {{ diff_budget("m3") }}                                  -> 404  450

``bench(file, key, fmt=",.1f", scale=1)``: ``key`` is a dotted path into the JSON (list items by
index: ``results.folovllm.runs.0.wall_s``); the value is multiplied by ``scale`` and formatted
with Python's ``format(value, fmt)`` (``",.0f"`` thousands separators, ``".1%"`` percent,
``"d"`` integers). ``ratio(file, num_key, den_key, fmt=".2f", den_file=None)``: one value over
another. ``ratio`` takes ``scale`` too (``scale=1000`` for seconds per step -> ms).
``diff_lines(m)`` / ``diff_budget(m)``: the ``folovllm/`` diff of milestone ``m`` against its
predecessor, added + removed lines, and the budget its manifest declares; ``diff_stat(m)``: the
whole table ``python tools/milestones.py diff m --stat`` prints (several lines: use it alone on a
line inside a code block).

A placeholder is ``{{ ... }}`` on one line, evaluated as a Python expression over these functions
only. It works anywhere in a page, inside code blocks too, and in files pulled in with
``--8<--`` (the hook runs after pymdownx.snippets). ``\\{{ ... }}`` shows the placeholder itself. A missing file, a missing key, a non-number or
a syntax error stops the build with the page and the placeholder named: a number cannot silently
go stale. ``render(text)`` is the same substitution for scripts and tests.
"""

from __future__ import annotations

import json
import os
import re
import sys
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
PLACEHOLDER = re.compile(
    r"(\\?)\{\{\s*((?:bench|ratio|diff_lines|diff_budget|diff_stat|interview_index)\(.*?\))\s*\}\}"
)


class NumberError(Exception):
    """A placeholder that cannot be rendered (missing file or key, bad format)."""


@cache
def _load(name: str) -> object:
    path = RESULTS_DIR / name
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in RESULTS_DIR.glob("*.json")))
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


NAMESPACE = {
    "__builtins__": {},
    "bench": bench,
    "ratio": ratio,
    "diff_lines": diff_lines,
    "diff_budget": diff_budget,
    "diff_stat": diff_stat,
    "interview_index": interview_index,
}


def render(text: str, where: str = "<text>") -> str:
    """Replace every placeholder in ``text``; raise NumberError naming ``where`` on failure."""

    def one(match: re.Match) -> str:
        if match.group(1):  # \{{ ... }}: shown as written, without the backslash
            return match.group(0)[1:]
        try:
            return str(eval(match.group(2), dict(NAMESPACE)))  # noqa: S307 (our own notes)
        except NumberError as exc:
            raise NumberError(f"{where}: {match.group(0)}: {exc}") from None
        except Exception as exc:  # a typo in the placeholder itself
            raise NumberError(f"{where}: {match.group(0)}: {type(exc).__name__}: {exc}") from None

    return PLACEHOLDER.sub(one, text)


def placeholders(text: str) -> list[str]:
    return [m.group(0) for m in PLACEHOLDER.finditer(text) if not m.group(1)]


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


if __name__ == "__main__":
    # python tools/docs_numbers.py FILE...: print FILE with its placeholders rendered.
    for arg in sys.argv[1:]:
        sys.stdout.write(render(Path(arg).read_text(encoding="utf-8"), arg))
