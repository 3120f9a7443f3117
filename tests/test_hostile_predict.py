"""Hostile input to prediction, through the MLflow pyfunc, its scoring server's handler and
`textperf predict`, on a real tiny model registered in a real MLflow store.

The rule: a bad row or param fails the whole call with an error that names the row (or the file,
or the param) and the reason: an `MlflowException` with INVALID_PARAMETER_VALUE (also a
ValueError), which `mlflow models serve` answers with a 400 carrying that message. Never a raw
error from deep inside json, torch or numpy, a silent NaN, a silently wrong answer, or a
tokenizer run over megabytes it will throw away.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest_data import RECORD, register_tiny_version
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel
from mlflow.pyfunc.scoring_server import invocations
from typer.testing import CliRunner

from regressor import cli, registry
from regressor.config import ResolvedPaths
from regressor.pyfunc_model import OUTPUT_COLUMNS
from regressor.tracking import configure_mlflow

GOOD_ROW = {
    "task": RECORD["task"],
    "period": RECORD["period"],
    "config": json.dumps(RECORD["config"]),
    "logs": json.dumps(RECORD["logs"]),
}
FAST = {"num_samples": 2}
DEEP = "[" * 100_000 + "]" * 100_000  # parses only with a deeper stack than Python's


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One tiny `textperf` version, @champion, in a store of its own; its tracking URI."""
    var = tmp_path_factory.mktemp("hostile-predict")
    paths = ResolvedPaths(var_dir=var)
    configure_mlflow(paths, "hostile-predict")
    version = register_tiny_version(var, "hostile")
    registry.promote("textperf", version.version, reason="hostile predict test")
    yield paths.tracking_uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def model(store: str) -> PyFuncModel:
    mlflow.set_tracking_uri(store)
    return mlflow.pyfunc.load_model("models:/textperf@champion")


def refused(model: PyFuncModel, frame: pd.DataFrame, params: dict | None = None) -> str:
    """The message of the error `model.predict` refuses `frame` with: a 400 for the server."""
    with pytest.raises(MlflowException) as caught:
        model.predict(frame, params=params)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE", caught.value
    assert isinstance(caught.value, ValueError)  # what Python callers caught before
    return caught.value.message


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("config", "", "config is not valid JSON"),
        ("config", '{"n": ', "config is not valid JSON"),
        ("config", "hello", "config is not valid JSON"),
        ("config", "[1, 2]", "config must be a JSON object .* got an array"),
        ("config", "5", "config must be a JSON object .* got a number"),
        ("config", "null", "config must be a JSON object .* got null"),
        ("logs", '"hello"', "logs must be a JSON object .* got a string"),
        ("logs", DEEP, "logs is nested too deeply"),
        ("config", None, r"missing \['config'\]"),
        ("task", " ", r"missing \['task'\]"),
        # valid JSON, but no UTF-8 holds it: it failed in the tokenizer, with no row named
        ("config", '{"note": "x\\udcff"}', r"a lone surrogate \\udcff in its text"),
        # predicted from their Python repr before, with a 200
        ("text", ["a", "b"], "text must be a string, got an array"),
        ("text", b"<task>", "text must be a string, got bytes"),
        ("task", True, "task must be a string, got a boolean"),
        ("task", ["cell-a"], "task must be a string, got an array"),
        ("period", {"day": 1}, "period must be a string, got an object"),
        ("config", {"n": {1, 2}}, "config is not JSON data: a set is not a JSON value"),
    ],
)
def test_a_bad_row_fails_the_call_naming_the_row_and_reason(
    model: PyFuncModel, field: str, value: str | None, reason: str
):
    """Before: json's own error without a row (or RecursionError), and a list, number, string
    or null config/logs was serialized into text the model never saw in training and predicted
    as if it were fine."""
    frame = pd.DataFrame([GOOD_ROW, {**GOOD_ROW, field: value}, GOOD_ROW])
    message = refused(model, frame, FAST)
    assert message.startswith("row 1: "), message
    assert pd.Series([message]).str.contains(reason).all(), message


