"""CartPole policy (PPO, our own): float vs int8 / int4 / ternary, PTQ and QAT, greedy return over 100 episodes.

Task: CartPole-v1 (gymnasium, the ``rl`` extra), trained with its usual 500-step limit and evaluated with the limit
lifted to ``--max-steps`` (default 5,000). Every step alive earns 1, so returns are positive and "95% of float" is a
ratio of survival times; with the 500-step cap most decent policies tie at the maximum and hide quantization damage.
The float policy is deliberately modest (40 PPO rollouts, ~40k transitions, a few seconds): its greedy episodes end
well before the lifted limit (the pole falls or the cart leaves the track), so their lengths vary and damage shows.
Trained to convergence (~150 rollouts) the greedy policy survives all 5,000 steps of every episode: a ceiling again.
Returns of a balancing policy are chaotic in its actions (one flipped action can end an episode early or late), so
a quantized policy can score above float; the s.e. column (std / sqrt(episodes)) is the noise to read ratios against.

Policy: a 4 -> 64 -> 64 -> 2 Tanh MLP (``nn.Linear``), trained by a small PPO (clipped objective, GAE, entropy bonus,
8 envs x 128 steps per rollout, 4 epochs of minibatches of 256, Adam 1e-3) with a separate value MLP that is not
quantized. Everything is seeded by ``--seed``: torch, the action sampling and the env seeds.

PTQ: ``quanta.quantize(copy.deepcopy(policy), recipe)``; ``w8a8`` calibrates its static activation ranges on the
observations of 10 float-policy episodes (seeds disjoint from the evaluation's). ``w8a8-obs16`` (custom recipe) is
``w8a8`` with the first layer's input, the raw observation, left in float: one per-tensor int8 range over features
of different scales (cart position ~ +-2.4, pole angle ~ +-0.2 rad) leaves the pole angle a handful of levels. The
``ternary`` preset keeps the first and last layers in float (the binary/ternary convention), so on this MLP only the
64 x 64 layer is ternary; ``ternary-all`` (custom recipe) makes all three ternary. QAT: ``quanta.prepare_qat`` ->
distil the float policy's action distribution (``quanta.train.fit``, ``kd_weight=1``: KL at T = 1, Adam 1e-3,
``--qat-epochs`` passes) on the observations of 32 stochastic float-policy episodes (seeds again disjoint) ->
``quanta.convert``; the row is the converted (packed) policy's.

Evaluation: every policy greedily (argmax action) on the same ``--episodes`` env seeds. Action agreement is the
fraction of steps where a policy's argmax equals the float policy's on the same observation: "on float states" over
every observation of the float policy's own evaluation episodes (the same states for every row), "on own states"
over the observations the policy itself visits. Bytes: ``quanta.model_nbytes`` of the policy MLP.

    .venv/bin/python benchmarks/bench_rl_policy.py [--episodes 100] [--seed 0] [--train-iters 40] [--max-steps 5000]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta
from quanta.recipe import Recipe, Rule
from quanta.scheme import QScheme
from quanta.train import fit

try:
    import gymnasium as gym
except ImportError as error:  # an optional extra
    raise SystemExit("bench_rl_policy needs gymnasium: .venv/bin/pip install gymnasium") from error

ENV = "CartPole-v1"
N_ENVS, N_STEPS = 8, 128  # one PPO rollout: 1,024 transitions
GAMMA, LAMBDA, CLIP = 0.99, 0.95, 0.2
PRESETS = ("w8a16", "w8a8", "w8a8-dyn", "w8a8-smoothinput", "w8a8-obs16", "w4a16", "ternary", "ternary-all")
PTQ_ONLY = ("w8a8-smoothinput",)  # a post-training transform: QAT trains the raw-input rows instead
EVAL_SEED, CALIB_SEED, QAT_SEED = 1_000_000, 2_000_000, 3_000_000  # env seed ranges, disjoint from training's


def mlp(n_in: int, n_out: int, hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_out)
    )


def train_ppo(iters: int, seed: int) -> nn.Sequential:
    """PPO on CartPole-v1 (500-step limit; a truncated episode bootstraps from the value of its last state)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    policy, value = mlp(4, 2), mlp(4, 1)
    opt = torch.optim.Adam([*policy.parameters(), *value.parameters()], lr=1e-3)
    envs = [gym.make(ENV) for _ in range(N_ENVS)]
    obs = torch.tensor(np.array([env.reset(seed=seed * 1000 + k)[0] for k, env in enumerate(envs)]))  # (envs, 4)
    for _ in range(iters):
        states, actions, logps, rewards, dones = [], [], [], [], []
        for _ in range(N_STEPS):
            with torch.no_grad():
                dist = torch.distributions.Categorical(logits=policy(obs))
                action = torch.multinomial(dist.probs, 1, generator=gen).squeeze(1)  # (envs,)
            states.append(obs)
            actions.append(action)
            logps.append(dist.log_prob(action))
            step_rewards, step_dones, next_obs = [], [], []
            for env, a in zip(envs, action.tolist(), strict=True):
                o, reward, terminated, truncated, _ = env.step(a)
                r = float(reward)
                if truncated and not terminated:  # bootstrap the time limit away: it is not a failure
                    with torch.no_grad():
                        r += GAMMA * float(value(torch.tensor(o)))
                if terminated or truncated:
                    o, _ = env.reset()
                step_rewards.append(r)
                step_dones.append(float(terminated or truncated))
                next_obs.append(o)
            rewards.append(torch.tensor(step_rewards))
            dones.append(torch.tensor(step_dones))
            obs = torch.tensor(np.array(next_obs))
        s, a, old_logp = torch.stack(states), torch.stack(actions), torch.stack(logps)  # (steps, envs, ...)
        with torch.no_grad():
            v = value(s).squeeze(-1)  # (steps, envs)
            next_v = value(obs).squeeze(-1)
        adv = torch.zeros_like(v)
        gae = torch.zeros(N_ENVS)
        for t in reversed(range(N_STEPS)):
            not_done = 1 - dones[t]
            gae = rewards[t] + GAMMA * next_v * not_done - v[t] + GAMMA * LAMBDA * not_done * gae
            adv[t] = gae
            next_v = v[t]
        ret = (adv + v).flatten()
        s, a, old_logp, adv = s.flatten(0, 1), a.flatten(), old_logp.flatten(), adv.flatten()
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        for _ in range(4):  # epochs over the rollout, minibatches of 256
            for idx in torch.randperm(len(s), generator=gen).split(256):
                dist = torch.distributions.Categorical(logits=policy(s[idx]))
                ratio = (dist.log_prob(a[idx]) - old_logp[idx]).exp()
                clipped = ratio.clamp(1 - CLIP, 1 + CLIP)
                pg_loss = -torch.min(ratio * adv[idx], clipped * adv[idx]).mean()
                v_loss = (value(s[idx]).squeeze(-1) - ret[idx]).pow(2).mean()
                loss = pg_loss + 0.5 * v_loss - 0.01 * dist.entropy().mean()
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_([*policy.parameters(), *value.parameters()], 0.5)
                opt.step()
    return policy.eval()


