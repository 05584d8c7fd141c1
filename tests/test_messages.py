"""Messages that say what to do: nearest-key hints, the flat-tar hint, CLI ranges, --help, plan's verdict."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import Dataset, datasetd_cmd, run_datasetd
from datasetd import cli


@pytest.mark.parametrize(("typo", "meant"), [
    ('unpak = "tar"', "unpack"), ('intoo = "val"', "into"), ('sourc = "file"', "source"),
])
def test_every_unknown_key_gets_the_nearest_key(dataset: Dataset, typo: str, meant: str) -> None:
    text = dataset.manifest.read_text()
    key = {"unpack": 'unpack = "tar"', "into": 'into = "val"', "source": 'source = "file"'}[meant]
    head, val = text.split("[components.val]")
    dataset.manifest.write_text(head + "[components.val]" + val.replace(key, typo, 1))
    out = run_datasetd("plan", str(dataset.manifest))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    wrong = typo.split(" ")[0]
    assert f"components.val.{wrong}: unknown key (did you mean '{meant}'?)" in lines[0]


def test_a_misspelt_choice_gets_the_nearest_value(dataset: Dataset) -> None:
    dataset.manifest.write_text(dataset.manifest.read_text().replace('unpack = "class-tars"', 'unpack = "class-tar"'))
    out = run_datasetd("plan", str(dataset.manifest))
    assert out.returncode == 2 and "did you mean 'class-tars'?" in out.stderr


def test_class_tars_on_a_flat_tar_suggests_unpack_tar(dataset: Dataset) -> None:
    text = dataset.manifest.read_text()
    head, val = text.split("[components.val]")
    dataset.manifest.write_text(head + "[components.val]" + val.replace('unpack = "tar"', 'unpack = "class-tars"'))
    out = run_datasetd("--log-format", "json", "apply", str(dataset.manifest))
    assert out.returncode == 1
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith("datasetd: val:"))
    assert 'set unpack = "tar"' in line and "flat tar" in line, line
    assert not (dataset.root / "val").exists()


@pytest.mark.parametrize("workers", ["-5", "0", "1000", "two"])
def test_cli_options_are_checked_against_the_manifests_ranges(dataset: Dataset, workers: str) -> None:
    for verb in ("apply", "verify"):
        out = run_datasetd(verb, "--workers", workers, str(dataset.manifest))
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "--workers" in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert not (dataset.root / ".datasetd").exists(), "a usage error touched the root"


def test_help_describes_every_verb_and_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    assert "argument parsing" not in parser.format_help()  # not the module docstring
    assert "exit codes" in parser.format_help()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for name, sub in subparsers.choices.items():
        described = [a for a in subparsers._choices_actions if a.dest == name]
        assert described and described[0].help, f"{name} has no summary"
        for action in sub._actions:
            assert action.help, f"datasetd {name}: {action.option_strings or action.dest} has no help text"
    for action in parser._actions:
        assert action.help or action is subparsers, action.option_strings


def test_plan_exits_1_when_a_component_is_blocked(dataset: Dataset) -> None:
    dataset.val_tar.unlink()
    out = run_datasetd("plan", str(dataset.manifest))
    assert out.returncode == 1, out.stdout
    assert "blocked:" in out.stdout and "val.tar" in out.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root (CI runs as root)")
def test_plan_checks_that_root_is_writable(dataset: Dataset) -> None:
    assert run_datasetd("plan", str(dataset.manifest)).returncode == 0
    subprocess.run(["mount", "--bind", str(dataset.root), str(dataset.root)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dataset.root)], check=True)
        out = subprocess.run([*datasetd_cmd(), "plan", str(dataset.manifest)], capture_output=True, text=True,
                             timeout=60)
    finally:
        subprocess.run(["umount", str(dataset.root)], check=True)
    assert out.returncode == 1, out.stdout
    assert "NOT WRITABLE" in out.stdout and "read-only" in out.stdout, out.stdout
    assert "DOES NOT FIT" not in out.stdout
