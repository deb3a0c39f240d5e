"""The reference split of the math training sets is reproduced exactly."""

import numpy as np
import pytest

from qsharp_exp.tasks.splits import reference_split


@pytest.mark.parametrize("n,train,val", [(7473, 6726, 747), (7500, 6750, 750)])
def test_split_sizes_match_the_published_ones(n, train, val):
    train_idx, val_idx = reference_split(n)
    assert (len(train_idx), len(val_idx)) == (train, val)
    assert not set(train_idx) & set(val_idx) and len(set(train_idx) | set(val_idx)) == n


def test_split_is_the_global_seed_47_permutation_and_leaves_numpy_state_alone():
    state = np.random.get_state()
    np.random.seed(47)
    expected_val = sorted(np.random.permutation(7473)[:747].tolist())
    np.random.set_state(state)
    before = np.random.get_state()[1].copy()
    assert reference_split(7473)[1] == expected_val
    assert (np.random.get_state()[1] == before).all()


def test_generated_splits_are_disjoint_and_a_too_small_space_is_one_clear_error():
    import pytest

    from qsharp_exp.tasks.splits import draw_distinct_splits

    splits = draw_distinct_splits({"a": 3, "b": 4}, stream=lambda s: f"0-{s}", draw=lambda rng: rng.randrange(10),
                                  key=lambda x: x, hint="widen it")
    assert len(splits["a"]) == 3 and len(splits["b"]) == 4 and not set(splits["a"]) & set(splits["b"])
    with pytest.raises(ValueError, match="could not draw 8 distinct problems for split 'b': widen it"):
        draw_distinct_splits({"a": 3, "b": 8}, stream=lambda s: s, draw=lambda rng: rng.randrange(10),
                             key=lambda x: x, hint="widen it")
