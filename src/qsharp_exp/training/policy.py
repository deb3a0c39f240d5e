"""Policy-based post-training baselines: REINFORCE, DPO and RPO on a copy of pi_ref (docs/method.md, section 4).

The paper's contrast on star-graph: these fine-tune the policy itself and stay at the next-token
shortcut's 1/d, where value guidance (CD, Q#) escapes it. Each loss is a pure function of sequence
log-probabilities, tested against hand-computed values. Trainers are registered by name
(`@register_policy_trainer`): a new one is one function here plus one `conf/algo/<name>.yaml`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from qsharp_exp.config import PolicyConfig, UserError
from qsharp_exp.hardware import Hardware
from qsharp_exp.padding import right_pad
from qsharp_exp.progress import ignore_point, progress
from qsharp_exp.registry import Registry
from qsharp_exp.sampling import Draw, Sampler, SamplingSpec, Steering
from qsharp_exp.tasks import Problem, Task
from qsharp_exp.training.engine import OptimizerPlan, PlainTrainer, TrainingEnv, make_trainer

log = logging.getLogger(__name__)


def shaped_rewards(correct: torch.Tensor, cfg: PolicyConfig) -> torch.Tensor:
    """REINFORCE's reward: `reward_correct` for a correct path, `reward_wrong` otherwise."""
    return torch.where(correct, torch.tensor(cfg.reward_correct), torch.tensor(cfg.reward_wrong))


