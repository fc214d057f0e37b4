"""Controller: sampling follows the policy, REINFORCE learns a toy target, masks, exact restore."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch

from controller import LSTMController, Reinforce, state_from_json, state_to_json

D, V, BATCH = 20, 6, 16  # the toy problem: 20 decisions with 6 choices, batches of 16
CHANCE = 1.0 / V


@pytest.fixture(autouse=True)
def _one_thread():
    """The controller's ops are tiny: extra threads only stall on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _target(seed: int = 123) -> torch.Tensor:
    return torch.randint(0, V, (D,), generator=torch.Generator().manual_seed(seed))


def _match(tokens: list[list[int]], target: torch.Tensor) -> list[float]:
    """Toy reward: fraction of decisions equal to the hidden target plan."""
    return (torch.tensor(tokens) == target).float().mean(dim=1).tolist()


def _params(policy: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in policy.parameters()]


# ----------------------------------------------------------------- the policy itself
@pytest.mark.parametrize("num_layers,share", [(1, False), (2, True)])
def test_sample_log_probs_match_teacher_forced_evaluate(num_layers: int, share: bool) -> None:
    sizes = [3, 4, 3, 4, 1, 5]
    keys = ["a", "b", "a", "b", "c", "d"] if share else None
    policy = LSTMController(sizes, num_layers=num_layers, share_keys=keys, seed=3)
    tokens, log_probs, entropies = policy.sample(64, torch.Generator().manual_seed(0))
    ev_log_probs, ev_entropies = policy.evaluate(tokens)
    torch.testing.assert_close(ev_log_probs, log_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ev_entropies, entropies, atol=1e-5, rtol=0)
    assert (tokens < torch.tensor(sizes)).all() and (tokens >= 0).all()
    assert (log_probs[:, 4] == 0).all()  # a single-choice decision is certain


def test_samples_follow_the_policy_distribution() -> None:
    """Empirical joint frequencies of 40k samples match exp(sum log_prob) from evaluate()."""
    policy = LSTMController([3, 4], temperature=1.0, init_range=1.0, seed=1)
    combos = torch.tensor(list(itertools.product(range(3), range(4))))
    with torch.no_grad():
        probs = policy.evaluate(combos)[0].sum(dim=1).exp()
        tokens, _, _ = policy.sample(40_000, torch.Generator().manual_seed(5))
    assert abs(float(probs.sum()) - 1.0) < 1e-5
    assert float(probs.max() / probs.min()) > 3  # not uniform, so the check has teeth
    counts = torch.zeros(3, 4)
    counts.index_put_((tokens[:, 0], tokens[:, 1]), torch.ones(len(tokens)), accumulate=True)
    freq = counts.flatten() / len(tokens)
    # 4 standard errors of a binomial proportion at n=40k is <= 0.01
    assert float((freq - probs).abs().max()) < 0.01


def test_tanh_clipping_bounds_probabilities_and_greedy_takes_the_mode() -> None:
    c = 1.5
    policy = LSTMController([V] * 4, temperature=1.0, tanh_constant=c, seed=0)
    with torch.no_grad():
        policy.head_bias.fill_(-100.0)
        policy.head_bias[::V] = 100.0  # choice 0 of every decision would be ~certain
        greedy, greedy_lp, _ = policy.sample(2, greedy=True)
    bound = math.exp(c) / (math.exp(c) + (V - 1) * math.exp(-c))  # 0.80 for c=1.5, V=6
    assert (greedy == 0).all()
    assert float(greedy_lp.exp().max()) <= bound + 1e-6
    assert float(greedy_lp.exp().min()) > bound - 1e-3
    unclipped = LSTMController([V] * 4, temperature=1.0, tanh_constant=None, seed=0)
    unclipped.load_state_dict(policy.state_dict())
    with torch.no_grad():
        assert float(unclipped.sample(2, greedy=True)[1].exp().min()) > 0.999


def test_same_seed_same_samples_and_init() -> None:
    def draw(policy_seed: int, rng_seed: int) -> torch.Tensor:
        policy = LSTMController([V] * D, seed=policy_seed)
        with torch.no_grad():
            return policy.sample(8, torch.Generator().manual_seed(rng_seed))[0]

    assert torch.equal(draw(0, 0), draw(0, 0))
    assert not torch.equal(draw(0, 0), draw(0, 1))
    assert not torch.equal(draw(0, 0), draw(1, 0))
    policy = LSTMController([V] * D, hidden_size=16, seed=4)
    rebuilt = LSTMController(**policy.config())
    assert all(torch.equal(a, b) for a, b in zip(policy.parameters(), rebuilt.parameters()))
    trainer = Reinforce(LSTMController([V] * D), seed=7)
    again = Reinforce(LSTMController([V] * D), seed=7)
    assert trainer.sample(5) == again.sample(5) and trainer.sample(5) == again.sample(5)


