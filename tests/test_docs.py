"""The documentation: the site builds strictly, every page in its navigation exists, and
README.md stays a small front page that keeps the Space's front matter and CI's test command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MKDOCS_YML = ROOT / "mkdocs.yml"
DOCS = ROOT / "docs"
README_MAX_BYTES = 12_500
INSTALL_HINT = "pip install -r docs/requirements.txt"


def _require_mkdocs() -> None:
    try:
        import material  # noqa: F401  (mkdocs-material's package)
        import mkdocs  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"MkDocs is not installed ({exc}): {INSTALL_HINT}")


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner, not a warning of ours
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=config.parent, env=env, capture_output=True, text=True,
                          timeout=300)


def _nav_pages(nav) -> list[str]:
    """Every file named in mkdocs.yml's nav, however deeply sectioned."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def _mkdocs_config() -> dict:
    import yaml

    return yaml.safe_load(MKDOCS_YML.read_text(encoding="utf-8"))


def _bash_blocks(text: str) -> list[list[str]]:
    return [block.strip("\n").split("\n") for block in re.findall(r"^```bash\n(.*?)^```$", text, re.M | re.S)]


def test_site_builds_strictly(tmp_path):
    _require_mkdocs()
    result = _build(MKDOCS_YML, tmp_path / "site")
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    """The strict build is what guards the links: a copy of the site with one broken link fails."""
    _require_mkdocs()
    shutil.copy(MKDOCS_YML, tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [nowhere](no-such-page.md).\n", encoding="utf-8")
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr


def test_every_page_in_the_nav_exists():
    config = _mkdocs_config()
    assert config["theme"]["name"] == "material"
    docs_dir = ROOT / config.get("docs_dir", "docs")
    pages = _nav_pages(config["nav"])
    assert pages, "mkdocs.yml has no nav"
    missing = [page for page in pages if not (docs_dir / page).is_file()]
    assert not missing, f"pages named in mkdocs.yml's nav but missing from {docs_dir}: {missing}"
    unlisted = sorted(p.name for p in docs_dir.glob("*.md") if p.name not in pages)
    assert not unlisted, f"pages in {docs_dir} that mkdocs.yml's nav does not list: {unlisted}"


def test_docs_requirements_pin_mkdocs_and_material():
    pins = dict(line.split("==") for line in (DOCS / "requirements.txt").read_text().split()
                if "==" in line)
    assert {"mkdocs", "mkdocs-material"} <= set(pins)


def test_readme_is_a_small_front_page():
    data = README.read_bytes()
    assert len(data) <= README_MAX_BYTES, (f"README.md is {len(data):,} bytes (at most {README_MAX_BYTES:,}): "
                                           "move the detail into a page under docs/")


def test_readme_keeps_the_space_front_matter():
    import yaml

    text = README.read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md must start with the Space's front matter"
    front = yaml.safe_load(text.split("\n---\n", 1)[0][len("---\n"):])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert {"title", "sdk_version", "hf_oauth", "short_description"} <= set(front)


def test_readme_quick_start_has_both_commands_in_one_bash_block():
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = _bash_blocks(quick)
    assert len(blocks) == 1, "the Quick start holds one ```bash block"
    lines = blocks[0]
    assert len(lines) == 2, f"the Quick start block holds exactly two commands, got {lines}"
    assert "app.py" in lines[0]
    assert "pytest" in lines[1] and "-r docs/requirements.txt" in lines[1]
    # .ci/run takes the third line of README's first ```bash block (the fence is line 1)
    first_block = text.split("```bash\n", 1)[1].split("\n```", 1)[0].split("\n")
    assert "pytest" in first_block[1] and first_block == lines


def test_docs_quick_start_matches_the_readme():
    readme = _bash_blocks(README.read_text(encoding="utf-8").split("## Quick start", 1)[1])[0]
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    assert _bash_blocks(index.split("## Quick start", 1)[1])[0] == readme
