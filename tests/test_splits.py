"""Splits: the reference split of the math training sets, and which task settings shape which split."""

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


SPLIT_SETS = [("train",), ("pretrain", "test"), ("test",)]  # what the rollouts, pi_ref and evaluation stages read


def _generated_task_configs():
    from qsharp_exp.tasks.arithmetic import ArithmeticConfig
    from qsharp_exp.tasks.star_graph import StarGraphConfig

    # Few labels (about 700 distinct G(2,3) graphs): splits collide often, so a dependence on a size shows.
    return [StarGraphConfig(num_nodes=6, num_pretrain=30, num_train=30, num_test=30),
            ArithmeticConfig(name="arithmetic", max_number=6, max_ops=1, num_pretrain=20, num_train=20, num_test=20)]


@pytest.mark.parametrize("cfg", _generated_task_configs(), ids=lambda c: c.name)
@pytest.mark.parametrize("splits", SPLIT_SETS, ids="+".join)
def test_a_split_size_left_out_of_a_stages_task_settings_does_not_change_the_problems_it_reads(cfg, splits):
    from dataclasses import replace

    from qsharp_exp.config import SPLIT_SIZES
    from qsharp_exp.tasks import build_task

    task = build_task(cfg)
    for size in SPLIT_SIZES.values():
        other = replace(cfg, **{size: getattr(cfg, size) + 200})
        if other.settings_for(*splits) != cfg.settings_for(*splits):
            continue  # the stage's key changes with it
        for split in splits:
            assert build_task(other).problems(split) == task.problems(split), (size, split)


def test_the_train_split_of_a_generated_task_depends_on_the_test_size():
    """Drawn after the test split and skipping its graphs, the train split changes with num_test: the stages
    that read it must be keyed by num_test."""
    from dataclasses import replace

    from qsharp_exp.tasks import build_task

    cfg = _generated_task_configs()[0]
    assert "num_test" in cfg.settings_for("train") and "num_train" not in cfg.settings_for("test")
    other = replace(cfg, num_test=cfg.num_test + 200)
    assert build_task(other).problems("train") != build_task(cfg).problems("train")
