"""Prompt templates, Yes/No scoring and run reports."""

import csv
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from reclora_pipeline import plots
from reclora_pipeline.data import SPECS
from reclora_pipeline.data.raw import DatasetSpec
from reclora_pipeline.metrics import auc, ctr_metrics, logloss, rel_impr
from reclora_pipeline.plots import plot_gate_usage, plot_model_comparison, plot_sample_efficiency
from reclora_pipeline.scoring import AnswerTokens, left_pad, score_yes_probability
from reclora_pipeline.stages.report import add_statistics, markdown, write_predictions
from reclora_pipeline.stages.score import checked_scores
from reclora_pipeline.views import PromptFormatter, TextRecord, build_prompt

from support.tiny_models import TINY_VOCAB, make_tiny_llama


def test_movielens_prompt_matches_the_papers_figure_2():
    record = TextRecord(
        sample_id=1,
        target_title="Titanic (1997)",
        history=[("Pump Up the Volume (1990)", 4), ("Antz (1998)", 4), ("Devil's Own, The (1997)", 5),
                 ("Crying Game, The (1992)", 1)],
        profile={"gender": "M", "occupation": "writer", "age": "35-45"},
    )
    text = build_prompt(SPECS["ml-1m"], record)
    assert text.splitlines() == [
        "The user is a male. His job is writer. His age is 35-45.",
        "He watched the following movies in order in the past, and rated them:",
        "['0. Pump Up the Volume (1990) (4 stars)', '1. Antz (1998) (4 stars)', "
        "\"2. Devil's Own, The (1997) (5 stars)\", '3. Crying Game, The (1992) (1 star)']",
        "Based on the movies he has watched, deduce if he will like the movie ***Titanic (1997)***.",
        "Note that more stars the user rated the movie, the user like the movie more.",
        "You should ONLY tell me yes or no.",
    ]


def test_other_templates_and_ids_stay_out():
    record = TextRecord(sample_id=9, target_title="Dune", history=[("Emma", 3.5)],
                        profile={"gender": "F", "user_id": "u77"})
    books = build_prompt(SPECS["goodreads"], record)
    assert "book ***Dune***" in books and "3.5 stars" in books and "u77" not in books
    movies25 = build_prompt(SPECS["ml-25m"], record)  # a schema without profile fields: no profile sentence
    assert movies25.startswith("The user watched") and "female" not in movies25
    shows = DatasetSpec(**{**SPECS["ml-25m"].to_dict(), "name": "netflix", "item_noun": "show"})
    with pytest.raises(ValueError, match="No prompt template for 'netflix' items"):
        build_prompt(shows, record)


def test_compact_template_keeps_every_fact_in_about_half_the_tokens(smollm2_dir):
    from reclora_pipeline.llm import load_tokenizer
    from reclora_pipeline.views import PROMPT_TEMPLATES

    history = [("Pump Up the Volume (1990)", 4), ("Antz (1998)", 4.5), ("Crying Game, The (1992)", 1)]
    record = TextRecord(sample_id=1, target_title="Titanic (1997)", history=history,
                        profile={"gender": "F", "occupation": "writer", "age": "35-45", "zip": "u77"})
    compact = build_prompt(SPECS["ml-1m"], record, "compact")
    assert compact.splitlines() == [
        "A female writer aged 35-45 watched and rated, oldest first: Pump Up the Volume (1990): 4 stars; "
        "Antz (1998): 4.5 stars; Crying Game, The (1992): 1 star.",
        "Will she like the movie Titanic (1997)? Yes or no.",
    ]
    positions = [compact.index(title) for title, _ in history]
    assert positions == sorted(positions)  # oldest first, as in Figure 2
    # every schema and profile shape reads as a sentence; profile fields a schema lacks never appear
    assert build_prompt(SPECS["goodreads"], record, "compact").startswith("A user read and rated, oldest first: ")
    assert "female" not in build_prompt(SPECS["ml-25m"], record, "compact")
    lone = TextRecord(sample_id=2, target_title="Dune (1984)", history=[], profile={"occupation": "engineer"})
    assert build_prompt(SPECS["ml-1m"], lone, "compact").splitlines() == [
        "An engineer.", "Will they like the movie Dune (1984)? Yes or no."]
    with pytest.raises(ValueError, match="prompt template must be one of"):
        build_prompt(SPECS["ml-1m"], record, "short")

    tokenizer = load_tokenizer(str(smollm2_dir))
    lengths = {}
    for template in PROMPT_TEMPLATES:
        formatter = PromptFormatter(tokenizer, "plain", template)
        assert formatter.to_dict()["template"] == template
        text = formatter.prompt(SPECS["ml-1m"], record)
        assert text == build_prompt(SPECS["ml-1m"], record, template) + "\nAnswer:"
        lengths[template] = len(tokenizer(text)["input_ids"])
    assert lengths["compact"] < 0.6 * lengths["figure-2"], lengths
    with pytest.raises(ValueError, match="prompt template must be one of"):
        PromptFormatter(tokenizer, "plain", "short")
    from reclora_pipeline.config import PromptConfig

    settings = PromptFormatter.from_config(tokenizer, PromptConfig(template="compact")).to_dict()
    assert (settings["style"], settings["template"]) == ("plain", "compact")