@torch.no_grad()
def rollouts(
    policy: nn.Module, seeds: list[int], max_steps: int, reference: nn.Module | None = None, sample: bool = False
) -> tuple[list[float], list[torch.Tensor], int]:
    """Run one episode per seed, all envs stepped together (one batched forward per step).

    Returns each episode's return, the observations visited (one (n, 4) tensor per step) and, with a
    ``reference``, how many of the policy's actions equal the reference's argmax on the same observation.
    """
    envs = [gym.make(ENV, max_episode_steps=max_steps) for _ in seeds]
    obs = [env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)]
    alive = list(range(len(envs)))
    returns = [0.0] * len(envs)
    visited, agree = [], 0
    gen = torch.Generator().manual_seed(seeds[0])
    while alive:
        x = torch.tensor(np.array([obs[i] for i in alive]))  # (alive, 4)
        logits = policy(x)
        action = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1) if sample else logits.argmax(-1)
        if reference is not None:
            agree += int((reference(x).argmax(-1) == action).sum())
        visited.append(x)
        still = []
        for i, a in zip(alive, action.tolist(), strict=True):
            obs[i], r, terminated, truncated, _ = envs[i].step(a)
            returns[i] += float(r)
            if not (terminated or truncated):
                still.append(i)
        alive = still
    return returns, visited, agree


