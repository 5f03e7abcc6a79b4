"""``reclora-pipeline data`` and ``reclora-pipeline retrieve``."""

import json

import numpy as np
import pandas as pd
import pytest

from reclora_pipeline.cli import COMMANDS, build_parser, main
from reclora_pipeline.data import RecDataset
from reclora_pipeline.retriever import RetrievalResult

from support.synthetic_data import make_world, write_ml1m
from support.tiny_models import make_tiny_llama


@pytest.fixture(scope="module")
def ml1m_folder(tmp_path_factory):
    return write_ml1m(make_world(num_users=30, num_items=40, seed=31), tmp_path_factory.mktemp("ml1m"))


def test_data_command_writes_splits_and_stats(tmp_path, ml1m_folder, capsys):
    out = tmp_path / "data"
    assert main(["data", "--dataset", "ml-1m", "--source", str(ml1m_folder), "--out", str(out), "--core", "3"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dataset"] == "ml-1m" and stats["options"]["core"] == 3
    assert set(stats) >= {"users", "items", "samples", "positive_rate", "rows_rejected", "values_unknown", "filtering"}
    for split in ("train", "valid", "test"):
        table = pd.read_csv(out / f"{split}.csv")
        assert len(table) == stats["samples"][split]
        assert list(table.columns) == ["sample_id", "user_id", "item_id", "timestamp", "rating", "label"]
    assert RecDataset.load(out).stats["samples"] == stats["samples"]
    assert "positive rate" in capsys.readouterr().out


def test_data_command_reports_bad_input_with_file_and_line(tmp_path, ml1m_folder, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("users.dat", "movies.dat"):
        (broken / name).write_bytes((ml1m_folder / name).read_bytes())
    rows = (ml1m_folder / "ratings.dat").read_text(encoding="latin-1").splitlines()
    rows[2] = "1::1::five::880000000"
    (broken / "ratings.dat").write_text("\n".join(rows) + "\n", encoding="latin-1")
    status = main(["data", "--dataset", "ml-1m", "--source", str(broken), "--out", str(tmp_path / "out"),
                   "--max-bad-fraction", "0"])
    error = capsys.readouterr().err
    assert status == 2
    assert "ratings.dat" in error and "line 3" in error and "rating 'five' is not a number" in error
    assert not (tmp_path / "out").exists()
    # Within the limit the row is counted and the run goes on.
    assert main(["data", "--dataset", "ml-1m", "--source", str(broken), "--out", str(tmp_path / "ok")]) == 0
    stats = json.loads((tmp_path / "ok" / "stats.json").read_text())
    assert stats["rows_rejected"] == {"ratings.dat": {"rating 'five' is not a number": 1}}


@pytest.mark.parametrize("argv, message", [
    (["--max-bad-fraction", "nan"], "data.max_bad_fraction: expected a finite number, got 'nan'"),
    (["--split-ratio", "0.8", "inf", "0.1"], "data.split_ratio[1]: expected a finite number, got 'inf'"),
    (["--split-ratio", "0.9", "0", "0.1"], "data.split_ratio must be three positive shares"),
    (["--label-threshold=-inf"], "data.label_threshold: expected a finite number"),
])
def test_data_command_refuses_values_that_cannot_run_before_reading(tmp_path, ml1m_folder, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["data", "--dataset", "ml-1m", "--source", str(ml1m_folder), "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_damaged_download_is_one_error_naming_the_file(tmp_path, capsys):
    from support.synthetic_data import make_world, write_goodreads

    write_goodreads(make_world(num_users=10, num_items=20, seed=4), tmp_path / "goodreads")
    path = tmp_path / "goodreads" / "goodreads_interactions_poetry.json.gz"
    path.write_bytes(path.read_bytes()[:-40])
    assert main(["data", "--dataset", "goodreads", "--source", str(tmp_path / "goodreads"), "--out",
                 str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"error: {path}: the gzip file is damaged or truncated" in error and "Traceback" not in error


def test_retrieve_command_recent_and_semantic(tmp_path, ml1m_folder, smollm2_dir):
    from reclora_pipeline.llm import load_tokenizer

    data = tmp_path / "data"
    assert main(["data", "--dataset", "ml-1m", "--source", str(ml1m_folder), "--out", str(data), "--core", "3"]) == 0
    assert main(["retrieve", "--data", str(data), "--mode", "recent", "--k-long", "7", "--k-short", "3", "--csv",
                 "--no-progress"]) == 0
    dataset = RecDataset.load(data)
    recent = RetrievalResult.load(data / "retrieval" / "recent", dataset)
    assert (recent.k_long, recent.k_short, len(recent)) == (7, 3, len(dataset))
    table = pd.read_csv(data / "retrieval" / "recent" / "histories.csv", dtype=str, keep_default_na=False)
    sample_id = int(dataset.sample_ids("test")[0])
    row = table[table["sample_id"] == str(sample_id)].iloc[0]
    assert row["short_item_ids"].split() == list(dataset.history([sample_id], max_len=3).item_id)

    # Semantic mode with a model folder (a tiny random Llama with the embedded tokenizer).
    tokenizer = load_tokenizer(str(smollm2_dir))
    model_dir = tmp_path / "tiny"
    make_tiny_llama(seed=5, vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    arguments = ["retrieve", "--data", str(data), "--model", str(model_dir), "--cache-dir", str(tmp_path / "cache"),
                 "--k-long", "6", "--k-short", "2", "--pooling", "last", "--no-progress"]
    assert main(arguments) == 0
    semantic = RetrievalResult.load(data / "retrieval" / "semantic", dataset)
    assert semantic.metadata["encoding"]["cache"] == "miss" and semantic.metadata["config"]["pooling"] == "last"
    assert main(arguments + ["--out", str(tmp_path / "again")]) == 0
    again = RetrievalResult.load(tmp_path / "again", dataset)
    assert again.metadata["encoding"]["cache"] == "hit"
    np.testing.assert_array_equal(again.long, semantic.long)
    assert not np.array_equal(semantic.long, RetrievalResult.load(data / "retrieval" / "recent").long[:, :6])


def test_parser_has_room_for_more_stages(capsys):
    names = build_parser()._subparsers._group_actions[0].choices
    assert {"data", "retrieve"} <= set(names) and len(COMMANDS) >= 2
    assert main([]) == 2
    assert main(["retrieve", "--data", "/nonexistent/folder"]) == 2
    assert "no dataset.json" in capsys.readouterr().err


def test_embedded_ml100k_data_command(tmp_path):
    assert main(["data", "--dataset", "ml-100k", "--out", str(tmp_path), "--no-split-csv"]) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["users"] == 943 and stats["rows_read"]["ml-100k.inter"] == 100_000
    assert not (tmp_path / "train.csv").exists()