def test_a_record_without_a_period_is_served_the_text_it_trained_on(model: PyFuncModel):
    """A period-less source (a table) trains on texts without a period section
    (`dataset.record_from_row`). Served, a missing period was "", an empty section: every
    such record was predicted from a text no record had trained with."""
    from regressor.dataset import record_from_row
    from regressor.pyfunc_model import texts_of

    predictor = model.unwrap_python_model().predictor
    stored = {
        "task": RECORD["task"],
        "period": None,
        "config_json": json.dumps(RECORD["config"]),
        "logs_json": json.dumps(RECORD["logs"]),
    }
    trained = predictor.text_of(record_from_row(stored))
    fields = {k: v for k, v in GOOD_ROW.items() if k != "period"}
    rows = [fields, {**fields, "period": None}, {**fields, "period": ""}]
    assert texts_of(pd.DataFrame(rows), predictor.text_of) == [trained] * 3
    assert "<period>" not in trained


def test_nan_and_infinity_in_a_served_config_read_as_the_stored_text(model: PyFuncModel):
    """Ingest stores a config's NaN or infinity as the text JSON writers use ("NaN",
    "Infinity": `parsing.standard_json`), so a model trained on `a=NaN`. The same config sent
    as JSON (`{"a": NaN}`, which Python's JSON reads) or as a mapping holding float('nan') was
    served `a=nan`, a text no record had trained with."""
    from regressor.dataset import record_from_row
    from regressor.pyfunc_model import texts_of
    from regressor.sources.parsing import standard_json

    predictor = model.unwrap_python_model().predictor
    config = {**RECORD["config"], "odd": [math.nan, math.inf], "low": {"x": -math.inf}}
    logs = {**RECORD["logs"], "gap": math.nan}
    stored = {
        "task": RECORD["task"],
        "period": GOOD_ROW["period"],
        "config_json": standard_json(config),
        "logs_json": standard_json(logs),
    }
    trained = predictor.text_of(record_from_row(stored))
    assert "odd=[NaN,Infinity]" in trained, trained
    as_json = {**GOOD_ROW, "config": json.dumps(config), "logs": json.dumps(logs)}
    as_mappings = {**GOOD_ROW, "config": config, "logs": logs}
    assert texts_of(pd.DataFrame([as_json, as_mappings]), predictor.text_of) == [trained] * 2


def test_numpy_values_in_a_served_mapping_read_as_the_same_record_sent_as_json(
    model: PyFuncModel,
):
    """A config built from numpy or pandas values was written by `str()`: `np.bool_(True)` as
    `True` and `np.float32(1234.5678)` as `1234.5677`, where the same record sent as JSON reads
    `true` and `1235`; an int key, a tuple and an array likewise differed from their JSON."""
    from regressor.pyfunc_model import texts_of

    predictor = model.unwrap_python_model().predictor
    as_json = {**GOOD_ROW, "config": '{"x": 1234.5678, "flag": true, "ids": [1, 2], "1": 3}'}
    as_numpy = {
        **GOOD_ROW,
        "config": {"x": np.float32(1234.5678), "flag": np.bool_(True), "ids": (1, 2), 1: 3},
    }
    as_array = {**as_numpy, "config": {**as_numpy["config"], "ids": np.arange(1, 3)}}
    texts = texts_of(pd.DataFrame([as_json, as_numpy, as_array]), predictor.text_of)
    assert texts == [texts[0]] * 3
    assert "flag=true" in texts[0], texts[0]
    assert "x=1235" in texts[0], texts[0]


def test_a_temperature_beyond_float32_samples_rather_than_failing(model: PyFuncModel):
    """Finite, so the check passed it, but it became inf in float32: -inf / inf is NaN, and
    the draw indexed past the vocabulary (an IndexError, a 500 through the server)."""
    out = model.predict(pd.DataFrame([GOOD_ROW]), params={"num_samples": 4, "temperature": 1e39})
    assert out["finite_fraction"].between(0, 1).all()


def test_an_empty_text_is_no_text_and_no_rows_are_no_predictions(model: PyFuncModel):
    """An empty `text` beside the fields was predicted from nothing; a request with columns
    and no rows (an empty batch) raised TypeError, a 500 through the server."""
    fields = model.predict(pd.DataFrame([GOOD_ROW]), params=FAST)
    blank = model.predict(pd.DataFrame([{**GOOD_ROW, "text": ""}]), params=FAST)
    pd.testing.assert_frame_equal(blank, fields)
    empty = model.predict(pd.DataFrame(columns=list(GOOD_ROW)), params=FAST)
    assert (len(empty), tuple(empty.columns)) == (0, OUTPUT_COLUMNS)


