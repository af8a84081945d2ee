"""Typed strategy options: one declaration per strategy gives the checks, the CLI flags,
`transferkit strategies` and the YAML schema."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from cli_helpers import run_cli

from transferkit.adapt import STRATEGIES, get_strategy, option_specs
from transferkit.adapt.options import SNAPSHOT, catalogue, config_schema
from transferkit.cli.strategy_flags import flag_table
from transferkit.errors import ConfigError


def test_the_cli_snapshot_is_what_the_registry_says():
    assert json.loads(SNAPSHOT.read_text()) == json.loads(json.dumps(catalogue())), \
        "a strategy's options changed: run `make options` to refresh the CLI's snapshot"


def test_every_option_is_typed_documented_and_a_fit_flag():
    flags = flag_table()
    for name, cls in STRATEGIES.items():
        for spec in option_specs(cls):
            assert spec.help, f"{name}.{spec.name} has no help"
            assert spec.name in flags
    r = run_cli("fit", "--help")
    for row in flags.values():
        assert f"--{row['flag']}" in r.stdout
    assert "--schedule <linear|cosine|constant>" in r.stdout  # choices from the Literal


@pytest.mark.parametrize("options, message", [
    ({"epochs": "many"}, "'epochs' of strategy 'full' must be a whole number"),
    ({"epochs": 2.5}, "must be a whole number"),
    ({"schedule": "cosin"}, "one of linear, cosine, constant; got 'cosin' (did you mean"),
    ({"restore_best": "yes"}, "must be true or false"),
    ({"epoch": 3}, "Unknown option(s) for strategy 'full': epoch (did you mean 'epochs'?)"),
    ({"k_shot": 3}, "Unknown option(s) for strategy 'full': k_shot"),
    ({"patience": None}, None),  # unset is a value patience has
])
def test_options_are_checked_against_their_types(options, message):
    if message is None:
        assert get_strategy("full", options).train_config.patience is None
        return
    with pytest.raises(ConfigError) as e:
        get_strategy("full", options)
    assert message in str(e.value)


def test_numbers_written_the_yaml_1_1_way_and_lists_as_text_are_read():
    lora = get_strategy("lora", {"lr": "1e-4", "epochs": 2.0, "target_modules": "query,value"})
    assert lora.train_config.lr == 1e-4 and lora.train_config.epochs == 2
    assert lora.target_modules == ["query", "value"]


def test_effective_defaults_are_the_ones_the_strategy_uses():
    for name in ("full", "lora", "bitfit", "scratch", "gradual"):
        specs = {s.name: s.default for s in option_specs(STRATEGIES[name])}
        strategy = get_strategy(name)
        assert specs["lr"] == strategy.train_config.lr, name
        assert specs["epochs"] == strategy.train_config.epochs, name
    probe = {s.name: s.default for s in option_specs(STRATEGIES["probe"])}
    assert probe["max_iter"] == get_strategy("probe").options()["max_iter"]
    assert probe["epochs"] == get_strategy("probe", {"head": "linear"}).options()["epochs"]


def test_the_yaml_schema_accepts_a_real_config_and_refuses_bad_options(tmp_path):
    schema = config_schema()
    good = yaml.safe_load("train: data.csv\nstrategy: lora\nstrategy_options:\n  r: 4\n"
                          "  schedule: cosine\n  epochs: 2\n")
    jsonschema.validate(good, schema)
    for bad in ({"r": "four"}, {"schedule": "cosin"}, {"k_shot": 3}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**good, "strategy_options": bad}, schema)
    with pytest.raises(jsonschema.ValidationError):  # never from a file (issue 16)
        jsonschema.validate({**good, "overwrite": True}, schema)
    r = run_cli("strategies", "--schema")
    assert r.returncode == 0 and json.loads(r.stdout) == json.loads(json.dumps(schema))


def test_a_flag_the_strategy_does_not_take_is_refused_before_any_data_is_read(tmp_path):
    r = run_cli("fit", str(tmp_path / "missing.csv"), "--k-shot", "3", "--out",
                str(tmp_path / "run"))
    assert r.returncode == 2 and "k_shot" in r.stderr and "'probe'" in r.stderr
    assert "missing.csv" not in r.stderr and not (tmp_path / "run").exists()
    config = tmp_path / "run.yaml"
    config.write_text(f"train: {tmp_path / 'missing.csv'}\nstrategy: full\n"
                      "strategy_options:\n  schedule: cosin\n")
    r = run_cli("fit", "--config", str(config))
    assert r.returncode == 2 and "did you mean 'cosine'" in r.stderr


def test_strategies_command_describes_each_strategy():
    r = run_cli("strategies", "lora")
    assert r.returncode == 0 and "--lora-r" in r.stdout and "list[str]" in r.stdout
    r = run_cli("strategies", "lorra")
    assert r.returncode == 2 and "did you mean 'lora'" in r.stderr
