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


README_ZH = README.with_name("README.zh.md")
FENCE = re.compile(r"^```.*?^```[ \t]*$", flags=re.DOTALL | re.MULTILINE)


def _tables(text):
    """Each Markdown table outside code blocks as a list of its lines, header and separator included."""
    tables, current = [], None
    for line in FENCE.sub("", text).splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            current.append(line)
        else:
            current = None
    return tables


def test_readme_zh_is_the_chinese_twin_of_readme():
    """README.zh.md, the README in Chinese (issue 22, point 3), stays in step with README.md: each links to the other
    on its first line; the same headings level by level, in the same order; the same fenced code blocks, byte for byte
    and in order, so no command drifts between the languages; the same images; the same five files from the CLI to dA;
    and the tables of measured numbers (every cell after the first holds a digit) copied row for row."""
    en, zh = README.read_text(encoding="utf-8"), README_ZH.read_text(encoding="utf-8")
    assert en.splitlines()[0] == "中文版: [README.zh.md](README.zh.md)"
    assert zh.splitlines()[0] == "English: [README.md](README.md)"

    def levels(text):
        return [len(hashes) for hashes in re.findall(r"^(#+) ", FENCE.sub("", text), flags=re.MULTILINE)]
    assert levels(zh) == levels(en), "README.zh.md's headings differ from README.md's in number or level"

    en_blocks, zh_blocks = FENCE.findall(en), FENCE.findall(zh)
    assert len(zh_blocks) == len(en_blocks), (len(zh_blocks), len(en_blocks))
    for i, (a, b) in enumerate(zip(en_blocks, zh_blocks)):
        assert a == b, f"code block {i + 1} differs between README.md and README.zh.md:\n{a}\n---\n{b}"

    def images(text):
        return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert images(zh) == images(en), (images(zh), images(en))

    def steps(text):
        return re.findall(r"^\d\. `([\w/]+\.py)`: `(\w+)\.?(\w*)`", text, flags=re.MULTILINE)
    assert steps(zh) == steps(en), (steps(zh), steps(en))

    en_tables, zh_tables = _tables(en), _tables(zh)
    assert len(zh_tables) == len(en_tables)
    measured = 0
    for a, b in zip(en_tables, zh_tables):
        assert len(a) == len(b), (a[0], b[0])
        if all(all(re.search(r"\d", cell) for cell in row.strip("|").split("|")[1:]) for row in a[2:]):
            assert b[2:] == a[2:], f"the measured rows under {b[0]} are not README.md's"
            measured += 1
    assert measured >= 4, measured


def test_the_qlora_row_is_the_runs_own():
    """README's QLoRA row and the sentences around it quote benchmarks/compare-qlora/results.json, in both languages."""
    import json
    results = json.loads((README.parent / "benchmarks" / "compare-qlora" / "results.json").read_text())
    q = next(r for r in results["runs"] if r["method"] == "qlora")
    lora = next(r for r in results["runs"] if r["label"] == "lora r=8")
    mq, ml = q["memory"]["measured"], lora["memory"]["measured"]
    full = next(r for r in results["runs"] if r["method"] == "full")["memory"]["measured"]
    row = (f"| {q['label']} | {q['trainable']:,} ({q['percent']:.2f}%) | {q['ms_per_step']:.0f} "
           f"({lora['ms_per_step']:.0f}) | {q['val_accuracy']:.3f} | {q['test_accuracy']:.3f} | "
           f"{q['forgetting']:+.4f} | {q['spectral']['effective_rank_dW']:.1f} | {mq['parameters'] / 2**20:.2f} "
           f"({ml['parameters'] / 2**20:.2f}) | {mq['total'] / 2**20:.2f} ({ml['total'] / 2**20:.2f}) |")
    quant = results["quantization"]
    for readme in (README, README_ZH):
        text = readme.read_text(encoding="utf-8")
        assert row in text, (readme.name, row)
        assert f"{results['seconds']:.0f} s" in text
        assert f"{1 - mq['total'] / ml['total']:.0%}" in text and f"{1 - mq['total'] / full['total']:.0%}" in text
        assert f"{q['ms_per_step'] / lora['ms_per_step'] - 1:.0%}" in text
        d = quant["loss"]["quantised"]["nf4"]
        assert f"{d['delta']:+.4f} ± {d['delta_se']:.4f} nats" in text
        assert all(f"{100 * quant['summary'][c]['rel_error_mean']:.1f}%" in text for c in ("nf4", "int4", "fp4"))
