"""README stays current: its config reference is exactly what glip_d2/config.py defines."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _config_reference_module():
    spec = importlib.util.spec_from_file_location("config_reference", REPO / "tools" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_config_table_is_current():
    module = _config_reference_module()
    text = (REPO / "README.md").read_text()
    assert module.readme_with_table(text) == text, "run: .venv/bin/python tools/config_reference.py --write-readme"


def test_readme_names_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert "make test" in (REPO / ".ci" / "run").read_text()
