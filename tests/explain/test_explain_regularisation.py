"""The regularisation explain topic, run in quick mode: L1 against L2 sparsity and weight decay
under SGD, Adam and AdamW, checked from the measured numbers, then the verdict, the figure and
that the report is JSON."""


def test_regularisation(run_quick):
    report = run_quick("regularisation")
    assert len(report["figures"]) == 1
    numbers = report["numbers"]
    sparse = numbers["sparsity"]
    irrelevant = sparse["features"] - sparse["relevant"]
    # L1 with the proximal step: exact zeros on the irrelevant weights, none on the relevant.
    assert sparse["l1_proximal"]["exact_zeros_irrelevant"] >= 0.8 * irrelevant
    assert sparse["l1_proximal"]["exact_zeros_relevant"] == 0
    # The subgradient never lands on 0; L2 shrinks without zeroing.
    assert sparse["l1_subgradient"]["exact_zeros_irrelevant"] == 0
    assert sparse["subgradient_sign_flips_last_10_steps"] > irrelevant // 2
    assert sparse["l2"]["exact_zeros_irrelevant"] == 0
    assert 0 < sparse["l2"]["max_abs_irrelevant"] < 0.25 * sparse["smallest_true_weight"]
    decay = numbers["weight_decay"]
    # Weight decay is L2 for SGD (and Adam's weight_decay is L2), but AdamW is not.
    assert decay["sgd_decay_vs_l2_max_diff"] < 1e-12
    assert decay["adam_decay_vs_l2_max_diff"] < 1e-12
    assert decay["adam_l2_vs_adamw_relative"] > 0.05
    assert decay["decay_spread"] > 100
    distance = decay["distance_to_l2_optimum"]
    assert distance["adam_l2"] < 1e-3 < 0.1 < distance["adamw"]
