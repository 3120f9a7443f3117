from __future__ import annotations

import numpy as np

from regressor.training import BucketBatchSampler, warmup_cosine


def test_bucketed_batches_cover_every_index_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1000, 500)
    sampler = BucketBatchSampler(lengths, batch_size=16, seed=0, pool_batches=10)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert len(batches) == len(sampler)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.25 * np.ptp(lengths)  # batches are near-uniform in length


def test_bucketed_order_changes_between_epochs_but_repeats_with_seed():
    lengths = np.arange(100)
    a = BucketBatchSampler(lengths, 8, seed=1)
    b = BucketBatchSampler(lengths, 8, seed=1)
    first, second = list(a), list(a)
    assert first != second
    assert first == list(b)


def test_warmup_then_cosine_to_floor():
    schedule = warmup_cosine(warmup=10, total=110, floor=0.1)
    assert schedule(0) == 0.1
    assert schedule(9) == 1.0
    assert abs(schedule(60) - 0.55) < 1e-9
    assert abs(schedule(110) - 0.1) < 1e-9
    assert abs(schedule(500) - 0.1) < 1e-9


def test_bucketed_batches_split_across_ranks_without_overlap():
    lengths = np.arange(100)
    seen = []
    for rank in (0, 1):
        sampler = BucketBatchSampler(lengths, batch_size=8, seed=3, rank_and_world=(rank, 2))
        batches = list(sampler)
        assert len(batches) == len(sampler) == 6  # 13 batches -> 6 per rank, equal step counts
        seen.append({i for b in batches for i in b})
    assert not seen[0] & seen[1]


def test_bucketed_sampler_resumes_mid_epoch_with_the_unseen_batches():
    lengths = np.random.default_rng(2).integers(5, 500, 200)
    unbroken = BucketBatchSampler(lengths, 8, seed=4)
    list(unbroken)  # epoch 0
    epoch1 = list(unbroken)
    killed = BucketBatchSampler(lengths, 8, seed=4)
    list(killed)
    batches = iter(killed)
    for _ in range(7):  # 7 batches of epoch 1 trained, then the kill
        next(batches)
        killed.consumed += 1
    resumed = BucketBatchSampler(lengths, 8, seed=4)
    resumed.load_state_dict(killed.state_dict())
    assert killed.state_dict() == {"epoch": 1, "consumed": 7}
    assert list(resumed) == epoch1[7:]
    assert list(resumed) == list(unbroken)  # and the epochs after it match too


def test_a_target_beyond_the_codec_range_is_refused_not_learned_clamped() -> None:
    """With `exponent_max: 3` a runtime of 12345 was learned as 9999: a wrong label, silently."""
    import pytest

    from regressor.config import CodecConfig, load_model_config
    from regressor.errors import UserError
    from regressor.predictor import Predictor
    from regressor.training import encode_examples
    from regressor.vocab import InputTokenizer

    texts = [f"<task>\ncell-{i}\n<config>\nn={i}" for i in range(8)]
    predictor = Predictor.create(
        load_model_config("tiny"),
        CodecConfig(exponent_min=-3, exponent_max=3),
        InputTokenizer.train(texts, 300),
    )
    fine = encode_examples(predictor, texts[:2], np.array([0.5, 9990.0]))
    assert fine.target_ids.shape[0] == 2
    with pytest.raises(UserError, match=r"1 of 2 targets .*e\.g\. 1\.234e\+04.*exponent_max 3"):
        encode_examples(predictor, texts[:2], np.array([0.5, 12345.0]))
