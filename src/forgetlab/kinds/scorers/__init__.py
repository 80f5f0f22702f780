"""Scorers the kinds use: log-likelihood of choices, token NLL, batched decoding, exact
match, HumanEval pass@1 (with its sandbox) and sample diversity."""
