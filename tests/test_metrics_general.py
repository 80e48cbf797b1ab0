import json

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, stereoset_sentences
from fairstamp.data.general import (
    ChoiceItem,
    KnownFact,
    load_known_facts,
    load_multiple_choice,
    load_wikitext2_test,
)
from fairstamp.errors import DataError, FairstampError
from fairstamp.metrics.general import (
    known_facts,
    multiple_choice_accuracy,
    perplexity,
    perplexity_windows,
)
from fairstamp.scoring import Scorer

TEXT = " ".join(stereoset_sentences(12))
DOWNSTREAM = SHARED_DATA / "downstream" / "llm_foundry"


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on busy cores many small passes crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def logprobs_longhand(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of one unpadded forward pass: row t is the distribution of token t+1."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1)


def perplexity_longhand(model, full: list[int], window: int, stride: int) -> tuple[float, int]:
    """The Hugging Face strided recipe over a BOS-prefixed token list: (perplexity, n scored)."""
    nll, count, prev_end = 0.0, 0, 1
    for begin in range(0, len(full), stride):
        end = min(begin + window, len(full))
        chunk = full[begin:end]
        lp = logprobs_longhand(model, chunk)
        for pos in range(prev_end, end):  # absolute positions scored by this window
            t = pos - begin
            nll -= lp[t - 1, chunk[t]].item()
            count += 1
        prev_end = end
        if end == len(full):
            break
    return float(np.exp(nll / count)), count


class Spy:
    """Counts the scorer's batched calls and what they scored."""

    def __init__(self, scorer: Scorer, method: str) -> None:
        self.calls: list[tuple] = []
        original = getattr(scorer, method)

        def wrapped(*args, **kwargs):
            self.calls.append(args)
            return original(*args, **kwargs)

        setattr(scorer, method, wrapped)


# -- perplexity --------------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "stride", "max_tokens"), [(48, 16, None), (64, 63, 150),
                                                              (32, 3, 60), (100, 50, 101)])
def test_perplexity_equals_the_longhand_strided_recipe(tiny_models, tiny_tokenizer, window,
                                                       stride, max_tokens, one_thread):
    model = tiny_models["llama"]
    scorer = Scorer(model, tiny_tokenizer, max_batch_tokens=300)
    spy = Spy(scorer, "token_logprobs")
    result = perplexity(scorer, TEXT, window=window, stride=stride, max_tokens=max_tokens,
                        n_resamples=50)
    ids = tiny_tokenizer(TEXT, add_special_tokens=False).input_ids[:max_tokens]
    expected, count = perplexity_longhand(model, [tiny_tokenizer.bos_token_id, *ids], window,
                                          stride)
    assert count == len(ids)
    assert result.value == pytest.approx(expected, rel=1e-4)
    assert result.ci_low <= result.value <= result.ci_high
    # One batched call; every window fits; every text token is scored once.
    assert len(spy.calls) == 1
    sequences, starts = spy.calls[0]
    assert result.n == len(sequences)
    assert max(len(s) for s in sequences) <= window
    assert sum(len(s) - st for s, st in zip(sequences, starts)) == len(ids)


def test_perplexity_of_one_window_is_exp_of_minus_mean_logprob(tiny_models, tiny_tokenizer,
                                                                one_thread):
    scorer = Scorer(tiny_models["gpt2"], tiny_tokenizer)
    text = " ".join(stereoset_sentences(6))
    n = len(tiny_tokenizer(text, add_special_tokens=False).input_ids)
    assert n + 1 < 1024
    whole = scorer.score([text])
    result = perplexity(scorer, text, window=n + 5, stride=4, n_resamples=20)
    assert result.n == 1
    assert result.value == pytest.approx(float(np.exp(-whole.mean[0])), rel=1e-6)
    assert whole.n_tokens[0] == n


@pytest.mark.parametrize("n", [2, 3, 10, 47, 48, 49, 200])
@pytest.mark.parametrize(("window", "stride"), [(2, 1), (8, 3), (48, 16), (48, 47)])
def test_windows_score_every_position_once_within_the_window(n, window, stride):
    spans = perplexity_windows(n, window, stride)
    scored = [p for _, a, b in spans for p in range(a, b)]
    assert scored == list(range(1, n))
    for begin, start, end in spans:
        assert 0 <= begin < start < end <= n
        assert end - begin <= window
        if begin > 0:  # later windows carry a full context
            assert end - begin == window or end == n


def test_perplexity_refuses_bad_windows(tiny_models, tiny_tokenizer):
    scorer = Scorer(tiny_models["gpt2"], tiny_tokenizer)
    with pytest.raises(ValueError, match="stride"):
        perplexity(scorer, TEXT, window=32, stride=32)
    with pytest.raises(FairstampError, match=r"exceeds the model's 1024 positions"):
        perplexity(scorer, TEXT, window=1025, stride=64)
    with pytest.raises(ValueError, match="max_tokens"):
        perplexity(scorer, TEXT, window=32, stride=16, max_tokens=0)