def test_max_tokens_shortens_the_history_oldest_first_and_keeps_the_question(smollm2_dir):
    from reclora_pipeline.llm import load_tokenizer
    from reclora_pipeline.views import prompt_token_ids

    formatter = PromptFormatter(load_tokenizer(str(smollm2_dir)), "plain")
    spec = SPECS["ml-100k"]
    titles = [f"Film number {i} (199{i})" for i in range(6)]
    record = TextRecord(sample_id=7, target_title="The Target (1997)", history=[(t, 4) for t in titles],
                        profile={"gender": "F", "age": "25", "occupation": "writer"}, label=1)
    full, = prompt_token_ids(spec, [record], formatter)
    bare, = prompt_token_ids(spec, [dataclasses.replace(record, history=[])], formatter)
    limit = (len(full) + len(bare)) // 2
    ids, = prompt_token_ids(spec, [record], formatter, max_tokens=limit)
    text = formatter.tokenizer.decode(ids)
    assert len(ids) <= limit and text.endswith("***The Target (1997)***.\nNote that more stars the user rated the "
                                               "movie, the user like the movie more.\nYou should ONLY tell me yes or "
                                               "no.\nAnswer:")
    kept = [title for title in titles if title in text]
    assert titles[-1] in kept and titles[0] not in kept and kept == titles[len(titles) - len(kept):]
    assert prompt_token_ids(spec, [record], formatter, max_tokens=len(full)) == [full]  # fits: unchanged
    with pytest.raises(ValueError, match=f"prompt.max_tokens={len(bare) - 1} cannot hold the prompt of sample 7 .*"
                                         f"at least {len(bare)} "):
        prompt_token_ids(spec, [record], formatter, max_tokens=len(bare) - 1)


def test_formatter_answer_tokens_come_from_the_tokenizer(smollm2_dir):
    from reclora_pipeline.llm import load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_dir))
    plain = PromptFormatter(tokenizer, "plain")
    assert (plain.yes_id, plain.no_id) == (9230, 2838)  # ' Yes' / ' No' in SmolLM2's vocabulary
    assert AnswerTokens.from_formatter(plain) == AnswerTokens(yes=9230, no=2838)
    assert plain.format("Q").endswith("\nAnswer:")
    chat = PromptFormatter(tokenizer, "chat")
    assert (chat.yes_id, chat.no_id) == (10539, 5230)
    assert chat.format("Q").rstrip().endswith("assistant")

    class Splitting:
        chat_template = None

        def encode(self, text, add_special_tokens=False):
            return [1, 2]

    with pytest.raises(ValueError, match="must be one"):
        PromptFormatter(Splitting(), "plain")


def test_scoring_matches_single_prompt_softmax_and_keeps_order():
    model = make_tiny_llama()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, TINY_VOCAB, (n,), generator=g).tolist() for n in (5, 9, 3, 7, 6)]
    scores = score_yes_probability(model, prompts, AnswerTokens(yes=5, no=6), pad_id=0, batch_size=2, progress=False)
    for prompt, score in zip(prompts, scores):
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
        expected = torch.softmax(torch.stack([logits[6], logits[5]]), 0)[1].item()
        assert score == pytest.approx(expected, abs=1e-4)
    ids, mask = left_pad([[4, 5], [6]], pad_id=0)
    assert ids.tolist() == [[4, 5], [0, 6]] and mask.tolist() == [[1, 1], [0, 1]]


@pytest.mark.parametrize("batch_size", [0, -3, 1.5, None])
def test_scoring_refuses_batch_sizes_below_one(batch_size):
    model = make_tiny_llama()
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {batch_size!r}"):
        score_yes_probability(model, [[1, 2, 3]], AnswerTokens(yes=5, no=6), pad_id=0, batch_size=batch_size,
                              progress=False)