def test_the_scoring_server_answers_400_with_the_row_and_reason(model: PyFuncModel):
    """`mlflow models serve`'s handler itself. Before: a plain ValueError, which it reports as
    "Encountered an unexpected error while evaluating the model" plus a stack trace."""
    body = json.dumps(
        {
            "dataframe_records": [GOOD_ROW, {**GOOD_ROW, "config": "[1, 2]"}],
            "params": FAST,
        }
    )
    schema = model.metadata.get_input_schema()
    with pytest.raises(MlflowException) as caught:
        invocations(body, "application/json", model, schema)
    assert caught.value.get_http_status_code() == 400
    assert "row 1: config must be a JSON object" in caught.value.message
    assert "unexpected error" not in caught.value.message


def test_an_input_with_no_column_the_model_reads_is_refused_not_answered_empty(
    model: PyFuncModel,
):
    """MLflow drops the columns the signature lacks, and every row with them when none is
    known. Before: a misspelt column (`tsak`, `txt`) came back as 0 predictions for 2 rows,
    with only MLflow's warning; now a 400 saying which columns the model reads. A known column
    beside an unknown one still predicts."""
    for frame in (pd.DataFrame([{"txt": "a"}, {"txt": "b"}]), pd.DataFrame()):
        assert "no column this model reads: give `text`, or `task`" in refused(model, frame, FAST)
    mixed = pd.DataFrame([{"txt": "a", "text": "<task>\ncell-a"}])
    assert len(model.predict(mixed, params=FAST)) == 1


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"num_samples": 0}, "num_samples must be between 1 and 1024, got 0"),
        ({"num_samples": -1}, "num_samples must be between 1 and 1024, got -1"),
        ({"num_samples": 10**7}, "num_samples must be between 1 and 1024, got 10000000"),
        ({"temperature": -1.0}, "temperature must be finite and >= 0"),
        ({"temperature": math.nan}, "temperature must be finite and >= 0"),
        ({"temperature": math.inf}, "temperature must be finite and >= 0"),
        ({"quantiles": [0.5, 1.5]}, r"quantiles must lie in \[0, 1\]"),
        ({"quantiles": [math.nan]}, r"quantiles must lie in \[0, 1\]"),
        ({"quantiles": [0.1, 0.1000001]}, "give the same column twice"),
    ],
)
def test_params_out_of_range_are_refused_by_name(model: PyFuncModel, params: dict, reason: str):
    """Before: num_samples 0 gave NaN everywhere (and RuntimeWarnings), -1 numpy's "negative
    dimensions are not allowed", 10^7 tried to decode ten million sequences per row; a negative
    temperature decoded greedily without a word, NaN or inf raised "index out of range in self"
    from torch's embedding; two quantiles named alike silently shared one column; quantiles
    outside [0, 1] raised a plain ValueError (a generic error through the server)."""
    message = refused(model, pd.DataFrame([GOOD_ROW]), {**FAST, **params})
    assert pd.Series([message]).str.contains(reason).all(), message


def test_the_predictor_refuses_what_sampling_cannot_mean(model: PyFuncModel):
    """The library check under the pyfunc, so versions registered with an older pyfunc file
    (MLflow keeps the file of its day) are covered too. Before: NaN, IndexError."""
    predictor = model.unwrap_python_model().predictor
    with pytest.raises(ValueError, match="num_samples must be a whole number >= 1"):
        predictor.predict_texts(["<task>\ncell-a"], num_samples=0)
    with pytest.raises(ValueError, match="temperature must be finite"):
        predictor.predict_texts(["<task>\ncell-a"], num_samples=2, temperature=math.nan)


def test_a_huge_text_is_cut_to_the_input_budget_before_tokenizing(
    model: PyFuncModel, monkeypatch: pytest.MonkeyPatch
):
    """A 5 MB `text` row: the real tokenizer sees at most twice the characters its input budget
    can hold, and the answer is the one for the text cut by hand. Before: the whole 5 MB went
    through the tokenizer (~5 s and ~1 GB here) to keep its first 256 ids."""
    predictor = model.unwrap_python_model().predictor
    tokenizer = predictor.tokenizer
    longest: list[int] = []
    encode = tokenizer.encode_batch

    def measured(texts: list[str], max_tokens: int) -> list[list[int]]:
        longest.append(max(map(len, texts)))
        return encode(texts, max_tokens)

    monkeypatch.setattr(tokenizer, "encode_batch", measured)
    bound = 2 * predictor.model_config.max_input_tokens * tokenizer.max_token_chars
    huge = "".join(chr(33 + i % 90) for i in range(5_000_000))
    out = model.predict(pd.DataFrame([{"text": huge}]), params={"num_samples": 4})
    assert longest == [bound]
    cut = model.predict(pd.DataFrame([{"text": huge[:bound]}]), params={"num_samples": 4})
    pd.testing.assert_frame_equal(out, cut)