# -- multiple choice ---------------------------------------------------------------------------


def continuation_longhand(model, tokenizer, prefix: str, continuation: str) -> tuple[float, int]:
    """Summed log-prob of the continuation's tokens (prefix+continuation tokenized together)."""
    ids = tokenizer(prefix + continuation, add_special_tokens=False).input_ids
    cut = len(tokenizer(prefix, add_special_tokens=False).input_ids)
    full = [tokenizer.bos_token_id, *ids]
    lp = logprobs_longhand(model, full)
    return sum(lp[t - 1, full[t]].item() for t in range(cut + 1, len(full))), len(full) - cut - 1


def test_multiple_choice_matches_longhand_choice_scores(tiny_models, tiny_tokenizer, one_thread):
    model = tiny_models["llama"]
    scorer = Scorer(model, tiny_tokenizer)
    raw = [
        (["The doctor said"] * 3, [" she was tired.", " he was tired.", " it was tired."]),
        (["The nurse was a man", "The nurse was a woman"], [" who cared."] * 2),
        (["Question: Who cooks?\nAnswer:"] * 2, [" the chef", " the lawyer"]),
        # Short vs long choice: the sum favours the short one, the per-character mean the long.
        (["The answer is"] * 2, [" a", " the the the the the the the the the the"]),
    ]
    sums, norms = [], []
    for prefixes, conts in raw:
        scored = [continuation_longhand(model, tiny_tokenizer, p, c)
                  for p, c in zip(prefixes, conts)]
        sums.append(int(np.argmax([s for s, _ in scored])))
        norms.append(int(np.argmax([s / (len(c) - 1) for (s, _), c in zip(scored, conts)])))
    assert (sums[3], norms[3]) == (0, 1)
    # Gold: right for items 0-2 by the summed score, wrong for item 3.
    golds = [sums[0], sums[1], sums[2], 1]
    items = [ChoiceItem(f"t/{i}", tuple(p), tuple(c), g)
             for i, ((p, c), g) in enumerate(zip(raw, golds))]
    spy = Spy(scorer, "continuation_logprobs")
    result = multiple_choice_accuracy(scorer, items, n_resamples=50)
    assert len(spy.calls) == 1 and len(spy.calls[0][0]) == 9
    assert result["predictions"] == sums
    assert result["acc"].value == pytest.approx(75.0)
    expected_norm = 100.0 * np.mean([n == g for n, g in zip(norms, golds)])
    assert result["acc_norm"].value == pytest.approx(expected_norm)
    crafted = multiple_choice_accuracy(scorer, items[3:], n_resamples=10)
    assert (crafted["acc"].value, crafted["acc_norm"].value) == (0.0, 100.0)
    assert result["n"] == 4 and result["acc"].n == 4


# -- known_1000 --------------------------------------------------------------------------------


def test_known_facts_top1_matches_longhand_argmax_and_kept_uses_the_reference(
        tiny_models, tiny_tokenizer, one_thread):
    model = tiny_models["llama"]
    scorer = Scorer(model, tiny_tokenizer)
    prompts = [" ".join(s.split()[:4]) for s in stereoset_sentences(12)]
    the = tiny_tokenizer.convert_tokens_to_ids("Ġthe")
    facts, expected_top1 = [], {}
    for i, prompt in enumerate(prompts):
        # Right iff the top-1 is " the": only the attribute's first token counts.
        attribute = "the" if i % 2 else "the chess player"
        facts.append(KnownFact(known_id=100 + i, subject=prompt.split()[0], attribute=attribute,
                               prompt=prompt, relation_id="P0"))
        lp = logprobs_longhand(model, [tiny_tokenizer.bos_token_id,
                                       *tiny_tokenizer(prompt, add_special_tokens=False).input_ids])
        expected_top1[str(100 + i)] = int(lp[-1].argmax())
    hits = [t == the for t in expected_top1.values()]
    assert 0 < sum(hits) < len(hits)  # the tiny model says " the" after some prompts only
    spy = Spy(scorer, "continuation_logprobs")
    result = known_facts(scorer, facts, n_resamples=50)
    assert len(spy.calls) == 1
    assert result["top1"] == expected_top1
    assert result["accuracy"].value == pytest.approx(100.0 * np.mean(hits))
    assert "kept" not in result
    reference = dict(expected_top1)
    reference["100"] = expected_top1["100"] + 1
    again = known_facts(scorer, facts, reference=reference, n_resamples=50)
    assert again["kept"].value == pytest.approx(100.0 * (len(facts) - 1) / len(facts))
    decode = tiny_tokenizer.decode
    assert again["changed"] == [{
        "known_id": 100, "prompt": prompts[0], "answer": "the chess player",
        "before": decode([reference["100"]]), "after": decode([expected_top1["100"]]),
        "right_before": reference["100"] == the, "right_after": expected_top1["100"] == the}]
    assert "changed" not in result
    with pytest.raises(FairstampError, match="known_id 101"):
        known_facts(scorer, facts, reference={"100": 3})