def recipe_for(name: str) -> Recipe | str:
    """A preset, or one of the two custom recipes (see the module docstring)."""
    if name == "ternary-all":  # ternary weights (per channel) in every Linear, first and last included
        return Recipe(rules=(Rule(module_type="Linear", weight=QScheme.parse("ternary:ch")),), name=name)
    if name == "w8a8-obs16":  # w8a8, but the first layer's input (the raw observation) stays float
        w8, a8 = QScheme.parse("int8:ch"), QScheme("int8", "tensor", mode="asym")
        return Recipe(rules=(Rule(pattern="0", weight=w8), Rule(module_type="Linear", weight=w8, activation=a8)))
    return name


def qat(policy: nn.Module, recipe: Recipe | str, states: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    """Fake-quantize a copy of ``policy``, distil the float policy's action distribution, convert."""
    torch.manual_seed(seed)
    student = quanta.prepare_qat(copy.deepcopy(policy), recipe)
    labels = policy(states).argmax(-1).detach()  # unused at kd_weight=1, fit's signature takes (x, y)
    gen = torch.Generator().manual_seed(seed)
    batches = [(states[i], labels[i]) for i in torch.randperm(len(states), generator=gen).split(256)]
    fit(student, batches, epochs=epochs, lr=1e-3, teacher=policy, kd_weight=1.0, temperature=1.0)
    return quanta.convert(student.eval())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-iters", type=int, default=40, help="PPO rollouts of 8 envs x 128 steps.")
    parser.add_argument("--max-steps", type=int, default=5000, help="Episode limit at evaluation (lifted).")
    parser.add_argument("--qat-epochs", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a 64-wide MLP: threads cost more than they save
    start = time.perf_counter()
    policy = train_ppo(args.train_iters, args.seed)
    train_s = time.perf_counter() - start

    eval_seeds = [EVAL_SEED + args.seed * 1000 + i for i in range(args.episodes)]
    float_returns, float_visited, _ = rollouts(policy, eval_seeds, args.max_steps)
    float_states = torch.cat(float_visited)  # (steps, 4): every observation of the float policy's episodes
    float_actions = policy(float_states).argmax(-1)
    float_mean = statistics.mean(float_returns)

    calib_seeds = [CALIB_SEED + args.seed * 1000 + i for i in range(10)]
    calib = torch.cat(rollouts(policy, calib_seeds, args.max_steps)[1]).split(256)  # batches of observations
    qat_seeds = [QAT_SEED + args.seed * 1000 + i for i in range(32)]
    qat_states = torch.cat(rollouts(policy, qat_seeds, args.max_steps, sample=True)[1])

    rows: list[tuple[str, str, nn.Module]] = [("float32", "-", policy)]
    for mode in ("PTQ", "QAT"):
        for preset in PRESETS:
            if mode == "QAT" and preset in PTQ_ONLY:
                continue
            recipe = recipe_for(preset)
            if mode == "PTQ":
                model = quanta.quantize(copy.deepcopy(policy), recipe, calib=calib)
            else:
                model = qat(policy, recipe, qat_states, args.qat_epochs, args.seed)
            rows.append((preset, mode, model))

    float_bytes = quanta.model_nbytes(policy)
    print(
        f"{ENV}, limit lifted to {args.max_steps} steps; PPO {args.train_iters} x {N_ENVS * N_STEPS} steps "
        f"({train_s:.0f} s); greedy, {args.episodes} episodes, {len(float_states)} float-policy steps\n"
    )
    print("| policy | mode | mean return ± std | s.e. | of float | agreement on float states | on own states | bytes |")
    print("|---|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for name, mode, model in rows:
            returns, visited, agree = rollouts(model, eval_seeds, args.max_steps, reference=policy)
            mean, std = statistics.mean(returns), statistics.pstdev(returns)
            on_float = float((model(float_states).argmax(-1) == float_actions).float().mean())
            on_own = agree / sum(len(v) for v in visited)
            nbytes = quanta.model_nbytes(model)
            print(
                f"| {name} | {mode} | {mean:.1f} ± {std:.1f} | {std / len(returns) ** 0.5:.1f} | "
                f"{100 * mean / float_mean:.1f}% | "
                f"{100 * on_float:.2f}% | {100 * on_own:.2f}% | {nbytes:,} ({nbytes / float_bytes:.2f}x) |"
            )
    print(f"\nTotal {time.perf_counter() - start:.0f} s. Command: {' '.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main()
