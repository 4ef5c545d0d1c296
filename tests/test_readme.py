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


def test_one_lora_step_from_the_cli_to_dA_is_five_files():
    """The README's walk from `minift finetune` to dA (issue 20): at most five files, each defining the function the
    README names first on its line, the first the CLI's, the last the one that computes dA."""
    steps = re.findall(r"^\d\. `([\w/]+\.py)`: `(\w+)\.?(\w*)`", README.read_text(), flags=re.M)
    assert 2 <= len(steps) <= 5, steps
    package = README.parent / "minift"
    for path, name, method in steps:
        source = (package / path).read_text(encoding="utf-8")
        assert re.search(rf"^(def|class) {name}\b", source, flags=re.M), (path, name)
        assert not method or re.search(rf"^    def {method}\b", source, flags=re.M), (path, name, method)
    assert steps[0][0] == "app/cli.py" and "dA = dh.T @ xd" in (package / steps[-1][0]).read_text(encoding="utf-8")