# -- loaders: malformed input ------------------------------------------------------------------

GOOD_FACT = {"known_id": 0, "subject": "Paris", "attribute": "France",
             "template": "{} is the capital of", "prediction": " France.",
             "prompt": "Paris is the capital of", "relation_id": "P1376"}


def write_array(path, records):
    path.write_text(json.dumps(records, indent=2))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attribute": None}, r"k\.json:11: field 'attribute' is missing"),
        ({"prompt": "  "}, r"k\.json:11: field 'prompt' is empty"),
        ({"known_id": "1"}, r"k\.json:11: field 'known_id' is a str, not an integer"),
        ({"known_id": 0}, r"k\.json:11: known_id 0 repeats line 2"),
        ({"subject": 3}, r"k\.json:11: field 'subject' is an int, not a string"),
    ],
)
def test_known_facts_errors_name_the_line_of_the_record(tmp_path, change, message):
    second = {**GOOD_FACT, "known_id": 1, **change}
    second = {k: v for k, v in second.items() if v is not None}
    f = tmp_path / "k.json"
    write_array(f, [GOOD_FACT, second])
    with pytest.raises(DataError, match=message):
        load_known_facts(f)


def test_known_facts_reads_json_lines_and_refuses_broken_files(tmp_path):
    f = tmp_path / "k.jsonl"
    f.write_text(json.dumps(GOOD_FACT) + "\n\n" + json.dumps({**GOOD_FACT, "known_id": 5}) + "\n")
    assert [k.known_id for k in load_known_facts(f)] == [0, 5]
    f.write_text(json.dumps(GOOD_FACT) + "\n" + json.dumps({**GOOD_FACT, "known_id": 5,
                                                            "relation_id": ""}) + "\n")
    with pytest.raises(DataError, match=r"k\.jsonl:2: field 'relation_id' is empty"):
        load_known_facts(f)
    g = tmp_path / "k.json"
    g.write_text('[\n  {"known_id": 0,\n   "subject": }\n]')
    with pytest.raises(DataError, match=r"k\.json:3: invalid JSON"):
        load_known_facts(g)
    g.write_text("[\n  1,\n  2\n]")
    with pytest.raises(DataError, match=r"k\.json:2: expected a JSON object, got int"):
        load_known_facts(g)
    g.write_text("[]")
    with pytest.raises(DataError, match=r"k\.json: no facts"):
        load_known_facts(g)
    with pytest.raises(DataError, match="no such file"):
        load_known_facts(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("task", "line", "message"),
    [
        ("copa", '{"query": "q", "choices": ["a", "b"], "gold": 2}',
         r"m\.jsonl:2: gold 2 is out of range for 2 choices"),
        ("copa", '{"query": "q", "choices": ["a"], "gold": 0}',
         r"m\.jsonl:2: field 'choices' has 1 option\(s\); at least 2 are needed"),
        ("arc_easy", '{"choices": ["a", "b"], "gold": 0}',
         r"m\.jsonl:2: field 'query' is missing"),
        ("boolq", '{"query": "q", "choices": ["no", "yes"]}',
         r"m\.jsonl:2: field 'gold' is missing"),
        ("boolq", '{"query": "q", "choices": ["no", "yes"], "gold": true}',
         r"m\.jsonl:2: field 'gold' is a bool, not an integer"),
        ("piqa", '{"query": "q", "choices": ["a", ""], "gold": 0}',
         r"m\.jsonl:2: choices\[1\] is empty"),
        ("winogrande", '{"context_options": ["a", "b"], "gold": 0}',
         r"m\.jsonl:2: field 'continuation' is missing"),
        ("winogrande", '{"context_options": "ab", "continuation": "c", "gold": 0}',
         r"m\.jsonl:2: field 'context_options' is a str, not a list"),
    ],
)
def test_multiple_choice_errors_name_file_and_line(tmp_path, task, line, message):
    first = ('{"context_options": ["a", "b"], "continuation": "c", "gold": 0}'
             if task == "winogrande" else '{"query": "q", "choices": ["a", "b"], "gold": 0}')
    f = tmp_path / "m.jsonl"
    f.write_text(first + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        load_multiple_choice(f, task)


def test_multiple_choice_refuses_empty_files_and_unknown_tasks(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text("\n")
    with pytest.raises(DataError, match=r"m\.jsonl: no records"):
        load_multiple_choice(f, "copa")
    with pytest.raises(DataError, match="unknown multiple-choice task 'hellaswag'"):
        load_multiple_choice(f, "hellaswag")


def test_wikitext_loader_needs_a_path_and_normalises_line_ends(tmp_path):
    with pytest.raises(DataError, match="no WikiText-2 test file given"):
        load_wikitext2_test()
    with pytest.raises(DataError, match="no such file"):
        load_wikitext2_test(tmp_path / "wiki.test.raw")
    with pytest.raises(DataError, match=r"no wiki\.test\.raw in this folder"):
        load_wikitext2_test(tmp_path)
    (tmp_path / "wiki.test.raw").write_bytes(b" = A = \r\n Text . \r\n")
    assert load_wikitext2_test(tmp_path) == " = A = \n Text . \n"
    (tmp_path / "wiki.test.raw").write_bytes(b" \r\n")
    with pytest.raises(DataError, match="no text"):
        load_wikitext2_test(tmp_path / "wiki.test.raw")


# -- loaders: the real shared files ------------------------------------------------------------


@pytest.mark.parametrize(("task", "count", "n_choices"),
                         [("boolq", 3270, 2), ("copa", 100, 2), ("winogrande", 1267, 2),
                          ("piqa", 1838, 2), ("arc_easy", 2376, 4)])
def test_real_multiple_choice_files(task, count, n_choices):
    items = load_multiple_choice(DOWNSTREAM / f"{task}.jsonl", task)
    assert len(items) == count
    assert {item.n_choices for item in items} == {n_choices}
    assert all(c.startswith(" ") and not c.startswith("  ") for i in items for c in i.continuations)
    assert all(not p.endswith((" ", "\n")) for i in items for p in i.prefixes)
    assert [i.id for i in load_multiple_choice(DOWNSTREAM / f"{task}.jsonl", task, limit=3)] == [
        f"{task}/1", f"{task}/2", f"{task}/3"]


def test_real_files_are_joined_as_the_harness_does():
    copa = load_multiple_choice(DOWNSTREAM / "copa.jsonl", "copa", limit=1)[0]
    assert copa.prefixes == ("The man turned on the faucet, therefore",) * 2
    assert copa.continuations == (" the toilet filled with water.", " water flowed from the spout.")
    assert copa.gold == 1
    wino = load_multiple_choice(DOWNSTREAM / "winogrande.jsonl", "winogrande", limit=1)[0]
    assert wino.prefixes[1] == "Sarah was a much better surgeon than Maria so Maria"
    assert wino.continuations == (" always got the easier cases.",) * 2
    piqa = load_multiple_choice(DOWNSTREAM / "piqa.jsonl", "piqa", limit=1)[0]
    assert piqa.prefixes[0] == ("Question: How do I ready a guinea pig cage for it's new "
                                "occupants?\nAnswer:")
    boolq = load_multiple_choice(DOWNSTREAM / "boolq.jsonl", "boolq", limit=1)[0]
    assert boolq.prefixes[0].startswith("Passage: ")
    assert boolq.prefixes[0].endswith("?\nAnswer:")
    assert boolq.continuations == (" no", " yes")


def test_real_known_facts_and_wikitext():
    facts = load_known_facts(SHARED_DATA / "counterfact" / "known_1000.json")
    assert len(facts) == 1209
    assert facts[0] == KnownFact(known_id=0, subject="Vinson Massif", attribute="Antarctica",
                                 prompt="Vinson Massif is located in the continent of",
                                 relation_id="P30", template="{} is located in the continent",
                                 prediction=" Antarctica. It is the largest of the three")
    assert len({f.relation_id for f in facts}) == 33
    text = load_wikitext2_test(SHARED_DATA / "wikitext2")
    assert "\r" not in text
    assert text.count("\n") == 2891
    assert text.startswith(" = Robert Boulter = \n")


# -- the real model ----------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_general_ability_is_far_from_a_random_model(smollm2):
    scorer = Scorer.from_loaded(smollm2, progress=False)
    text = load_wikitext2_test(SHARED_DATA / "wikitext2")
    ppl = perplexity(scorer, text, max_tokens=2048, n_resamples=100)
    assert 12 < ppl.value < 30  # measured 18.75; a random model gives ~49,000
    items = load_multiple_choice(DOWNSTREAM / "piqa.jsonl", "piqa", limit=100)
    # measured 70.0 [62, 79]; chance is 50
    assert multiple_choice_accuracy(scorer, items, n_resamples=10)["acc_norm"].value >= 58
