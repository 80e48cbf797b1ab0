import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ARCHS, stereoset_sentences
from fairstamp.errors import FairstampError
from fairstamp.scoring import Scorer

SENTENCES = stereoset_sentences(60)


def reference_score(model, ids: list[int]) -> np.ndarray:
    """Per-token log-probs of ids[1:] from one unpadded forward pass, written out longhand."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return np.array([logprobs[t - 1, ids[t]].item() for t in range(1, len(ids))])


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_scores_equal_one_at_a_time(arch, tiny_models, tiny_tokenizer):
    model = tiny_models[arch]
    batched = Scorer(model, tiny_tokenizer, max_batch_tokens=400).score(SENTENCES)
    single = Scorer(model, tiny_tokenizer, max_batch_size=1)
    for i, sentence in enumerate(SENTENCES[:25]):
        ref = reference_score(model, single.encode(sentence))
        one = single.score([sentence])
        assert one.total[0] == pytest.approx(ref.sum(), abs=1e-4)
        assert batched.total[i] == pytest.approx(ref.sum(), abs=1e-4)
        assert batched.mean[i] == pytest.approx(ref.mean(), abs=1e-4)
        assert batched.n_tokens[i] == len(ref)


def test_bos_is_prepended_and_every_sentence_token_is_scored(tiny_models, tiny_tokenizer):
    scorer = Scorer(tiny_models["llama"], tiny_tokenizer)
    ids = scorer.encode("The chess player was asian.")
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ids[1:] == tiny_tokenizer("The chess player was asian.",
                                     add_special_tokens=False).input_ids
    scores = scorer.score(["The chess player was asian."])
    assert scores.n_tokens[0] == len(ids) - 1
    assert scorer.describe()["prefix"] == "bos"


def test_without_bos_eos_starts_the_text_and_without_either_first_token_is_unscored(
        tiny_models, tiny_tokenizer):
    from transformers import PreTrainedTokenizerFast

    model = tiny_models["qwen2"]
    no_bos = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer,
                                     eos_token="<eos>", pad_token="<pad>")
    scorer = Scorer(model, no_bos)
    assert scorer.describe()["prefix"] == "eos"
    assert scorer.encode("A man.")[0] == no_bos.eos_token_id

    bare = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer)
    scorer = Scorer(model, bare)
    ids = bare("The man was tall.", add_special_tokens=False).input_ids
    scores = scorer.score(["The man was tall."])
    assert scores.n_tokens[0] == len(ids) - 1
    assert scores.total[0] == pytest.approx(reference_score(model, ids).sum(), abs=1e-4)


def test_padding_side_of_the_tokenizer_does_not_matter(tiny_models, tiny_tokenizer):
    model = tiny_models["gpt2"]
    tiny_tokenizer.padding_side = "left"
    left = Scorer(model, tiny_tokenizer).score(SENTENCES).total
    tiny_tokenizer.padding_side = "right"
    right = Scorer(model, tiny_tokenizer).score(SENTENCES).total
    np.testing.assert_array_equal(left, right)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_scores_do_not_depend_on_order_or_batch_neighbours(data, tiny_models, tiny_tokenizer):
    """Permuting the input permutes the output; the batch budget (how sentences are padded
    together) changes nothing beyond float noise."""
    arch = data.draw(st.sampled_from(["gpt2", "llama", "gpt_neox", "opt"]))
    model = tiny_models[arch]
    idx = data.draw(st.lists(st.integers(0, len(SENTENCES) - 1), min_size=1, max_size=12))
    sentences = [SENTENCES[i] for i in idx]
    budget = data.draw(st.integers(32, 600))
    base = Scorer(model, tiny_tokenizer, max_batch_tokens=10_000).score(sentences)
    perm = data.draw(st.permutations(range(len(sentences))))
    other = Scorer(model, tiny_tokenizer, max_batch_tokens=budget).score(
        [sentences[i] for i in perm])
    np.testing.assert_allclose(other.total, base.total[list(perm)], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(other.n_tokens, base.n_tokens[list(perm)])


def test_duplicates_are_scored_once_and_returned_everywhere(tiny_models, tiny_tokenizer):
    scorer = Scorer(tiny_models["llama"], tiny_tokenizer)
    calls = count_forward_rows(scorer)
    out = scorer.score(["A b.", "C d.", "A b."])
    assert sum(calls) == 2
    assert out.total[0] == out.total[2]


def count_forward_rows(scorer: Scorer) -> list[int]:
    calls: list[int] = []
    original = scorer._forward_batch
    scorer._forward_batch = lambda inputs, *rest: calls.append(len(inputs)) or original(
        inputs, *rest)
    return calls


def test_sequences_sharing_a_forward_input_share_one_pass(tiny_models, tiny_tokenizer):
    """One-token continuations of one prefix (BoolQ's yes/no) and sequences that are prefixes of
    others need no pass of their own, and score as if run alone."""
    model = tiny_models["llama"]
    scorer = Scorer(model, tiny_tokenizer)
    context = scorer.encode("Is the sky blue? Answer:")
    longer = scorer.encode("Is the sky blue? Answer: yes it is.")
    sequences = [[*context, 11], [*context, 12], [*context, 13, 14], context[:4], longer,
                 longer[:6], scorer.encode("Something else.")]
    starts = [len(context), len(context), len(context), 1, 3, 2, 1]
    calls = count_forward_rows(scorer)
    spans = scorer.token_logprobs(sequences, starts)
    # [ctx, 11] and [ctx, 12] share ctx, which [ctx, 13, 14]'s input extends; context[:4] and
    # longer[:6] are prefixes of longer.
    assert sum(calls) == 3
    for seq, start, span in zip(sequences, starts, spans):
        ref = reference_score(model, seq)[start - 1:]
        assert list(span.token_ids) == list(seq[start:])
        np.testing.assert_allclose(span.logprobs, ref, atol=1e-4)


def test_continuation_logprobs_match_the_difference_of_sentence_scores(tiny_models,
                                                                        tiny_tokenizer):
    scorer = Scorer(tiny_models["llama"], tiny_tokenizer)
    prefixes = ["The chess player was", "My mother is a", "The Muslim man went to the "]
    conts = [" asian.", " nurse.", "mosque."]
    spans = scorer.continuation_logprobs(prefixes, conts)
    for prefix, cont, span in zip(prefixes, conts, spans):
        whole = scorer.encode(prefix.rstrip(" ") + (" " if prefix.endswith(" ") else "") + cont)
        head = scorer.encode(prefix.rstrip(" "))
        assert list(span.token_ids) == whole[len(head):]
        ref = reference_score(tiny_models["llama"], whole)
        assert span.total == pytest.approx(ref[len(head) - 1:].sum(), abs=1e-4)
        assert span.greedy.dtype == bool


def test_greedy_flags_are_argmax(tiny_models, tiny_tokenizer):
    model = tiny_models["llama"]
    scorer = Scorer(model, tiny_tokenizer)
    ids = scorer.encode("The chess player")
    with torch.no_grad():
        nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
    cont = tiny_tokenizer.decode([nxt])
    span = scorer.token_logprobs([[*ids, nxt]], [len(ids)])[0]
    assert span.all_greedy, cont
    span = scorer.token_logprobs([[*ids, (nxt + 1) % 300]], [len(ids)])[0]
    assert not span.all_greedy


def test_empty_and_too_long_inputs_are_refused(tiny_models, tiny_tokenizer):
    scorer = Scorer(tiny_models["llama"], tiny_tokenizer)
    with pytest.raises(FairstampError, match="no tokens"):
        scorer.score([""])
    with pytest.raises(FairstampError, match="exceeds"):
        scorer.score(["word " * 1200])
    assert len(scorer.score([])) == 0


@pytest.mark.slow
def test_smollm2_batched_scores_equal_one_at_a_time(smollm2):
    scorer = Scorer.from_loaded(smollm2)
    sentences = stereoset_sentences()[::97][:40]
    batched = scorer.score(sentences)
    for i, sentence in enumerate(sentences):
        assert scorer.score([sentence]).total[0] == pytest.approx(batched.total[i], abs=1e-4)
        ref = reference_score(smollm2.model, scorer.encode(sentence))
        assert batched.total[i] == pytest.approx(ref.sum(), abs=1e-4)


def test_long_prefixes_lose_their_oldest_tokens(tiny_models, tiny_tokenizer):
    """Like lm-evaluation-harness: a prefix that does not fit keeps the start token and its most
    recent tokens; the continuation's log-probs equal those of the truncated text."""
    model = tiny_models["llama"]
    scorer = Scorer(model, tiny_tokenizer)
    prefix = ("The chess player was asian and " * 200).rstrip()
    span = scorer.continuation_logprobs([prefix], [" he won."])[0]
    whole = scorer.encode(prefix + " he won.")
    head = scorer.encode(prefix)
    assert len(whole) > 1024
    kept = [whole[0], *whole[len(whole) - 1023:]]
    ref = reference_score(model, kept)
    n = len(whole) - len(head)
    assert list(span.token_ids) == whole[-n:]
    assert span.total == pytest.approx(ref[-n:].sum(), abs=1e-4)
    with pytest.raises(FairstampError, match="alone exceeds"):
        scorer.continuation_logprobs(["A"], [" word" * 1200])


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_at_scored_positions_only_and_replayed_lower_layers_give_the_same_scores(
        arch, tiny_tokenizer):
    """With the ArchSpec the unembedding runs only where a token is scored; a LowerLayerCache
    recorded on the original model and replayed after a stamp is attached at its layer gives the
    stamped model's scores, and a pass it never recorded runs in full."""
    from fairstamp.scoring.scorer import LowerLayerCache
    from fairstamp.stamp import new_stamp
    from test_stamp import loaded_tiny, randomise

    loaded = loaded_tiny(arch, tiny_tokenizer)
    model = loaded.model
    prefixes = ["Is the sky blue? Answer:", "The chess player was", "My mother is a"]
    conts = [" yes", " no", " hispanic.", " nurse at the hospital."]
    pairs = [(prefixes[0], conts[0]), (prefixes[0], conts[1]), (prefixes[1], conts[2]),
             (prefixes[2], conts[3])]

    def spans(scorer):
        out = scorer.continuation_logprobs([p for p, _ in pairs], [c for _, c in pairs])
        return np.concatenate([s.logprobs for s in out]), scorer.score(SENTENCES[:12]).total

    plain = spans(Scorer(model, tiny_tokenizer))
    selected = spans(Scorer(model, tiny_tokenizer, arch=loaded.arch))
    for a, b in zip(plain, selected):
        np.testing.assert_allclose(a, b, atol=1e-5)

    cache = LowerLayerCache(model, loaded.arch, 1)
    recorded = spans(Scorer(model, tiny_tokenizer, arch=loaded.arch, lower_cache=cache))
    for a, b in zip(plain, recorded):
        np.testing.assert_allclose(a, b, atol=1e-5)
    stamp = new_stamp(loaded, 1, width=8)
    randomise(stamp.module)
    stamp.attach_to(loaded)
    stamped = spans(Scorer(model, tiny_tokenizer))
    cache.replay()
    replayed = spans(Scorer(model, tiny_tokenizer, arch=loaded.arch, lower_cache=cache))
    assert cache.replayed > 0 and cache.recomputed == 0
    for a, b, c in zip(stamped, replayed, plain):
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert np.abs(a - c).max() > 1e-4  # the stamp changed the scores
    other = Scorer(model, tiny_tokenizer, arch=loaded.arch, lower_cache=cache).score(
        ["A sentence never recorded."])
    assert cache.recomputed == 1
    np.testing.assert_allclose(other.total, Scorer(model, tiny_tokenizer).score(
        ["A sentence never recorded."]).total, atol=1e-5)


def test_length_batches_group_similar_lengths_within_the_budget():
    from fairstamp.scoring.scorer import length_batches

    lengths = [5, 30, 7, 30, 6, 100, 8]
    batches = length_batches(lengths, 64, max_size=2)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [5]  # longer than the budget: alone
    assert batches[1] == [1, 3]  # longest first, ties in input order
    for b in batches[1:]:
        assert len(b) <= 2 and len(b) * max(lengths[i] for i in b) <= 64
    assert length_batches(lengths, 10**6) == [[5, 1, 3, 6, 2, 4, 0]]


def test_pack_rows_put_inputs_that_begin_alike_in_one_row():
    from fairstamp.scoring.scorer import pack_rows, tree_batch

    inputs = [(1, 2, 3, 4, 5, 7, 8), (5, 5, 5, 5), (1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 9),
              (1, 2, 9, 9, 9, 9)]
    rows = pack_rows(inputs, max_tokens=100)
    # The first two share five tokens; the third would cut the shared part to four and save
    # only three: a row of its own, as the rest.
    assert [row.members for row in rows] == [(2, 0), (3,), (4,), (1,)]
    row = rows[0]
    assert row.ids == (1, 2, 3, 4, 5, 6, 7, 8) and row.shared == 5 and row.cuts == (5, 6, 8)
    assert row.index(0, torch.arange(6)).tolist() == [0, 1, 2, 3, 4, 5]
    assert row.index(1, torch.arange(7)).tolist() == [0, 1, 2, 3, 4, 6, 7]
    assert row.layout() == ([0, 1, 2, 3, 4, 5, 5, 6], [0, 0, 0, 0, 0, 1, 2, 2])
    ids, mask, positions = tree_batch(rows[:2], 0, torch.float32)
    assert ids.shape == positions.shape == (2, 8) and mask.shape == (2, 1, 8, 8)
    sees = (mask[0, 0] == 0).int().tolist()
    assert sees[7] == [1, 1, 1, 1, 1, 0, 1, 1]  # member 1's last token: prefix and its own
    assert sees[5] == [1, 1, 1, 1, 1, 1, 0, 0]  # member 0's token: prefix and itself
    assert positions[0].tolist() == [0, 1, 2, 3, 4, 5, 5, 6]
    # Limits: a row holds at most max_tokens tokens, and no more than a local-attention window;
    # it has at most max_members members.
    assert len(pack_rows(inputs, max_tokens=7)) == 5
    assert len(pack_rows(inputs, max_tokens=100, max_length=7)) == 5
    same = [(1, 2, 3, 4, 5, k) for k in range(10, 20)]
    assert [len(r.members) for r in pack_rows(same, max_tokens=100, max_members=4)] == [4, 4, 2]
    # Long inputs that share a short beginning stay apart: the row's attention would cost more
    # than the shared tokens save. A longer shared part is worth it.
    long = [(1, 2, 3, 4, 5, 6, *[k] * 600) for k in (7, 8)]
    assert len(pack_rows(long, max_tokens=4096)) == 2
    assert len(pack_rows([(*range(500), k, k) for k in (-1, -2)], max_tokens=4096)) == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_rows_score_as_one_row_per_input(arch, tiny_tokenizer):
    """Inputs packed into shared rows (StereoSet's sentences per context, answer choices after
    one question) score as when each runs alone, on every architecture, and cost fewer
    positions; inputs longer than a local-attention window are not packed."""
    from test_stamp import loaded_tiny

    loaded = loaded_tiny(arch, tiny_tokenizer)
    # Short ones too: with the tiny tokenizer (almost a token per character) only they fit the
    # 16-token local-attention window of the tiny GPT-Neo and Gemma 3.
    sentences = [*SENTENCES[:30], "The nurse was kind.", "The nurse was rude.", "The man ran.",
                 "The man sat.", "The man hid."]
    question = "Where do people keep their money? Answer:"
    choices = [" in a bank account", " under the old bed", " in a wallet", " at the bank"]

    def run(scorer):
        positions = []
        original = scorer._forward_batch
        scorer._forward_batch = lambda rows, *rest: positions.append(
            sum(len(r.ids) for r in rows)) or original(rows, *rest)
        scores = scorer.score(sentences).total
        conts = scorer.continuation_logprobs([question] * 4, choices)
        return scores, np.concatenate([c.logprobs for c in conts]), sum(positions)

    packed = run(Scorer(loaded.model, tiny_tokenizer, arch=loaded.arch))
    alone = run(Scorer(loaded.model, tiny_tokenizer, arch=loaded.arch, pack=False))
    np.testing.assert_allclose(packed[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(packed[1], alone[1], atol=1e-5)
    assert packed[2] < alone[2]
    single = Scorer(loaded.model, tiny_tokenizer, max_batch_size=1)
    for i in (0, 1, 30, 31, 32, 33, 34):
        ref = reference_score(loaded.model, single.encode(sentences[i]))
        assert packed[0][i] == pytest.approx(ref.sum(), abs=1e-4)


# -- pairs, the logits budget, the module layout -----------------------------------------------


def test_pair_gaps_equal_the_hand_written_forms_they_replace(tiny_models, tiny_tokenizer):
    """Bitwise: the training loss (torch, with gradients), the SS check (numpy), tracing's
    [n, 2] metric and the metrics' score(stereo) > score(anti)."""
    from fairstamp.scoring.pairs import (
        bias_loss,
        pair_gaps,
        pair_sums,
        stereotype_percent,
        stereotyped,
    )

    scores = Scorer(tiny_models["llama"], tiny_tokenizer).score(SENTENCES[:40]).mean
    gaps = pair_gaps(scores)
    assert np.array_equal(gaps, scores[0::2] - scores[1::2])
    assert stereotype_percent(gaps) == float(100.0 * np.mean(gaps > 0))
    assert float(bias_loss(gaps)) == float(np.mean(np.abs(gaps)))
    assert np.array_equal(stereotyped(gaps), np.array(
        [s > a for s, a in zip(scores[0::2], scores[1::2])]))
    means = torch.tensor(scores, dtype=torch.float32, requires_grad=True)
    original = torch.tensor(scores[::-1].copy(), dtype=torch.float32)
    l_e = bias_loss(pair_gaps(means))
    assert torch.equal(l_e, (means[0::2] - means[1::2]).abs().mean())
    assert torch.equal((pair_sums(means) - pair_sums(original)) / 2,
                       ((means[0::2] + means[1::2]) - (original[0::2] + original[1::2])) / 2)
    l_e.backward()
    assert means.grad is not None and means.grad.abs().sum() > 0
    grouped = torch.tensor(scores, dtype=torch.float64).reshape(-1, 2)  # tracing: [n, 2]
    assert torch.equal(pair_gaps(grouped.reshape(-1)), grouped[:, 0] - grouped[:, 1])
    # ties, infinities and the smallest differences: gap > 0 exactly when stereo > anti
    tiny = np.nextafter(0.0, 1.0)
    stereo = np.array([1.0, 1.0, -np.inf, np.inf, -np.inf, tiny, 0.0, -3.0, 2.0])
    anti = np.array([1.0, 2.0, -np.inf, np.inf, -5.0, 0.0, tiny, np.nextafter(-3.0, 0), -np.inf])
    rows = np.stack([stereo, anti], axis=1).reshape(-1)
    with np.errstate(invalid="ignore"):
        assert np.array_equal(stereotyped(pair_gaps(rows)), stereo > anti)


def test_logits_token_budget_is_the_scorers_and_tracings():
    from fairstamp.scoring.batching import LOGITS_BUDGET_BYTES, logits_token_budget
    from fairstamp.tracing.patching import TRACE_LOGITS_BUDGET_BYTES

    assert LOGITS_BUDGET_BYTES == 512 * 2**20 and TRACE_LOGITS_BUDGET_BYTES == 256 * 2**20
    assert logits_token_budget(49152) == 512 * 2**20 // (4 * 49152) == 2730
    assert logits_token_budget(262144) == 512  # gemma-3's vocabulary
    assert logits_token_budget(262144, budget_bytes=TRACE_LOGITS_BUDGET_BYTES) == 256
    assert logits_token_budget(10**9) == 64  # never below 64
    assert logits_token_budget(49152, 1000) == 1000  # an explicit budget wins
    assert logits_token_budget(0) == 512 * 2**20 // 4  # no division by zero


def test_scorer_uses_the_budget(tiny_models, tiny_tokenizer):
    from fairstamp.scoring.batching import logits_token_budget

    assert Scorer(tiny_models["llama"], tiny_tokenizer).max_batch_tokens == \
        logits_token_budget(300) == 512 * 2**20 // (4 * 300)
    assert Scorer(tiny_models["llama"], tiny_tokenizer, max_batch_tokens=77).max_batch_tokens == 77


def test_scoring_modules_import_each_other_one_way():
    """scorer -> upper -> batching, never back (no circle hidden in a function body)."""
    import ast
    import inspect

    from fairstamp.scoring import batching, pairs, scorer, upper

    def imported(module) -> set[str]:
        tree = ast.parse(inspect.getsource(module))
        return {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}

    assert "fairstamp.scoring.scorer" not in imported(upper) | imported(batching)
    assert not any(m.startswith("fairstamp") for m in imported(batching) | imported(pairs))
    assert {"fairstamp.scoring.upper", "fairstamp.scoring.batching"} <= imported(scorer)