def test_shared_keys_share_head_and_embedding() -> None:
    """Decisions with one key use the same rows: ENAS-style weight sharing per decision type."""
    own = LSTMController([4, 3] * 5, hidden_size=8)
    shared = LSTMController([4, 3] * 5, hidden_size=8, share_keys=["prob", "size"] * 5)
    assert own.head_weight.shape[0] == 35 and shared.head_weight.shape[0] == 7
    tokens = shared.sample(32, torch.Generator().manual_seed(0))[0]
    log_probs, _ = shared.evaluate(tokens)
    log_probs[:, 0].sum().backward()  # decision 0 ("prob") only: its 4 rows get gradient
    rows_with_grad = shared.head_weight.grad.abs().sum(dim=1) > 0
    assert rows_with_grad.tolist() == [True] * 4 + [False] * 3


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"vocab_sizes": []}, "vocab_sizes"),
        ({"vocab_sizes": [3, 0]}, "vocab_sizes[1]"),
        ({"vocab_sizes": [3], "temperature": 0.0}, "temperature"),
        ({"vocab_sizes": [3], "hidden_size": 2.5}, "hidden_size"),
        ({"vocab_sizes": [3, 4], "share_keys": ["a"]}, "share_keys"),
        ({"vocab_sizes": [3, 4], "share_keys": ["a", "a"]}, "share_keys[1]"),
    ],
)
def test_bad_controller_arguments_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=re_field(field)):
        LSTMController(**kwargs)


def test_bad_tokens_and_rewards_name_the_problem() -> None:
    trainer = Reinforce(LSTMController([3, 4]))
    with pytest.raises(ValueError, match=r"tokens\[1\]\[1\]=4: decision 1 allows 0..3"):
        trainer.policy.evaluate(torch.tensor([[0, 0], [2, 4]]))
    with pytest.raises(ValueError, match=r"shape \(1, 3\)"):
        trainer.policy.evaluate(torch.tensor([[0, 0, 0]]))
    with pytest.raises(ValueError, match=r"rewards\[1\]=nan"):
        trainer.update([[0, 0], [1, 1]], [0.5, float("nan")])
    with pytest.raises(ValueError, match="2 token sequences"):
        trainer.update([[0, 0], [1, 1]], [0.5])
    with pytest.raises(ValueError, match="lr=-1"):
        Reinforce(LSTMController([3]), lr=-1)
    other = Reinforce(LSTMController([3, 5]))
    with pytest.raises(ValueError, match=r"policy_config.vocab_sizes=\[3, 5\]"):
        trainer.load_state_dict(other.state_dict())


def re_field(field: str) -> str:
    return "^" + field.replace("[", r"\[").replace("]", r"\]")


