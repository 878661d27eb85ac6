"""mkdocs hook: the notebooks under ``learn/notebooks/`` become pages in both language trees.

mkdocs-jupyter marks an ``.ipynb`` file as a documentation page by wrapping it in its
``NotebookFile``; mkdocs-static-i18n then rebuilds every file as a plain ``File`` for each
language (its ``on_files`` runs last, at priority -100), which drops the wrapper, and the
notebook is copied to the site as raw JSON. This hook runs after both and wraps the notebooks
again as pages, under the language's folder (``en/...``) when the i18n plugin builds English.
"""

from __future__ import annotations

import os
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

WRAPPED: list[str] = []  # the pages this build should have written as HTML


@event_priority(-110)
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Wrap every notebook mkdocs-jupyter includes, after the i18n plugin rebuilt the files."""
    jupyter = config.plugins.get("mkdocs-jupyter")
    if jupyter is None:
        return files
    from mkdocs_jupyter.plugin import NotebookFile

    i18n = config.plugins.get("i18n")
    lang = getattr(i18n, "current_language", None)
    default = getattr(i18n, "default_language", lang)
    prefix = f"{lang}/" if lang and lang != default else ""

    def wrap(file: File) -> File:
        if isinstance(file, NotebookFile) or not jupyter.should_include(file):
            return file
        page = NotebookFile(file, **config)
        dest, url = file.dest_uri, file.url
        if prefix and not dest.startswith(prefix):  # i18n leaves non-pages at the root
            dest, url = prefix + dest, prefix + url
        page.dest_path, page.url = dest, url
        page.abs_dest_path = os.path.normpath(os.path.join(config.site_dir, dest))
        WRAPPED.append(page.abs_dest_path)
        return page

    for file in list(files):  # in place: the i18n plugin's Files subclass resolves page links
        page = wrap(file)
        if page is not file:
            files.remove(file)
            files.append(page)
    return files


def on_post_build(config: MkDocsConfig) -> None:
    """Fail the build if a notebook came out as anything but an HTML page."""
    for path in WRAPPED:
        head = (
            Path(path).read_text(encoding="utf-8")[:200].lstrip().lower()
            if Path(path).is_file()
            else ""
        )
        if not head.startswith("<!doctype html"):
            raise PluginError(f"notebook page {path} was not rendered as HTML")
    WRAPPED.clear()
