from pathlib import Path

import pytest

from recsys.data.spec import SpecError, load_spec, parse_label_rule, spec_from_dict

SPECS = Path(__file__).resolve().parents[1] / "feature_specs"


@pytest.mark.parametrize("name", ["synthetic", "movielens", "taobao", "kuairand"])
def test_shipped_specs_validate(name):
    spec = load_spec(SPECS / f"{name}.yaml")
    assert spec.name == name
    assert spec.action_field.table == "action"


def _minimal(**overrides):
    raw = {
        "name": "t",
        "tables": [{"name": "item", "dim": 8}, {"name": "action", "dim": 4}],
        "fields": [
            {"column": "item_id", "table": "item", "role": "sequence"},
            {"column": "action", "table": "action", "role": "sequence", "candidate": False},
        ],
        "label": {"column": "label"},
        "split": {"valid_start": 0.8, "test_start": 0.9},
        "history": {"max_length": 16},
    }
    raw.update(overrides)
    return raw


def test_unknown_key_is_an_error_naming_its_path(tmp_path):
    raw = _minimal()
    raw["history"] = {"max_length": 16, "max_lenght": 3}
    with pytest.raises(SpecError, match=r"history\.max_lenght"):
        spec_from_dict(raw, source="x.yaml")


def test_wrong_type_is_an_error_naming_its_path():
    raw = _minimal()
    raw["tables"][0]["dim"] = "wide"
    with pytest.raises(SpecError, match=r"tables\.0\.dim"):
        spec_from_dict(raw)


def test_hash_table_needs_buckets_and_unknown_table_is_rejected():
    raw = _minimal()
    raw["tables"][0]["encoding"] = "hash"
    with pytest.raises(SpecError, match="buckets"):
        spec_from_dict(raw)
    raw = _minimal()
    raw["fields"][0]["table"] = "nope"
    with pytest.raises(SpecError, match="unknown table 'nope'"):
        spec_from_dict(raw)


def test_action_cannot_describe_candidates():
    raw = _minimal()
    raw["fields"][1]["candidate"] = True
    with pytest.raises(SpecError, match="outcome is the label"):
        spec_from_dict(raw)


def test_label_rules_parse_and_bad_rules_fail():
    assert parse_label_rule("rating >= 4") == ("rating", ">=", 4.0)
    assert parse_label_rule("action in [click, 'conversion']") == ("action", "in", ["click", "conversion"])
    with pytest.raises(SpecError, match="label rule"):
        spec_from_dict(_minimal(label={"rule": "rating ~ 4"}))
    with pytest.raises(SpecError, match="exactly one"):
        spec_from_dict(_minimal(label={"column": "label", "rule": "rating >= 4"}))


def test_split_points_accept_seconds_dates_and_quantiles():
    spec = spec_from_dict(_minimal(split={"valid_start": "2024-01-02", "test_start": 1704240000}))
    assert spec.split.valid_start == 1704153600
    assert spec.split.test_start == 1704240000
    with pytest.raises(SpecError, match="quantile"):
        spec_from_dict(_minimal(split={"valid_start": 1.5, "test_start": 0.9}))