# ----------------------------------------------------------------- REINFORCE
def test_reinforce_learns_toy_target_with_defaults_while_random_stays_at_chance() -> None:
    target = _target()
    trainer = Reinforce(LSTMController([V] * D))  # all defaults
    history: list[float] = []
    for _ in range(3000 // BATCH):
        tokens = trainer.sample(BATCH)
        history.append(float(np.mean(_match(tokens, target))))
        stats = trainer.update(tokens, _match(tokens, target))
        if len(history) >= 5 and np.mean(history[-5:]) >= 0.8:
            break
    assert abs(np.mean(history[:3]) - CHANCE) < 0.06  # starts near chance
    assert np.mean(history[-5:]) >= 0.8, f"stalled at {np.mean(history[-5:]):.3f}"
    assert stats["step"] == len(history) and stats["entropy"] < math.log(V) - 0.3

    rng = np.random.default_rng(0)
    random_tokens = rng.integers(0, V, size=(3000, D)).tolist()
    assert abs(np.mean(_match(random_tokens, target)) - CHANCE) < 0.02


def test_uninformative_rewards_do_not_find_the_target() -> None:
    """Same trainer, rewards independent of the tokens: stays near chance (no leak of target)."""
    target = _target()
    trainer = Reinforce(LSTMController([V] * D), seed=1)
    noise = np.random.default_rng(1)
    for _ in range(60):
        tokens = trainer.sample(BATCH)
        trainer.update(tokens, noise.uniform(0, 1, BATCH).tolist())
    assert abs(np.mean(_match(trainer.sample(2000), target)) - CHANCE) < 0.12


def _run(trainer: Reinforce, target: torch.Tensor, steps: int) -> list[list[int]]:
    drawn = []
    for _ in range(steps):
        tokens = trainer.sample(BATCH)
        trainer.update(tokens, _match(tokens, target))
        drawn += tokens
    return drawn


@pytest.mark.parametrize("via", ["memory", "torch.save", "json"])
def test_restore_mid_run_continues_exactly(via: str) -> None:
    target = _target()
    original = Reinforce(LSTMController([V] * D, seed=0), seed=0)
    _run(original, target, 4)
    state = original.state_dict()
    if via == "torch.save":
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        state = torch.load(buffer)
    elif via == "json":
        state = state_from_json(state_to_json(state))
    expected_tokens = _run(original, target, 4)
    expected_params = _params(original.policy)

    # A trainer built differently (other init and RNG seeds) becomes the original.
    restored = Reinforce(LSTMController([V] * D, seed=99), seed=99)
    restored.load_state_dict(state)
    assert restored.step == 4
    assert _run(restored, target, 4) == expected_tokens
    for got, want in zip(_params(restored.policy), expected_params):
        assert torch.equal(got, want)
    assert restored.baseline == original.baseline and restored.step == original.step == 8


def test_update_is_independent_of_trial_order() -> None:
    """Trials finish out of order: a permuted batch gives the same loss and gradient."""
    target = _target()
    first, second = (Reinforce(LSTMController([V] * D)) for _ in range(2))
    tokens = first.sample(BATCH)
    rewards = _match(tokens, target)
    order = np.random.default_rng(0).permutation(BATCH)
    stats = first.update(tokens, rewards)
    permuted = second.update([tokens[i] for i in order], [rewards[i] for i in order])
    assert permuted == pytest.approx(stats, rel=1e-6, abs=1e-6)
    for a, b in zip(first.policy.parameters(), second.policy.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-4)


def test_active_fn_removes_masked_decisions_from_the_gradient() -> None:
    """Decision 2 is inactive whenever decision 0 chose 0, always so here for decision 3.

    With per-decision heads, head rows of decision d only receive gradient through
    log p_d and H_d, so masked-out (row, decision) pairs must contribute exactly nothing."""
    sizes = [2, 3, 4, 5]
    policy = LSTMController(sizes, temperature=1.0, seed=0)
    rows = [sum(sizes[:d]) for d in range(len(sizes))]

    def active(tokens: list[int]) -> list[bool]:
        return [True, True, tokens[0] == 1, False]

    trainer = Reinforce(policy, active_fn=active)
    tokens = [[0, 1, 2, 3], [1, 2, 3, 4], [0, 0, 0, 0], [1, 0, 1, 2]]
    rewards = [0.1, 0.9, 0.3, 0.5]
    stats = trainer.update(tokens, rewards)
    grad_w = policy.head_weight.grad
    assert grad_w[rows[3] :].abs().max() == 0  # decision 3 never active: no gradient at all
    assert grad_w[rows[2] : rows[3]].abs().max() > 0

    # The loss equals the hand-computed masked REINFORCE loss (baseline = batch mean at step 0).
    fresh = LSTMController(sizes, temperature=1.0, seed=0)
    with torch.no_grad():
        log_probs, entropies = fresh.evaluate(torch.tensor(tokens))
    mask = torch.tensor([active(t) for t in tokens], dtype=torch.float32)
    adv = torch.tensor(rewards) - float(np.mean(rewards))
    want = -(adv * (log_probs * mask).sum(1)).mean()
    want = want - trainer.config.entropy_weight * (entropies * mask).sum(1).mean()
    assert stats["loss"] == pytest.approx(want.item(), abs=1e-6)
    assert stats["entropy"] == pytest.approx(float((entropies * mask).sum() / mask.sum()), abs=1e-6)

    # Masking only rows whose decision-2 token is 0 or 2 matters: without the mask they count.
    unmasked = Reinforce(LSTMController(sizes, temperature=1.0, seed=0), active_fn=lambda t: [True, True, True, False])
    unmasked.update(tokens, rewards)
    assert not torch.allclose(unmasked.policy.head_weight.grad[rows[2] : rows[3]], grad_w[rows[2] : rows[3]])


def test_mild_prior_starts_the_policy_on_mild_plans_and_zero_is_uniform():
    """The untrained controller samples from the prior's softmax (within sampling noise)."""
    import numpy as np

    from controller.prior import mild_prior
    from search_space import SearchSpace

    space = SearchSpace([("a", ["a"]), ("b", ["b"])], model="m")
    prior = mild_prior(space, 2.0)
    policy = LSTMController(space.vocab_sizes, seed=0, prior_logits=prior, init_range=1e-4)
    tokens, _, _ = policy.sample(20000, generator=torch.Generator().manual_seed(0))
    for d, dec in enumerate(space.decisions):
        want = np.exp(prior[d]) / np.exp(prior[d]).sum()
        got = np.bincount(tokens[:, d].numpy(), minlength=len(dec.choices)) / len(tokens)
        # 20k draws: a share's standard deviation is at most 0.0036; 0.015 is > 4 of them
        assert np.abs(got - want).max() < 0.015, (dec, got, want)
    probs = space.decisions[[d.param for d in space.decisions].index("drop_prob")].choices
    p_row = prior[[d.param for d in space.decisions].index("drop_prob")]
    assert p_row[0] == 0.0 and p_row[-1] == pytest.approx(-2.0) and list(p_row) == sorted(p_row, reverse=True)
    assert probs[0] == 0.0
    flat = LSTMController(space.vocab_sizes, seed=0, prior_logits=mild_prior(space, 0.0), init_range=1e-4)
    t, _, _ = flat.sample(20000, generator=torch.Generator().manual_seed(1))
    shares = np.bincount(t[:, 0].numpy(), minlength=space.vocab_sizes[0]) / len(t)
    assert np.abs(shares - 1 / space.vocab_sizes[0]).max() < 0.015