@pytest.fixture
def runner(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("TEXTPERF_VAR_DIR", str(tmp_path / "var"))
    return CliRunner()


def flat(output: str) -> str:
    """Typer's boxed error as one line: box edges dropped, wrapped lines joined."""
    return " ".join(" ".join(line.strip("│ ") for line in output.splitlines()).split())


def predict_cli(runner: CliRunner, *args: str):
    result = runner.invoke(cli.app, ["predict", "--num-samples", "2", *args])
    # A clean exit (typer's usage error, or ours), never an exception escaping the command.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def test_cli_names_a_model_uri_that_does_not_exist(runner: CliRunner, tmp_path: Path):
    """Before: MLflow's "Registered Model with name=nope not found" as a traceback, then as
    one line with no next step."""
    record = tmp_path / "record.json"
    record.write_text(json.dumps(RECORD))
    result = predict_cli(runner, "--model", "models:/nope@champion", str(record))
    assert result.exit_code == 1
    assert "no registered model 'nope' in sqlite:" in result.output
    assert "`textperf retrain` trains and registers one" in result.output


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({**RECORD, "config": "hello"}, "'config' is not valid JSON"),
        ({**RECORD, "config": [1, 2]}, "'config' must be a JSON object"),
        ({**RECORD, "logs": "5"}, "'logs' must be a JSON object"),
        ({**RECORD, "config": None}, r"missing \['config'\]"),
        ({"text": 5}, "'text' must be a string, got a number"),
        ({**RECORD, "task": {"a": 1}}, "'task' must be a string, got an object"),
        (DEEP, "the JSON is nested too deeply"),
    ],
)
def test_cli_refuses_a_bad_record_naming_the_file(
    runner: CliRunner, tmp_path: Path, content: object, reason: str
):
    """Before: tracebacks (json's, a RecursionError, MLflow's schema enforcement, the pyfunc's
    ValueError) or, for a list config, a number."""
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(RECORD))
    bad.write_text(content if isinstance(content, str) else json.dumps(content))
    result = predict_cli(runner, str(good), str(bad))
    assert result.exit_code == 2, result.output
    assert "bad.json" in flat(result.output)
    assert pd.Series([flat(result.output)]).str.contains(reason).all(), result.output


def test_cli_accepts_numbers_as_task_and_period_and_a_json_text_config(
    runner: CliRunner, tmp_path: Path
):
    """A JSON record may well hold `"period": 20260101`. Before: MLflow's schema enforcement
    refused the int column with a traceback."""
    record = tmp_path / "record.json"
    content = {**RECORD, "task": 7, "period": 20260101, "config": json.dumps(RECORD["config"])}
    record.write_text(json.dumps(content))
    result = predict_cli(runner, str(record))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{record}: median ")


def test_cli_refuses_a_record_file_beyond_64_mib_unread(runner: CliRunner, tmp_path: Path):
    """Before: the whole file was read (from /dev/zero: forever, until memory ran out)."""
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(64 * 2**20 + 1)  # sparse: no disk written
    result = predict_cli(runner, str(big))
    assert result.exit_code == 2
    assert "big.json: larger than 64 MiB" in flat(result.output), result.output


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--num-samples", "0"], "num_samples must be between 1 and 1024"),
        (["--temperature", "nan"], "temperature must be finite"),
        (["-q", "1.5"], "quantiles must lie in"),
    ],
)
def test_cli_refuses_bad_params_before_loading_the_model(
    runner: CliRunner, tmp_path: Path, args: list[str], reason: str
):
    """Before: `--num-samples 0` printed `median nan` with exit 0, the others tracebacks. The
    model URI does not even exist: params are checked first."""
    record = tmp_path / "record.json"
    record.write_text(json.dumps(RECORD))
    result = predict_cli(runner, "--model", "models:/nope@champion", *args, str(record))
    assert result.exit_code == 2
    assert reason in flat(result.output), result.output


