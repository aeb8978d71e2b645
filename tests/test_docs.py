"""The reference documentation stays true to the code: ``docs/cli.md`` names every command,
option and argument that click defines, in that command's own section; ``docs/api.md``
names every public name of ``mesh``, and its examples print what it says they print when
run against a real agent; and the README and ``docs/*.md`` point only at files (and
headings) that exist in the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest

import mesh
from mesh.cli import main

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = ROOT / "docs" / "cli.md"
API_MD = ROOT / "docs" / "api.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a path written in backquotes is taken for a file of the repository when it starts with
# one of the repository's folders (or leaves it: ../)
REPO_PATH = re.compile(r"`((?:\.\./|(?:mesh|docs|tests|bench|harness|\.ci)/)[^`\s]*)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$", re.M)
# an example of api.md: a python block, and the text block right after it (what it prints)
EXAMPLE = re.compile(r"```python\n(.*?)```\n\n(?:```text\n(.*?)```)?", re.S)
EXAMPLE_AGENT = "127.0.0.1:46102"  # the address the examples name


def commands(group: click.Group, path: tuple[str, ...] = ()):
    """(path, command) for the group and every command under it, depth first."""
    yield path, group
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def sections(text: str) -> dict[str, str]:
    """Heading text -> the text under it, up to the next heading of any level."""
    marks = list(HEADING.finditer(text))
    return {m.group(2): text[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(text)]
            for i, m in enumerate(marks)}


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_every_command_has_its_section():
    found = sections(CLI_MD.read_text())
    missing = [" ".join(("mesh", *path)) for path, _ in commands(main)
               if " ".join(("mesh", *path)) not in found]
    assert not missing, f"docs/cli.md has no section '### <command>' for {missing}"


def test_every_option_and_argument_is_in_its_commands_section():
    found = sections(CLI_MD.read_text())
    missing = []
    for path, cmd in commands(main):
        title = " ".join(("mesh", *path))
        text = found.get(title, "")
        for param in cmd.params:
            if isinstance(param, click.Option):
                names = param.opts + param.secondary_opts
            else:
                names = [param.human_readable_name]  # FUNCTION, ARGS, PATH...
            missing += [f"{title} {name}" for name in names
                        if not re.search(rf"`{re.escape(name)}[`\s=]", text)]
    assert not missing, f"docs/cli.md does not describe {missing}"


def test_the_walk_sees_what_click_defines():
    # (the test above would pass on an empty walk)
    paths = {" ".join(path) for path, _ in commands(main)}
    assert {"join", "call", "resources", "resources add", "resources lost", "demo"} <= paths
    join = dict(commands(main))[("join",)]
    assert "--rest-open" in [o for p in join.params for o in p.opts]


def test_every_public_name_is_in_the_api_reference():
    text = API_MD.read_text()
    missing = [name for name in mesh.__all__ if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert not missing, f"docs/api.md does not describe mesh.{missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_paths_point_at_what_exists(page):
    text = page.read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target} (outside the repository)")
        elif not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in {
                slug(h) for _, h in HEADING.findall(dest.read_text())}:
            broken.append(f"{target} (no such heading)")
    for path in REPO_PATH.findall(text):
        dest = (ROOT / path).resolve()
        if ROOT not in dest.parents or not dest.exists():
            broken.append(f"`{path}`")
    assert not broken, f"{page.relative_to(ROOT)} points at what does not exist: {broken}"


def test_the_checks_find_what_is_broken(tmp_path):
    # (a check that finds nothing on a broken page would pass for ever)
    assert LINK.findall("see [x](docs/nowhere.md) and ![p](a.png)") == ["docs/nowhere.md", "a.png"]
    assert REPO_PATH.findall("in `../shared/CONTRACT.md` and `mesh/agent.py`, not `join`") == [
        "../shared/CONTRACT.md", "mesh/agent.py"]
    assert slug("mesh resources add") == "mesh-resources-add"
    assert slug("Options shared by the client commands") == "options-shared-by-the-client-commands"


def examples() -> list[tuple[str, str | None]]:
    return EXAMPLE.findall(API_MD.read_text())


def test_the_examples_are_found():
    found = examples()
    assert len(found) >= 15 and all(out for _, out in found), found[:3]


@pytest.mark.agents
@pytest.mark.timeout(180)
def test_the_api_examples_print_what_the_page_says(agents, tmp_path):
    agent = agents.start("docs", cpus=2, env={"MESH_UNFIT_GRACE": "1"})  # (constraint's)
    env = {k: v for k, v in os.environ.items() if k not in ("MESH_AGENT", "MESH_PEERS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])

    def run(i: int, code: str, expected: str) -> str | None:
        script = tmp_path / f"example{i}.py"
        script.write_text(code.replace(EXAMPLE_AGENT, agent.comm))
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path, env=env)
        if done.returncode == 0 and done.stdout == expected:
            return None
        return (f"example {i} (exit {done.returncode}):\n{code}\nprinted:\n{done.stdout}"
                f"{done.stderr[-2000:]}\nexpected:\n{expected}")

    # (independent of each other: three at a time)
    with ThreadPoolExecutor(3) as pool:
        wrong = [w for w in pool.map(lambda a: run(*a), [(i, c, e) for i, (c, e)
                                                         in enumerate(examples())]) if w]
    assert not wrong, "\n\n".join(wrong)
    assert agent.alive()