def reinforce_loss(logp: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """-mean((R - mean R) * log pi(y|x)): the policy gradient with the batch-mean baseline."""
    advantage = (rewards - rewards.mean()).detach()
    return -(advantage * logp).mean()


@dataclass(frozen=True)
class PairLogprobs:
    """Sequence log-probabilities [B] of a batch of preference pairs under the policy and under pi_ref."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor


def dpo_margin(lp: PairLogprobs, beta: float) -> torch.Tensor:
    """beta * (log-ratio of the chosen path - log-ratio of the rejected path), ratios against pi_ref."""
    return beta * ((lp.policy_chosen - lp.ref_chosen) - (lp.policy_rejected - lp.ref_rejected))


def dpo_loss(lp: PairLogprobs, beta: float) -> torch.Tensor:
    return -F.logsigmoid(dpo_margin(lp, beta)).mean()


def rpo_loss(lp: PairLogprobs, chosen_lengths: torch.Tensor, beta: float, nll_weight: float) -> torch.Tensor:
    """DPO plus the per-token negative log-likelihood of the chosen path."""
    nll = -(lp.policy_chosen / chosen_lengths).mean()
    return dpo_loss(lp, beta) + nll_weight * nll


def sequence_logprobs(model: PreTrainedModel, prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                      hw: Hardware) -> torch.Tensor:
    """Sum over each response of log p(token | prefix) under `model` [B]."""
    ids, mask = right_pad([p + r for p, r in zip(prompts, responses, strict=True)], pad_id)
    ids, mask = ids.to(hw.device), mask.to(hw.device)
    with hw.autocast():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    token_logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    in_response = torch.zeros_like(token_logp, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        in_response[i, len(p) - 1 : len(p) - 1 + len(r)] = True
    return (token_logp * in_response).sum(-1)


@dataclass(frozen=True)
class PolicyJob:
    """What a policy trainer gets: the policy it fine-tunes in place (a copy of pi_ref), the task and its training
    problems, pi_ref's sampler, the trainer's settings, where it runs (seed, progress, live log) and the
    optimiser."""

    policy: PreTrainedModel
    task: Task
    problems: list[Problem]
    sampler: Sampler
    cfg: PolicyConfig
    env: TrainingEnv
    trainer: PlainTrainer


@dataclass(frozen=True)
class PolicyTrainer:
    name: str
    label: str  # how reports and plots name it
    train: Callable[[PolicyJob], list[dict]]  # -> learning curve


TRAINERS: Registry[PolicyTrainer] = Registry("policy trainer", "algo.name")


def register_policy_trainer(name: str, label: str) -> Callable:
    def register(train: Callable[[PolicyJob], list[dict]]) -> Callable[[PolicyJob], list[dict]]:
        TRAINERS.add(name, PolicyTrainer(name, label, train))
        return train

    return register


@register_policy_trainer("reinforce", "REINFORCE")
def reinforce(job: PolicyJob) -> list[dict]:
    policy, task, problems, sampler, cfg, seed = job.policy, job.task, job.problems, job.sampler, job.cfg, job.env.seed
    rng = random.Random(seed)
    codec, hw, spec = sampler.codec, sampler.hw, sampler.spec
    # The policy samples its own batches, at its exploration temperature (KL against pi_ref at that temperature).
    own = replace(sampler, spec=SamplingSpec(cfg.sample_temperature, 1.0, spec.max_new_tokens), show_progress=False,
                  live=ignore_point)
    curve = []
    for step in progress(range(cfg.steps), desc="REINFORCE", enabled=job.env.show_progress and hw.dist.is_main):
        batch = rng.sample(problems, min(cfg.batch_size, len(problems)))
        prompts = codec.encode(batch, spec.max_new_tokens)
        policy.eval()
        sampled = replace(own, batch_size=len(prompts)).sample(
            prompts, Draw(seed * 7919 + step, Steering(policy=policy)))
        policy.train()
        responses = [s.response for s in sampled]
        correct = torch.tensor([task.reward(p, codec.decode(r)) > 0 for p, r in zip(batch, responses, strict=True)])
        rewards = shaped_rewards(correct, cfg).to(hw.device)
        loss = reinforce_loss(sequence_logprobs(policy, prompts, responses, codec.pad_id, hw), rewards)
        job.trainer.update(loss)
        if step % 10 == 0 or step == cfg.steps - 1:
            kl = sum(s.kl for s in sampled) / len(sampled)
            curve.append({"step": step, "loss": round(loss.item(), 5), "accuracy": correct.float().mean().item(),
                          "kl_to_pi_ref": round(kl, 5)})
            job.env.live(curve[-1])
    return curve


def preference_pairs(task: Task, problems: list[Problem], sampler: Sampler, cfg: PolicyConfig, seed: int):
    """(prompt, chosen = the correct path, rejected = pi_ref's first wrong sample) per problem that has one."""
    codec = sampler.codec
    prompts = codec.encode(problems, sampler.spec.max_new_tokens)
    jobs = [i for i in range(len(problems)) for _ in range(cfg.rejected_tries)]
    sampled = replace(sampler, batch_size=512, desc="DPO: sample rejected paths").sample([prompts[i] for i in jobs],
                                                                                          Draw(seed))
    rejected: dict[int, list[int]] = {}
    for i, s in zip(jobs, sampled, strict=True):
        if i not in rejected and task.reward(problems[i], codec.decode(s.response)) == 0:
            rejected[i] = s.response
    return [(prompts[i], codec.response_ids(task.target(problems[i])), rejected[i]) for i in sorted(rejected)]


@register_policy_trainer("dpo", "DPO")
def dpo(job: PolicyJob) -> list[dict]:
    return _preference(job, "dpo", lambda lp, chosen, cfg, device: dpo_loss(lp, cfg.beta))


@register_policy_trainer("rpo", "RPO")
def rpo(job: PolicyJob) -> list[dict]:
    def loss(lp: PairLogprobs, chosen: list[list[int]], cfg: PolicyConfig, device: torch.device) -> torch.Tensor:
        lengths = torch.tensor([len(c) for c in chosen], dtype=torch.float, device=device)
        return rpo_loss(lp, lengths, cfg.beta, cfg.nll_weight)

    return _preference(job, "rpo", loss)


def _preference(job: PolicyJob, algo: str, batch_loss: Callable[..., torch.Tensor]) -> list[dict]:
    """DPO-style training on (chosen, rejected) pairs; `batch_loss(logprobs, chosen paths, cfg, device)`."""
    policy, task, problems, sampler, cfg, seed = job.policy, job.task, job.problems, job.sampler, job.cfg, job.env.seed
    pi_ref, codec, hw = sampler.pi_ref, sampler.codec, sampler.hw
    pairs = preference_pairs(task, problems, sampler, cfg, seed)
    if not pairs:
        raise UserError(f"algo={algo}: pi_ref answered every training problem right in all "
                        f"{cfg.rejected_tries} tries, so there is no rejected path: raise algo.policy.rejected_tries.")
    log.info("%s: %d preference pairs from %d problems", algo, len(pairs), len(problems))
    rng = random.Random(seed)
    curve = []
    for step in progress(range(cfg.steps), desc=algo.upper(), enabled=job.env.show_progress and hw.dist.is_main):
        batch = rng.sample(pairs, min(cfg.batch_size, len(pairs)))
        prompts, chosen, rejected = (list(x) for x in zip(*batch, strict=True))
        with torch.no_grad():
            ref_c = sequence_logprobs(pi_ref, prompts, chosen, codec.pad_id, hw)
            ref_r = sequence_logprobs(pi_ref, prompts, rejected, codec.pad_id, hw)
        lp = PairLogprobs(sequence_logprobs(policy, prompts, chosen, codec.pad_id, hw),
                          sequence_logprobs(policy, prompts, rejected, codec.pad_id, hw), ref_c, ref_r)
        loss = batch_loss(lp, chosen, cfg, hw.device)
        job.trainer.update(loss)
        if step % 10 == 0 or step == cfg.steps - 1:
            margin = dpo_margin(lp, cfg.beta).mean().item()
            curve.append({"step": step, "loss": round(loss.item(), 5), "margin": round(margin, 5)})
            job.env.live(curve[-1])
    return curve


def train_policy(algo: str, policy: PreTrainedModel, task: Task, sampler: Sampler, cfg: PolicyConfig,
                 env: TrainingEnv) -> list[dict]:
    """Fine-tunes `policy` (a copy of `sampler.pi_ref`) in place with trainer `algo` on the training
    problems; returns its learning curve."""
    torch.manual_seed(env.seed)
    policy.to(env.hw.device).train()
    trainer = make_trainer(policy, env.hw, OptimizerPlan(cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.steps))
    curve = TRAINERS[algo].train(PolicyJob(policy, task, task.problems("train"), sampler, cfg, env, trainer))
    policy.eval()
    return curve
