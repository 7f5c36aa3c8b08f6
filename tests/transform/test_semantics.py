"""What rules do to a table's changes: ops, typing, filters as deletes, unchanged values, failures, structure."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pyarrow as pa
import pytest

from airflow_provider_cdc.events import BEFORE_PREFIX, batch_schema
from airflow_provider_cdc.transform import RowFailure, RuleConfigError
from transform.util import TS_MS, USERS, col, column, data_rows, rules, schema_of, table_of

ROW = {"id": "1", "email": "john.doe@example.com", "phone": "555-123-4567", "price": "10.00", "tax": "1.50",
       "status": "active"}


def test_deletes_keep_their_key_and_truncates_pass_through():
    events = [("c", ROW), ("d", {"id": "2"}), ("t", {}), ("u", dict(ROW, id="3"))]
    ruleset = rules({"rule_id": "total", "rule_type": "map", "target_field": "total",
                     "expression": "{{ price + tax }}"},
                    {"rule_id": "up", "rule_type": "map", "target_field": "email", "expression": "{{ email.upper() }}"})
    result = ruleset.apply(table_of(USERS, events), USERS)
    rows = data_rows(result)
    assert [r["_cdc_op"] for r in rows] == ["c", "d", "t", "u"]
    assert rows[1] == {"_cdc_op": "d", "id": "2", "email": None, "phone": None, "price": None, "tax": None,
                       "status": None, "total": None}
    assert rows[2]["id"] is None and rows[2]["total"] is None
    assert [r["total"] for r in rows] == ["11.50", None, None, "11.50"]
    assert rows[3]["email"] == "JOHN.DOE@EXAMPLE.COM"


def test_a_delete_image_does_not_carry_a_value_past_the_rule_that_replaces_it():
    """REPLICA IDENTITY FULL: a delete carries the whole old row; a mask overwriting email must not let the clear
    value through on the delete, nor in the before-image of an update."""
    events = [("d", ROW), ("u", ROW, None, ROW)]
    ruleset = rules({"rule_id": "m", "rule_type": "map", "target_field": "email", "expression": "{{ mask(email) }}"})
    result = ruleset.apply(table_of(USERS, events), USERS)
    assert column(result, "email") == [None, "****************.com"]
    assert column(result, BEFORE_PREFIX + "email") == [None, None]
    assert column(result, BEFORE_PREFIX + "id") == [None, "1"]  # keys stay: the sink needs them


def test_rules_run_in_config_order_and_see_earlier_outputs():
    ruleset = rules(
        {"rule_id": "total", "rule_type": "map", "target_field": "total", "expression": "{{ price + tax }}"},
        {"rule_id": "double", "rule_type": "map", "target_field": "double", "expression": "{{ total * 2 }}"},
        {"rule_id": "big", "rule_type": "filter", "expression": "{{ double > 20 }}"},
    )
    result = ruleset.apply(table_of(USERS, [("c", ROW), ("c", dict(ROW, id="2", price="1.00"))]), USERS)
    assert column(result, "double") == ["23.00", None]
    assert column(result, "_cdc_op") == ["c", "d"]
    assert [r.rule_id for r in ruleset.for_table("public.users")] == ["total", "double", "big"]
    assert result.schema.column("double").source_type == "decimal(15,2)"  # 13,2 * 1 digit + 1


TYPED = schema_of(
    col("id", "integer", pk=True), col("created", "timestamptz"), col("born", "date"), col("meta", "json"),
    col("active", "boolean"), col("uid", "uuid"), col("ratio", "float"), col("qty", "integer"), name="typed")
TYPED_ROW = {"id": "7", "created": "2024-05-01T12:00:00.25Z", "born": "1990-02-03",
             "meta": '{"tier": "gold", "tags": ["a", "b"]}', "active": "true",
             "uid": "12345678-1234-5678-1234-567812345678", "ratio": "0.5", "qty": "3"}


@pytest.mark.parametrize(("expression", "expected", "logical"), [
    ("{{ created.year }}", "2024", "integer"),
    ("{{ created }}", "2024-05-01T12:00:00.25Z", "timestamptz"),
    ("{{ created.tzinfo is not none }}", "true", "boolean"),
    ("{{ born.month }}", "2", "integer"),
    ("{{ born }}", "1990-02-03", "date"),
    ("{{ meta.tier }}", "gold", "text"),
    ("{{ meta.tags | length }}", "2", "integer"),
    ("{{ meta }}", '{"tier": "gold", "tags": ["a", "b"]}', "json"),
    ("{{ not active }}", "false", "boolean"),
    ("{{ uid.hex }}", "12345678123456781234567812345678", "text"),
    ("{{ uid }}", "12345678-1234-5678-1234-567812345678", "uuid"),
    ("{{ ratio * 3 }}", "1.5", "float"),
    ("{{ qty * 2 }}", "6", "integer"),
    ("{{ qty / 2 }}", "1.5", "float"),
    ("{{ [qty, qty] }}", "[3, 3]", "json"),
    ("{{ {'q': qty} }}", '{"q": 3}', "json"),
    ("{{ 'x' ~ qty }}", "x3", "text"),
    ("{{ now() }}", "2024-05-01T12:00:01Z", "timestamptz"),
])
def test_rules_see_typed_values_and_give_typed_results(expression, expected, logical):
    ruleset = rules({"rule_id": "r", "rule_type": "map", "target_field": "out", "expression": expression})
    result = ruleset.apply(table_of(TYPED, [("c", TYPED_ROW)]), TYPED)
    assert not result.failures, result.failures
    assert column(result, "out") == [expected]
    assert result.schema.column("out").logical_type == logical


@pytest.mark.parametrize(("target_type", "values", "expected", "failed"), [
    ("decimal(10,2)", ["1.5", "2.25", "3.125"], ["1.50", "2.25", None], [2]),
    ("integer", ["12", "7.0", "7.5"], ["12", "7", None], [2]),
    ("text", ["12", "x", None], ["12", "x", None], []),
    ("boolean", ["true", "no", "maybe"], ["true", "false", None], [2]),
    ("json", ['{"a": 1}', "[1]", "{not json"], ['{"a": 1}', "[1]", None], [2]),
])
def test_target_type_fixes_the_type_and_a_value_that_does_not_convert_fails_its_row(target_type, values, expected,
                                                                                   failed):
    schema = schema_of(col("id", "integer", pk=True), col("v"))
    ruleset = rules({"rule_id": "t", "rule_type": "map", "target_field": "out", "expression": "{{ v }}",
                     "target_type": target_type})
    events = [("c", {"id": str(i), "v": v}) for i, v in enumerate(values)]
    result = ruleset.apply(table_of(schema, events), schema)
    assert [f.row for f in result.failures] == failed
    assert all(f.rule_id == "t" and f.field == "out" and "does not convert" in f.reason for f in result.failures)
    kept = [e for i, e in enumerate(expected) if i not in failed]
    assert column(result, "out") == kept
    assert result.schema.column("out").source_type == target_type


def test_cast_gives_its_type_and_refuses_to_round():
    ruleset = rules({"rule_id": "c", "rule_type": "map", "target_field": "net",
                     "expression": "{{ cast(price - tax, 'decimal(10,1)') }}"})
    result = ruleset.apply(table_of(USERS, [("c", ROW), ("c", dict(ROW, id="2", tax="1.55"))]), USERS)
    assert column(result, "net") == ["8.5"]
    assert result.schema.column("net").source_type == "decimal(10,1)"
    assert result.failures[0].row == 1 and "more than 1 decimal places" in result.failures[0].reason


def test_inferred_types_widen_across_rows_and_are_remembered_for_empty_batches():
    schema = schema_of(col("id", "integer", pk=True), col("v", "decimal"))
    ruleset = rules({"rule_id": "c", "rule_type": "map", "target_field": "out", "expression": "{{ v or 0 }}"})
    result = ruleset.apply(table_of(schema, [("c", {"id": "1"}), ("c", {"id": "2", "v": "1.25"})]), schema)
    assert column(result, "out") == ["0", "1.25"]
    assert result.schema.column("out").logical_type == "decimal"
    only_deletes = ruleset.apply(table_of(schema, [("d", {"id": "1"})]), schema)
    assert only_deletes.schema.column("out").logical_type == "decimal"


def test_a_json_template_escapes_values_so_they_cannot_break_the_document():
    schema = schema_of(col("id", "integer", pk=True), col("name"))
    ruleset = rules({"rule_id": "j", "rule_type": "map", "target_field": "doc",
                     "expression": '{"name": "{{ name }}", "n": {{ name | length }}}'})
    evil = 'x", "admin": true, "y": "\\'
    result = ruleset.apply(table_of(schema, [("c", {"id": "1", "name": evil})]), schema)
    assert json.loads(column(result, "doc")[0]) == {"name": evil, "n": len(evil)}
    ruleset = rules({"rule_id": "j", "rule_type": "map", "target_field": "doc",
                     "expression": '[{{ name == "x" }}, {{ name | tojson }}, "{{ none }}"]'})
    result = ruleset.apply(table_of(schema, [("c", {"id": "1", "name": evil})]), schema)
    assert json.loads(column(result, "doc")[0]) == [False, evil, ""]


def test_row_reaches_fields_whose_names_are_no_identifiers():
    schema = schema_of(col("id", "integer", pk=True), col("first name"), col("n", "integer"))
    ruleset = rules({"rule_id": "r", "rule_type": "map", "target_field": "greeting",
                     "expression": "{{ row['first name'] ~ '#' ~ (row.n + 1) }}"})
    result = ruleset.apply(table_of(schema, [("c", {"id": "1", "first name": "Ann", "n": "4"})]), schema)
    assert column(result, "greeting") == ["Ann#5"]
    assert result.columns == {"r": [("id", "greeting"), ("first name", "greeting"), ("n", "greeting")]}


def test_a_mixed_template_renders_text():
    ruleset = rules({"rule_id": "t", "rule_type": "map", "target_field": "label",
                     "expression": "{{ status }}: {{ price }} (+{{ tax }})"})
    result = ruleset.apply(table_of(USERS, [("c", ROW), ("c", dict(ROW, id="2", tax=None))]), USERS)
    assert column(result, "label") == ["active: 10.00 (+1.50)", "active: 10.00 (+)"]
    assert result.schema.column("label").logical_type == "text"


def test_a_filter_that_is_null_deletes_and_one_that_is_not_boolean_fails():
    ruleset = rules({"rule_id": "f", "rule_type": "filter", "expression": "{{ status }}"})
    events = [("c", dict(ROW, status="true")), ("c", dict(ROW, id="2", status=None)),
              ("c", dict(ROW, id="3", status="gold"))]
    result = ruleset.apply(table_of(USERS, events), USERS)
    assert column(result, "_cdc_op") == ["c", "d"]
    assert result.failures == [RowFailure(2, "f", "status", "the filter gave 'gold', not a boolean (true/false)")]


def test_a_filtered_update_that_moved_its_key_deletes_the_old_key():
    ruleset = rules({"rule_id": "f", "rule_type": "filter", "expression": "{{ status == 'active' }}"})
    events = [("u", dict(ROW, id="2", status="gone"), None, dict(ROW, id="1")),
              ("u", dict(ROW, id="5", status="gone"), None, {"id": "5"})]
    result = ruleset.apply(table_of(USERS, events), USERS)
    assert column(result, "_cdc_op") == ["d", "d"]
    assert column(result, "id") == ["1", "5"]


def test_the_sink_equals_the_filtered_source_over_a_sequence_of_batches():
    """Replaying the filtered change stream into a dict (the sink's merge) gives the source filtered."""
    ruleset = rules({"rule_id": "f", "rule_type": "filter", "expression": "{{ status == 'active' }}"})
    batches = [
        [("c", dict(ROW, id="1")), ("c", dict(ROW, id="2", status="new"))],
        [("u", dict(ROW, id="1", status="gone")), ("u", dict(ROW, id="2", status="active"))],
        [("u", dict(ROW, id="1", status="active")), ("d", {"id": "2"}), ("r", dict(ROW, id="3", status="x"))],
    ]
    source: dict[str, dict] = {}
    sink: dict[str, dict] = {}
    for events in batches:
        for op, row in events:
            if op == "d":
                source.pop(row["id"], None)
            else:
                source[row["id"]] = row
        for row in ruleset.apply(table_of(USERS, events), USERS).table.to_pylist():
            if row["_cdc_op"] == "d":
                sink.pop(row["id"], None)
            else:
                sink[row["id"]] = {c: row[c] for c in USERS.column_names}
        assert sink == {k: v for k, v in source.items() if v["status"] == "active"}


def test_aggregates():
    schema = schema_of(col("id", "integer", pk=True), col("a", "integer"), col("b", "integer"),
                       col("x", "decimal", precision=8, scale=2), col("y", "decimal", precision=8, scale=3),
                       col("s"), col("t"))
    row = {"id": "1", "a": "3", "b": "4", "x": "10.00", "y": "0.125", "s": "pear", "t": "apple"}

    def run(kind, fields, **extra):
        ruleset = rules({"rule_id": "g", "rule_type": "aggregate", "source_fields": fields, "target_field": "out",
                         "parameters": {"type": kind}, **extra})
        result = ruleset.apply(table_of(schema, [("c", row), ("c", {"id": "2"})]), schema)
        assert not result.failures, result.failures
        return column(result, "out"), result.schema.column("out")

    assert run("sum", ["a", "b"])[0] == ["7", None]
    assert run("sum", ["a", "b"])[1].logical_type == "integer"
    assert run("sum", ["x", "y"]) [0] == ["10.125", None]
    assert run("avg", ["a", "b"])[0] == ["3.5", None]
    assert run("avg", ["x", "y"])[0] == ["5.0625", None]
    assert run("avg", ["a", "b", "a"], target_type="decimal(10,2)")[0] == ["3.33", None]
    assert run("min", ["x", "y"])[0] == ["0.125", None]
    assert run("max", ["a", "x"])[0] == ["10.00", None]
    assert run("min", ["s", "t"])[0] == ["apple", None]
    assert run("count", ["a", "s", "y"])[0] == ["3", "0"]


def test_hash_is_salted_sha256_with_the_salt_from_the_secret_lookup():
    looked_up = []

    def secret(name):
        looked_up.append(name)
        return {"cdc_salt": "pepper"}[name]

    from airflow_provider_cdc.transform import FunctionRegistry, RuleSet

    ruleset = RuleSet.from_config([{"rule_id": "h", "rule_type": "map", "target_field": "email_hash",
                                    "expression": "{{ hash(email) }}", "parameters": {"salt": "cdc_salt"}},
                                   {"rule_id": "h2", "rule_type": "map", "target_field": "h2",
                                    "expression": "{{ email | hash }}", "parameters": {"salt": "cdc_salt"}}],
                                  functions=FunctionRegistry(), secret=secret)
    result = ruleset.apply(table_of(USERS, [("c", ROW), ("c", dict(ROW, id="2"))]), USERS)
    expected = hashlib.sha256(b"pepperjohn.doe@example.com").hexdigest()
    assert column(result, "email_hash") == [expected, expected] == column(result, "h2")
    assert looked_up == ["cdc_salt"]  # once, when first needed: never at parse time
    assert "pepper" not in repr(ruleset.versions())
    other = rules({"rule_id": "h", "rule_type": "map", "target_field": "email_hash",
                   "expression": "{{ hash(email) }}", "parameters": {"salt": "other_salt"}})
    assert column(other.apply(table_of(USERS, [("c", ROW)]), USERS), "email_hash") != [expected]
    assert result.lineage[0].masking


def test_a_salt_that_cannot_be_read_stops_the_table_with_a_clear_error():
    from airflow_provider_cdc.transform import FunctionRegistry, RuleSet

    def secret(name):
        raise KeyError(name)

    ruleset = RuleSet.from_config([{"rule_id": "h", "rule_type": "map", "target_field": "x",
                                    "expression": "{{ hash(email) }}", "parameters": {"salt": "missing"}}],
                                  functions=FunctionRegistry(), secret=secret)
    with pytest.raises(RuleConfigError, match="rule 'h'.*salt secret 'missing' cannot be read") as info:
        ruleset.apply(table_of(USERS, [("c", ROW)]), USERS)
    assert info.value.terminal


@pytest.mark.parametrize(("expression", "expected"), [
    ("{{ mask(phone) }}", "********4567"),
    ("{{ phone | mask(2, char='#') }}", "##########67"),
    ("{{ mask(phone, keep_last=0) }}", "************"),
    ("{{ mask('abc') }}", "***"),  # no longer than keep_last: masked whole
    ("{{ coalesce(none, status, email) }}", "active"),
    ("{{ coalesce(none, none) }}", None),
    ("{{ cast(price, 'text') }}", "10"),
    ("{{ cast(id, 'decimal(5,2)') }}", "1.00"),
    ("{{ price | cast('integer') }}", "10"),
])
def test_built_ins(expression, expected):
    ruleset = rules({"rule_id": "b", "rule_type": "map", "target_field": "out", "expression": expression})
    result = ruleset.apply(table_of(USERS, [("c", ROW)]), USERS)
    assert not result.failures, result.failures
    assert column(result, "out") == [expected]


def test_now_is_the_event_time_so_a_replay_gives_identical_output():
    ruleset = rules({"rule_id": "n", "rule_type": "map", "target_field": "seen", "expression": "{{ now() }}"},
                    {"rule_id": "d", "rule_type": "map", "target_field": "day",
                     "expression": "{{ now().date() }}"})
    table = table_of(USERS, [("c", ROW), ("u", ROW)])
    first, second = ruleset.apply(table, USERS), ruleset.apply(table, USERS)
    assert first.table.equals(second.table)
    event = dt.datetime.fromtimestamp((TS_MS + 1000) / 1000, dt.timezone.utc)
    assert column(first, "seen")[0] == event.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert column(first, "day") == ["2024-05-01", "2024-05-01"]
    assert first.schema.column("day").logical_type == "date"


def test_unchanged_inputs_mark_a_map_target_unchanged_and_fail_filters_and_aggregates():
    schema = schema_of(col("id", "integer", pk=True), col("bio"), col("name"), col("n", "integer"))
    row = {"id": "1", "name": "ann", "n": "2"}
    events = [("u", row, ["bio"]), ("u", dict(row, id="2", bio="hello"))]
    mapped = rules({"rule_id": "m", "rule_type": "map", "target_field": "short", "expression": "{{ bio[:2] }}"},
                   {"rule_id": "k", "rule_type": "map", "target_field": "upper", "expression": "{{ name.upper() }}"})
    result = mapped.apply(table_of(schema, events), schema)
    assert column(result, "short") == [None, "he"]
    assert column(result, "upper") == ["ANN", "ANN"]
    assert column(result, "_cdc_unchanged") == [["bio", "short"], None]
    assert not result.failures and result.counts["unchanged_marked"] == 1

    # A rule that overwrites the unchanged field itself from other fields gives it a value again.
    overwrite = rules({"rule_id": "o", "rule_type": "map", "target_field": "bio", "expression": "{{ name }}"})
    assert column(overwrite.apply(table_of(schema, events), schema), "_cdc_unchanged") == [None, None]

    filtered = rules({"rule_id": "f", "rule_type": "filter", "source_fields": ["bio"],
                      "expression": "{{ bio != '' }}"})
    result = filtered.apply(table_of(schema, events), schema)
    assert [(f.row, f.rule_id, f.field) for f in result.failures] == [(0, "f", "bio")]
    assert "not sent by the source" in result.failures[0].reason
    assert column(result, "id") == ["2"]

    summed = rules({"rule_id": "s", "rule_type": "aggregate", "source_fields": ["n", "bio"], "target_field": "t",
                    "parameters": {"type": "count"}})
    assert [f.row for f in summed.apply(table_of(schema, events), schema).failures] == [0]


def test_renames_and_drops_follow_unchanged_markers_and_before_images():
    schema = schema_of(col("id", "integer", pk=True), col("bio"), col("secret"))
    events = [("u", {"id": "1", "secret": "s"}, ["bio"], {"id": "1", "bio": "old", "secret": "s0"})]
    ruleset = rules({"rule_id": "r", "rule_type": "map", "rename_from": "bio", "target_field": "about",
                     "drop_fields": ["secret"]},
                    {"rule_id": "k", "rule_type": "map", "rename_from": "id", "target_field": "user_id"})
    result = ruleset.apply(table_of(schema, events), schema)
    assert result.schema.column_names == ["user_id", "about"]
    assert result.schema.primary_key == ["user_id"]
    assert result.schema.column("about") == schema.column("bio").__class__(**{**schema.column("bio").to_dict(),
                                                                             "name": "about"})
    assert result.table.column_names == list(batch_schema(result.schema, with_before=True).names)
    assert column(result, "_cdc_unchanged") == [["about"]]
    assert column(result, BEFORE_PREFIX + "about") == ["old"]
    assert result.columns == {"r": [("bio", "about")], "k": [("id", "user_id")]}
    assert result.paths == {"r": "structural", "k": "structural"}


def test_new_targets_get_a_before_column_so_the_layout_stays_a_batch_layout():
    events = [("u", ROW, None, ROW)]
    ruleset = rules({"rule_id": "t", "rule_type": "map", "target_field": "total", "expression": "{{ price + tax }}",
                     "drop_fields": ["phone"]})
    result = ruleset.apply(table_of(USERS, events), USERS)
    assert result.table.schema.names == batch_schema(result.schema, with_before=True).names
    assert column(result, BEFORE_PREFIX + "total") == [None]
    assert result.table.schema.field("_cdc_op").nullable is False  # bookkeeping fields as they came


def test_a_failing_row_is_reported_and_removed_and_the_others_go_on():
    events = [("c", ROW), ("c", dict(ROW, id="2", email="no-at-sign")), ("c", dict(ROW, id="3", price="abc")),
              ("c", dict(ROW, id="4"))]
    ruleset = rules({"rule_id": "dom", "rule_type": "map", "target_field": "domain",
                     "expression": "{{ email.split('@')[1] }}"},
                    {"rule_id": "total", "rule_type": "map", "target_field": "total",
                     "expression": "{{ price + tax }}"})
    result = ruleset.apply(table_of(USERS, events), USERS)
    assert column(result, "id") == ["1", "4"]
    assert [(f.row, f.rule_id, f.field) for f in result.failures] == [(1, "dom", "domain"), (2, "total", "price")]
    assert "IndexError" in result.failures[0].reason or "UndefinedError" in result.failures[0].reason
    assert "'abc'" in result.failures[1].reason and "decimal" in result.failures[1].reason
    assert result.counts["failed"] == 2 and result.counts["rows_out"] == 2


def test_null_inputs_are_named_in_the_reason():
    ruleset = rules({"rule_id": "dom", "rule_type": "map", "target_field": "domain",
                     "expression": "{{ email.split('@')[1] }}"})
    result = ruleset.apply(table_of(USERS, [("c", dict(ROW, email=None))]), USERS)
    assert "NULL in this row: email" in result.failures[0].reason


def test_a_field_the_table_lacks_fails_every_row_naming_it():
    ruleset = rules({"rule_id": "x", "rule_type": "map", "target_field": "y", "expression": "{{ nickname }}"})
    result = ruleset.apply(table_of(USERS, [("c", ROW), ("d", {"id": "2"})]), USERS)
    assert [(f.row, f.field) for f in result.failures] == [(0, "nickname")]
    assert "not a column of public.users" in result.failures[0].reason
    assert column(result, "_cdc_op") == ["d"]


def test_structural_impossibilities_stop_the_table():
    with pytest.raises(RuleConfigError, match="rule 'k'.*field 'id'.*key column"):
        rules({"rule_id": "k", "rule_type": "map", "target_field": "x", "expression": "{{ 1 }}",
               "drop_fields": ["id"]}).apply(table_of(USERS, [("c", ROW)]), USERS)
    with pytest.raises(RuleConfigError, match="rule 'k'.*field 'id'.*key column"):
        rules({"rule_id": "k", "rule_type": "map", "target_field": "id", "expression": "{{ 1 }}"}).apply(
            table_of(USERS, [("c", ROW)]), USERS)
    with pytest.raises(RuleConfigError, match="rule 'r'.*field 'nope'.*no such column"):
        rules({"rule_id": "r", "rule_type": "map", "rename_from": "nope", "target_field": "x"}).apply(
            table_of(USERS, [("c", ROW)]), USERS)


def test_integers_beyond_int64_are_computed_exactly_on_the_row_path():
    schema = schema_of(col("id", "integer", pk=True), col("n", "integer"))
    ruleset = rules({"rule_id": "m", "rule_type": "map", "target_field": "m", "expression": "{{ n * 4 }}"})
    big = str(2**62)
    result = ruleset.apply(table_of(schema, [("c", {"id": "1", "n": big}), ("c", {"id": "2", "n": "3"})]), schema)
    assert column(result, "m") == [str(2**64), "12"]
    assert result.paths["m"] == "row"  # the int64 kernel overflowed: the whole rule ran row by row


def test_wide_decimals_stay_exact():
    schema = schema_of(col("id", "integer", pk=True), col("a", "decimal"), col("b", "decimal", precision=38, scale=10))
    value = "12345678901234567890.1234567890"
    ruleset = rules({"rule_id": "s", "rule_type": "map", "target_field": "s", "expression": "{{ a * a + b }}"})
    result = ruleset.apply(table_of(schema, [("c", {"id": "1", "a": value, "b": value})]), schema)
    exact = "152415787532388367517299194526596555765.14250878775019052100"
    assert column(result, "s") == [exact]  # Python's default 28-digit context would have rounded this


def test_scope_versions_and_disabled_rules():
    config = {"rule_id": "a", "rule_type": "map", "target_field": "x", "expression": "{{ 1 }}", "tables": ["users"]}
    ruleset = rules(config, {"rule_id": "b", "rule_type": "filter", "expression": "{{ true }}",
                             "tables": ["shop.orders"]},
                    {"rule_id": "c", "rule_type": "filter", "expression": "{{ true }}", "enabled": False})
    assert [r.rule_id for r in ruleset.for_table("public.users")] == ["a"]
    assert [r.rule_id for r in ruleset.for_table("crm.users")] == ["a"]
    assert [r.rule_id for r in ruleset.for_table("shop.orders")] == ["b"]
    assert ruleset.for_table("public.orders") == []
    versions = ruleset.versions()
    assert list(versions) == ["a", "b"] and all(len(v) == 64 for v in versions.values())
    assert rules(dict(config)).versions()["a"] == versions["a"]  # deterministic
    assert rules(dict(config, expression="{{ 2 }}")).versions()["a"] != versions["a"]


def test_an_empty_table_gets_the_target_columns():
    ruleset = rules({"rule_id": "t", "rule_type": "map", "target_field": "total", "expression": "{{ price + tax }}"})
    result = ruleset.apply(table_of(USERS, []), USERS)
    assert result.table.num_rows == 0 and "total" in result.table.column_names
    assert result.schema.column("total").source_type == "decimal(13,2)"
    assert isinstance(result.table.column("total").type, pa.DataType)
