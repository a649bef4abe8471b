"""``jlstm.__version__`` is the installed package's version, written once in pyproject.toml."""

import importlib.metadata
import re
from pathlib import Path

import jlstm

ROOT = Path(__file__).resolve().parents[1]


def test_version_comes_from_the_package_metadata():
    assert jlstm.__version__ == importlib.metadata.version("jlstm")


def test_version_is_the_one_in_pyproject():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    declared = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.M)
    assert declared is not None, "pyproject.toml declares no [project] version"
    assert jlstm.__version__ == declared.group(1)


def test_the_changelog_has_a_section_for_this_version():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[?{re.escape(jlstm.__version__)}\]?\b", changelog, re.M), (
        f"CHANGELOG.md has no '## {jlstm.__version__}' section")


def test_the_package_is_marked_typed():
    assert (Path(jlstm.__file__).parent / "py.typed").is_file()