def test_the_output_keeps_the_rows_index(model: PyFuncModel):
    """A fresh 0..n-1 index: `frame.join(model.predict(frame))` on a filtered frame paired
    rows with other rows' predictions, or with NaN."""
    frame = pd.DataFrame([GOOD_ROW, {**GOOD_ROW, "task": "cell-b"}], index=[30, 10])
    out = model.predict(frame, params=FAST)
    assert list(out.index) == [30, 10]
    alone = model.predict(frame.loc[[10]], params=FAST)
    joined = frame.join(out).loc[[10], list(out.columns)]
    pd.testing.assert_frame_equal(joined, alone)
    assert joined["finite_fraction"].notna().all()  # never NaN: joined to a prediction


def test_a_negative_zero_quantile_is_the_zeroth():
    """-0.0 is valid JSON: it became a column `p-0` that no summary key matched, so it was left
    as sampled while the other quantiles were rescaled, and came out above p10."""
    from regressor.calibration import percent_label
    from regressor.pyfunc_model import checked_quantiles, quantile_column

    assert checked_quantiles([-0.0, 0.9]) == (0.0, 0.9)
    assert quantile_column(-0.0) == "p0"
    assert percent_label(-0.0) == "0"


@pytest.mark.parametrize(
    ("finite", "shown"), [(1023 / 1024, "99.9%"), (199 / 200, "99.5%"), (0.125, "12.5%")]
)
def test_cli_says_how_many_draws_decoded_rounding_down(finite: float, shown: str):
    """1023 of 1024 read "100% of the draws decoded to a number", under a note saying not all
    did."""
    assert cli.finite_note(finite) == f"{shown} of the draws decoded to a number"


def test_each_row_says_how_many_of_its_draws_decoded_to_a_number():
    """`summarize` leaves non-finite draws out of every statistic: one finite draw of eight
    gave p10 = p90 = median and std 0, a row that looked sure of itself, and nothing said so."""
    import numpy as np

    from regressor.pyfunc_model import output_frame
    from regressor.sampling import summarize

    draws = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [5.0, *[np.nan] * 7]])
    out = output_frame(summarize(draws, (0.1, 0.5, 0.9)), (0.1, 0.9), False)
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert out["finite_fraction"].tolist() == [1.0, 0.125]
    assert out.loc[1, "std"] == 0.0  # what the fraction qualifies


def test_a_model_folder_on_disk_predicts_without_a_store(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A copied or downloaded model was refused for want of an MLflow store, with a message
    sending the user to `textperf retrain`. A BOM before the record's JSON (Windows editors
    write one) is read too."""
    mlflow.set_tracking_uri(store)
    folder = mlflow.artifacts.download_artifacts(
        "models:/textperf@champion", dst_path=str(tmp_path / "copy")
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TEXTPERF_VAR_DIR", str(tmp_path / "empty"))  # no mlflow.db in it
    record = tmp_path / "bom.json"
    record.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORD).encode())
    result = predict_cli(CliRunner(), "--model", str(Path(folder).resolve()), str(record))
    assert result.exit_code == 0, result.output
    assert "median" in result.output
    assert not (tmp_path / "empty" / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["predict", "--model", "", "r.json"], "--model"),  # `--model "$MODEL"`, MODEL unset
        (["adapt", "--task", " "], "--task"),  # adapted the holdout task instead
        (["adapt", "--method", "full", "--lora-rank", "4"], "--lora-rank"),  # unused, new key
    ],
)
def test_an_empty_or_unused_option_is_refused_not_taken_for_the_default(
    runner: CliRunner, tmp_path: Path, args: list[str], hint: str
):
    (tmp_path / "r.json").write_text(json.dumps(RECORD))
    result = runner.invoke(cli.app, [a.replace("r.json", str(tmp_path / "r.json")) for a in args])
    assert result.exit_code == 2, result.output
    assert hint in flat(result.output)


def test_join_fits_where_no_ready_file_can_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`--ready` under a regular file: a FileExistsError traceback before."""
    monkeypatch.setenv("NODE_RANK", "1")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["join-fits", "--var-dir", str(tmp_path / "var"), "--ready", str(blocker / "ready")]
    result = CliRunner().invoke(cli.app, [*args, "--until", str(blocker)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: {blocker}")
