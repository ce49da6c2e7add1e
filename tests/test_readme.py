"""The README's Python blocks run as written (the shipped model, no training)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)  # the quickstart writes reg.joblib
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})
    assert (tmp_path / "reg.joblib").exists()
