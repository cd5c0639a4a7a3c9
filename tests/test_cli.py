"""The cmt-scale command line, run as a user runs it: a subprocess, its exit code, its output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scaling import PRESETS, CMTConfig, build_cmt, estimate_cost


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmt_scale.cli", *args], capture_output=True, text=True, timeout=300)


def test_main_job_prints_the_member_and_nearest_presets() -> None:
    result = run("--target-flops", "4G")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for field in ("phi", "resolution", "stem", "dims", "depths", "heads", "sr ratios", "mlp ratios", "params",
                  "MACs (FLOPs)", "error vs target", "cmt_s", "multiply-adds"):
        assert field in out
    assert "Traceback" not in result.stderr


def test_json_output_matches_the_analytic_cost() -> None:
    result = run("--target-flops", "1.5G", "--json")
    data = json.loads(result.stdout)
    cfg = CMTConfig.from_dict(data["config"])
    assert data["macs"] == estimate_cost(cfg).macs and abs(data["error"]) <= 0.02


def test_verify_prints_the_fvcore_count() -> None:
    result = run("--target-flops", "0.6G", "--verify")
    assert result.returncode == 0 and "fvcore check" in result.stdout and "+0.000% vs analytic" in result.stdout


def test_save_round_trips_and_builds_the_same_model(tmp_path) -> None:
    path = tmp_path / "member.json"
    result = run("--target-params", "10M", "--save", str(path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    cfg = CMTConfig.from_json(path)
    assert cfg.to_dict() == data["config"]
    model = build_cmt(cfg)
    assert sum(p.numel() for p in model.parameters()) == data["params"]
    timm = pytest.importorskip("timm")
    same = timm.create_model("cmt_custom", config=str(path))
    assert sum(p.numel() for p in same.parameters()) == data["params"]


def test_the_save_hint_builds_the_member_in_a_fresh_interpreter(tmp_path) -> None:
    """The line printed after --save is what a user pastes into a new Python: it must run there as printed."""
    pytest.importorskip("timm")
    path = tmp_path / "member.json"
    result = run("--target-params", "10M", "--save", str(path))
    assert result.returncode == 0, result.stderr
    hint = result.stdout.split("build it with: ", 1)[1].strip()
    built = subprocess.run([sys.executable, "-c", f"{hint}; print(sum(p.numel() for p in model.parameters()))"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert int(built.stdout) == estimate_cost(CMTConfig.from_json(path)).params


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target-flops", "0"], "target_flops='0' is not allowed; allowed: a positive finite number"),
        (["--target-flops", "-4G"], "target_flops='-4G' is not a count; allowed"),
        (["--target-flops", "lots"], "target_flops='lots' is not a count; allowed"),
        (["--target-params", "25Q"], "target_params='25Q' is not a count"),
        (["--target-flops", "4G", "--base", "cmt_l"], "unknown preset 'cmt_l'; allowed: cmt_ti, cmt_xs, cmt_s, cmt_b"),
        (["--target-flops", "4G", "--target-params", "25M"], "give exactly one of --target-flops"),
        ([], "give exactly one of --target-flops"),
        (["--target-flops", "900G"], "is out of reach of the cmt_s family"),
        (["--target-flops", "4G", "--stage-ratio", "3:3"], "stage_ratio=(3, 3) has 2 entries"),
        (["--target-flops", "4G", "--resolution", "100"], "resolution=100 is not allowed"),
        (["--target-flops", "4G", "--alpha", "abc"], "argument --alpha: invalid float value: 'abc'"),
        (["profile", "cmt_zz"], "unknown model 'cmt_zz'"),
        (["family", "--phi", "2:1:0.5"], "--phi='2:1:0.5' is not allowed"),
        (["family", "--phi", "0:inf:1"], "--phi='0:inf:1' is not allowed"),
        (["family", "--phi", "0:1:1e-12"], "at most 10,000 values"),
        (["family", "--phi", "800"], "phi=800.0 is not allowed; allowed: a number in [-20, 20]"),
        (["--target-flops", "4G", "--alpha", "1e200"], "alpha=1e+200 is not allowed"),
        (["--target-flops", "4G", "--save", "/"], "path '/' is not allowed (is a directory); allowed: a file path"),
        (["--target-flops", "4G", "--save", "/no/such/dir/m.json"],
         "path '/no/such/dir/m.json' is not allowed (no such file or directory); allowed: a file that exists (to "
         "read), or a path in an existing folder (to write)"),
        (["search", "--space", "cmt_compound", "--protocol", "/no/such/protocol.json"],
         "path '/no/such/protocol.json' is not allowed (no such file or directory); allowed: a file that exists"),
        (["family", "--csv", "/no/such/dir/x.csv"], "path '/no/such/dir/x.csv' is not allowed"),
        (["--target-flops", "4G", "--stage-ratio", "-1:1:8:1"], "stage_ratio='-1:1:8:1' is not allowed; allowed: "
                                                                "positive integers"),
        (["--target-flops", "4G", "--batch-size", "0"], "--batch-size=0 is not allowed"),
        (["family", "--json"], "cmt-scale family: error: unrecognized arguments: --json (see cmt-scale family --help)"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(args, message) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_an_output_folder_where_a_file_is_is_one_line_naming_it(tmp_path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for args in (["search", "--space", "cmt_compound", "--dataset", "digits", "--out", str(afile)],
                 ["report", "--published", "--out", str(afile)]):
        result = run(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().endswith(f"path {str(afile)!r} is not allowed (a file is there); allowed: a "
                                              "folder, new or existing")
    assert afile.read_text() == "mine"  # nothing the user made is lost


def test_family_table_and_csv(tmp_path) -> None:
    path = tmp_path / "family.csv"
    result = run("family", "--phi", "-2:2:0.5", "--csv", str(path))
    assert result.returncode == 0, result.stderr
    rows = path.read_text().strip().splitlines()
    assert rows[0].startswith("phi,resolution,stem,dims,depths,params,macs")
    assert len(rows) == 1 + 9
    macs = [int(r.split(",")[6]) for r in rows[1:]]
    assert macs == sorted(macs)
    # the printed table rounds the rule's promise once: (1.2 * 1.3**1.5 * 1.15**2) ** phi, 0.4251x at phi = -1
    table = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 8}
    for phi in (-2.0, -1.0, 0.5, 2.0):
        promise = (1.2 * 1.3 ** 1.5 * 1.15 ** 2) ** phi
        assert table[f"{phi:+.2f}"].split("│")[-2].strip() == f"{promise:.2f}x"


def test_profile_and_presets() -> None:
    result = run("profile", "cmt_ti")
    assert (result.returncode == 0 and "stage2" in result.stdout
            and "unsupported ops (not counted): none" in result.stdout)
    presets = run("presets")
    assert presets.returncode == 0 and "25.14M" in presets.stdout and "26.26M" in presets.stdout
    # --json carries the table's analytic column: equal to fvcore's count part by part for a preset
    profile = json.loads(run("profile", "cmt_ti", "--json").stdout)
    assert profile["analytic_macs"] == profile["macs"] == estimate_cost(PRESETS["cmt_ti"]).macs
    assert profile["analytic_by_part"] == profile["by_part"]


def test_help_has_examples() -> None:
    result = run("--help")
    assert (result.returncode == 0 and "cmt-scale --target-flops 4G" in result.stdout
            and "multiply-adds" in result.stdout)


def _raise_internal(self, args, console) -> int:
    raise KeyError("a bug, not the user's input")


def test_an_internal_error_is_exit_1_one_line_and_its_traceback_is_under_debug(monkeypatch, capsys) -> None:
    from cmt_scale.cli import main
    from cmt_scale.commands import PresetsCommand

    monkeypatch.setattr(PresetsCommand, "run", _raise_internal)
    monkeypatch.delenv("CMT_SCALE_DEBUG", raising=False)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "internal error: KeyError" in err and "rerun with --debug" in err
    assert main(["presets", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_raise_internal" in err
    monkeypatch.setenv("CMT_SCALE_DEBUG", "1")
    assert main(["presets"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_bad_input_stays_exit_2_and_debug_shows_where_it_was_refused(capsys) -> None:
    from cmt_scale.cli import main

    assert main(["--target-flops", "-4G"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["--target-flops", "-4G", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("cmt-scale: error: target_flops='-4G'")


def test_every_command_is_a_sub_command_with_its_own_help() -> None:
    from cmt_scale.cli import build_parser
    from cmt_scale.commands import COMMANDS

    parser = build_parser()
    names = [c.name for c in COMMANDS]
    assert names == ["family", "profile", "presets", "search", "baselines", "report", "fit-coefficients",
                     "ablate-scaling", "proxy-fidelity", "sweep-recipes"]
    for name in names:
        assert parser.parse_args([name, *(["cmt_s"] if name == "profile" else []),
                                  *(["--space", "x"] if name == "search" else [])]).command.name == name
    assert parser.parse_args(["--target-flops", "4G"]).command.name == "solve"
    assert parser.parse_args(["family", "--phi", "-2:2:0.5"]).phi == "-2:2:0.5"  # a negative value, not an option


def test_the_main_job_does_not_import_torch() -> None:
    """Every sub-parser is built for every command line: none of them may pull in torch (or the search package
    that brings it), or the main job's answer waits seconds for imports it never uses."""
    code = ("import sys, io, contextlib\nfrom cmt_scale.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    code = main(['--target-flops', '4G'])\n"
            "print(code, sorted(m for m in ('torch', 'pandas', 'cmt_scale.search') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split("\n")[-2] == "0 []", result.stdout + result.stderr


@pytest.mark.parametrize("spread, warned", [(0.2, True), (0.01, False)])
def test_a_latency_solve_on_noisy_timings_warns_on_stderr(monkeypatch, capsys, spread, warned) -> None:
    """Timings stubbed as MACs / 1e8 ms with a given spread: the warning is the machine's noise, not the target."""
    from cmt_scale.cli import main
    from scaling import _solver

    monkeypatch.setattr(_solver, "_measured_latency_ms",
                        lambda cfg, device, batch_size, threads: (estimate_cost(cfg).macs / 1e8, spread))
    assert main(["--target-latency", "40ms", "--json"]) == 0
    out, err = capsys.readouterr()
    solution = json.loads(out)  # stdout stays JSON: the warning goes to stderr
    assert solution["latency_spread"] == spread and solution["latency_ms"] == pytest.approx(40, rel=0.1)
    assert ("the timings were noisy (repeats 20% off their median" in err) is warned
