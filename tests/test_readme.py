"""The README's Python tour runs as written (documentation that cannot go stale silently)."""
import re
from pathlib import Path

import pytest

from minift.base import shipped_base_dir

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(not shipped_base_dir().is_dir(), reason="the shipped base model is missing")
def test_readme_python_tour_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})
    assert (tmp_path / "runs" / "adapter" / "adapter_config.json").is_file()


def test_readme_names_the_test_command():
    text = README.read_text()
    assert "python -m pytest tests" in text and "minift compare" in text