def test_metrics():
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert logloss([1, 0], [0.9, 0.2]) == pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2)
    assert rel_impr(0.8462, 0.8379) == pytest.approx(0.8462 / 0.8379 - 1)
    assert ctr_metrics(labels, [0.2, 0.2, 0.7, 0.9])["positive_rate"] == 0.5
    with pytest.raises(ValueError, match="both"):
        auc([1, 1], [0.2, 0.3])


def test_report_writes_predictions_markdown_and_plots(tmp_path):
    rows = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "item_id": ["i1", "i2", "i3"], "timestamp": [10, 20, 30],
                         "label": [0, 1, 1]})
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "Old model.csv").write_text("stale")
    write_predictions(tmp_path / "predictions", rows, {"SIM": [0.2, 0.6, 0.7], "RecLoRA": [0.1, 0.8, 0.9]})
    # A file the report did not write is never removed (the run's own earlier CSVs are, see test_run_folder.py).
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["Old model.csv", "RecLoRA.csv", "SIM.csv"]
    with (tmp_path / "predictions" / "RecLoRA.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["user_id"] for r in table] == ["u1", "u2", "u3"] and table[1]["score"] == "0.800000"
    models = {"SIM": {"kind": "crm", "auc": 1.0, "logloss": 0.4, "n": 3, "rel_impr": 0.0},
              "RecLoRA": {"kind": "llm", "auc": 1.0, "logloss": 0.2, "n": 3, "rel_impr": None}}
    text = markdown(models)
    assert "| RecLoRA | llm | 1.0000 | 0.2000 | - | - | - | 3 |" in text
    assert "| SIM | crm | 1.0000 | 0.4000 | +0.00% | - | - | 3 |" in text
    # With intervals and the reference's paired comparisons, as a run writes them.
    labels = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 0])
    scores = {"RecLoRA": np.array([0.1, 0.8, 0.9, 0.3, 0.7, 0.2, 0.6, 0.9, 0.4, 0.1]),
              "SIM": np.array([0.2, 0.6, 0.7, 0.5, 0.4, 0.3, 0.6, 0.8, 0.2, 0.6])}
    models = {name: {"kind": kind, "auc": auc(labels, scores[name]), "logloss": logloss(labels, scores[name]),
                     "n": 10, "rel_impr": None} for name, kind in (("SIM", "crm"), ("RecLoRA", "llm"))}
    add_statistics(models, labels, scores, seed=0)
    text = markdown(models)
    interval, paired = models["SIM"]["auc_ci"], models["SIM"]["vs_reference"]["auc"]
    assert interval["low"] < models["SIM"]["auc"] < interval["high"] and paired["baseline"] == "SIM"
    assert paired["difference"] == pytest.approx(models["RecLoRA"]["auc"] - models["SIM"]["auc"])
    assert f"| SIM | crm | {interval['estimate']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}] |" in text
    assert f"{paired['difference']:+.4f} [{paired['low']:+.4f}, {paired['high']:+.4f}]" in text
    assert "no significant difference at the 5% level" in text and "DeLong" in text
    with pytest.raises(ValueError, match="Broken produced non-finite scores"):
        checked_scores("Broken", [0.1, float("nan"), 0.3])
    with pytest.raises(ValueError, match="2 scores of SIM for 3 samples"):
        write_predictions(tmp_path / "predictions", rows, {"SIM": [0.2, 0.6]})
    assert plot_model_comparison(models, tmp_path / "plots" / "models.png").stat().st_size > 1000
    alpha = np.random.default_rng(0).dirichlet(np.ones(4), size=20)
    assert plot_gate_usage(alpha, tmp_path / "plots" / "gate.png").stat().st_size > 1000


def test_sample_efficiency_plot_marks_the_sizes_run_and_the_crm_band(tmp_path, monkeypatch):
    seen = {}
    save = plots._save

    def keep_axes(fig, path):
        seen["ax"] = fig.axes[0]
        seen["ticks"] = [tick.get_text() for tick in fig.axes[0].get_xticklabels()]
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_axes)
    curves = {"RecLoRA": [(192, 0.72, (0.03, 0.03)), (768, 0.73, (0.03, 0.03))],
              "LoRA (r=8)": [(192, 0.50), (768, 0.52)]}
    path = plot_sample_efficiency(curves, tmp_path / "curve.png", references={"SIM (CRM)": (0.729, (0.031, 0.031))})
    assert path.stat().st_size > 1000
    assert seen["ticks"] == ["192", "768"]  # the few-shot sizes of the run, not powers of two
    labels = seen["ax"].get_legend_handles_labels()[1]
    assert {"RecLoRA", "LoRA (r=8)", "SIM (CRM)", "chance"} <= set(labels)
