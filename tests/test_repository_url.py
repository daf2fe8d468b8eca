"""The repository URL is written once in _config.yml; everything else must agree with it."""

import re

import pytest
import tomllib
import yaml

import nbtools

CONFIG = yaml.safe_load((nbtools.ROOT / "_config.yml").read_text())
URL = CONFIG["repository"]["url"]
ALL_NOTEBOOKS = nbtools.chapter_paths() + sorted(nbtools.EXERCISES.glob("*.ipynb"))


def test_config_points_at_github_main():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", URL)
    assert CONFIG["repository"]["branch"] == "main"
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


def test_pyproject_agrees():
    project = tomllib.loads((nbtools.ROOT / "pyproject.toml").read_text())["project"]
    assert project["urls"]["Repository"] == URL


@pytest.mark.parametrize("notebook", ALL_NOTEBOOKS, ids=lambda p: str(p.relative_to(nbtools.CHAPTERS)))
def test_setup_cell_installs_from_the_configured_repository_without_touching_torch(notebook):
    code = [c.source for c in nbtools.read(notebook).cells if c.cell_type == "code"]
    code = [s for s in code if s.strip() and not s.startswith("#| default_exp")]
    setup = code[0]
    assert f'REPOSITORY_URL = "{URL}"' in setup
    assert 'find_spec("scratchformer") is None' in setup            # only when missing
    assert '"--no-deps"' in setup and '"-e"' not in setup             # never reinstall torch; not editable
    assert "torch" not in setup.split("subprocess.run", 1)[1]          # torch is never named in the install
    assert 'f"git+{REPOSITORY_URL}@main"' in setup
