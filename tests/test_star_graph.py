"""Star-graph generator invariants, its tokenizer and its reward."""

from collections import Counter

import pytest

from qsharp_exp.tasks.star_graph import StarGraphConfig, StarGraphTask, generate_splits, parse_path


@pytest.mark.parametrize("degree,path_length,num_nodes", [(2, 3, 20), (3, 5, 30), (5, 5, 50)])
def test_graphs_have_degree_arms_and_the_answer_is_a_path_from_source_to_goal(degree, path_length, num_nodes):
    cfg = StarGraphConfig(degree=degree, path_length=path_length, num_nodes=num_nodes, num_pretrain=30, num_train=30,
                     num_test=30)
    for graph in generate_splits(cfg)["test"]:
        assert len(graph.edges) == degree * (path_length - 1)
        out_degree = Counter(u for u, _ in graph.edges)
        assert out_degree[graph.source] == degree
        assert all(d == 1 for node, d in out_degree.items() if node != graph.source)
        assert len(set(v for _, v in graph.edges)) == len(graph.edges)  # a tree: one parent each
        assert len(graph.path) == path_length
        assert graph.path[0] == graph.source and graph.path[-1] == graph.goal
        assert all((u, v) in graph.edges for u, v in zip(graph.path, graph.path[1:], strict=False))
        assert all(0 <= n < num_nodes for edge in graph.edges for n in edge)


def test_line_format_matches_the_original_datasets():
    cfg = StarGraphConfig(num_pretrain=1, num_train=1, num_test=1)
    graph = generate_splits(cfg)["test"][0]
    edges, rest = graph.prompt().split("/")
    assert rest == f"{graph.source},{graph.goal}="
    assert [tuple(map(int, e.split(","))) for e in edges.split("|")] == list(graph.edges)
    assert graph.answer() == ",".join(map(str, graph.path))


def test_generation_is_deterministic_by_seed_and_splits_are_disjoint():
    cfg = StarGraphConfig(num_pretrain=300, num_train=200, num_test=100)
    a, b = generate_splits(cfg), generate_splits(cfg)
    assert a == b
    other = generate_splits(StarGraphConfig(num_pretrain=300, num_train=200, num_test=100, seed=1))
    assert other["test"] != a["test"]
    keys = {split: {(frozenset(g.edges), g.goal) for g in graphs} for split, graphs in a.items()}
    assert not keys["test"] & keys["train"] and not keys["test"] & keys["pretrain"]
    assert not keys["train"] & keys["pretrain"]
    assert sum(len(k) for k in keys.values()) == 600


def test_test_split_depends_only_on_seed_and_pretraining_not_on_post_training_size():
    small = generate_splits(StarGraphConfig(num_pretrain=10, num_train=10, num_test=50))
    large = generate_splits(StarGraphConfig(num_pretrain=500, num_train=100, num_test=50))
    assert small["test"] == large["test"]
    assert small["pretrain"] == large["pretrain"][:10]
    more_train = generate_splits(StarGraphConfig(num_pretrain=500, num_train=300, num_test=50))
    assert more_train["pretrain"] == large["pretrain"]


def test_goal_arm_is_uniform_over_arms_so_the_first_arm_is_no_answer():
    graphs = generate_splits(StarGraphConfig(degree=2, num_pretrain=1, num_train=1, num_test=2000))["test"]
    first_child = [next(v for u, v in g.edges if u == g.source) for g in graphs]
    hits = sum(g.path[1] == c for g, c in zip(graphs, first_child, strict=True)) / len(graphs)
    assert 0.45 < hits < 0.55


def test_tokenizer_gives_each_label_and_separator_one_token_and_round_trips():
    task = StarGraphTask(StarGraphConfig(num_nodes=20, num_pretrain=1, num_train=1, num_test=3))
    tok = task.build_tokenizer()
    for problem in task.problems("test"):
        text = problem.prompt + problem.answer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        pieces = text.replace(",", " , ").replace("|", " | ").replace("/", " / ").replace("=", " = ").split()
        assert len(ids) == len(pieces)
        assert tok.unk_token_id not in ids or tok.unk_token_id == tok.pad_token_id and tok.pad_token_id not in ids
        assert tok.decode(ids) == text
    assert len(tok) == 3 + 4 + 20


def test_reward_is_one_only_for_the_exact_path():
    task = StarGraphTask(StarGraphConfig(num_pretrain=1, num_train=1, num_test=1))
    problem = task.problems("test")[0]
    assert task.reward(problem, problem.answer) == 1.0
    path = parse_path(problem.answer)
    assert task.reward(problem, ",".join(map(str, path[:-1]))) == 0.0
    assert task.reward(problem, ",".join(map(str, (*path, 3)))) == 0.0
    assert task.reward(problem, "") == 0.0
    assert task.reward(problem, "1,,2") == 0.0
