"""From problems to token ids and back: the chat template, stop tokens, padding and the context check."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from qsharp_exp.config import ConfigError, UserError
from qsharp_exp.tasks import Problem

COVERAGE_SAMPLE = 200  # prompts per split whose text pi_ref's tokenizer must represent (a sample: it takes time)


def context_length(config: PretrainedConfig) -> int | None:
    """A model's context in positions, from its config (None: the architecture names none)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


@dataclass
class PromptCodec:
    tokenizer: PreTrainedTokenizerBase
    chat_template: bool
    stop_ids: list[int]  # any of them ends a response (EOS, end of turn)
    max_positions: int | None  # the context of pi_ref (and of the guide, whichever is shorter)

    @classmethod
    def planned(cls, tokenizer: PreTrainedTokenizerBase, chat_template: bool, max_positions: int | None
                ) -> PromptCodec:
        """The prompts of a model known so far by its tokenizer and context (its stop tokens not yet known):
        enough to check, before any work, that the task's text can be encoded and fits."""
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise UserError("task.chat_template=true but pi_ref's tokenizer has no chat template: "
                            "set task.chat_template=false to feed the bare prompt.")
        return cls(tokenizer, chat_template, [], max_positions)

    @classmethod
    def for_model(cls, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, chat_template: bool) -> PromptCodec:
        codec = cls.planned(tokenizer, chat_template, context_length(model.config))
        stops = {tokenizer.eos_token_id}
        generation = getattr(model, "generation_config", None)
        extra = getattr(generation, "eos_token_id", None) if generation is not None else None
        stops.update(extra if isinstance(extra, list) else [extra])
        stops.discard(None)
        if not stops:
            raise UserError("pi_ref's tokenizer has no EOS token and its generation config none: "
                            "set tokenizer.eos_token in the model's files.")
        codec.stop_ids = sorted(stops)
        return codec

    def check_covers(self, texts: list[str], key: str) -> None:
        """Every text survives encoding: a tokenizer that maps what it does not know to padding or to an unknown
        token would feed pi_ref holes instead of labels, and the run would end with a meaningless score."""
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            back = self.tokenizer.decode(ids, skip_special_tokens=True)
            if "".join(back.split()) != "".join(text.split()):
                lost = sorted(set(text.split()) - set(back.split()))[:5]
                raise UserError(f"{key}: its tokenizer cannot represent the task's text (lost: "
                                f"{', '.join(lost) or repr(text[:60])}); the model was built for other labels or "
                                f"another language: use a model whose tokenizer covers this task's settings.")

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.stop_ids[0]  # padding is masked: any id will do

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        return eos if eos is not None else self.stop_ids[0]

    def prompt_text(self, problem: Problem) -> str:
        if not self.chat_template:
            return problem.prompt
        messages = [{"role": "user", "content": problem.prompt}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, problems: list[Problem], max_new_tokens: int, key: str = "eval.max_new_tokens"
               ) -> list[list[int]]:
        """Prompt ids; a prompt that leaves no room for `max_new_tokens` (the setting `key`) within the context is
        an error."""
        encoded = self.tokenizer([self.prompt_text(p) for p in problems], add_special_tokens=False)["input_ids"]
        if self.max_positions is not None and encoded:
            longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
            if len(encoded[longest]) + max_new_tokens > self.max_positions:
                raise UserError(
                    f"problem {problems[longest].id}: its prompt has {len(encoded[longest])} tokens and with "
                    f"{key}={max_new_tokens} exceeds the models' context of {self.max_positions} "
                    f"positions: lower {key}, raise max_positions of the model, or use fewer/shorter "
                    "problems."
                )
        return encoded

    def response_ids(self, text: str) -> list[int]:
        """A reference response as pi_ref should produce it: its tokens, then EOS."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_id]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def checked_prompts(codec: PromptCodec, problems: list[Problem], max_new_tokens: int, budget_key: str,
                    model_key: str) -> list[list[int]]:
    """What is checked before sampling prompts, by the pipeline and the generate command alike: pi_ref's tokenizer
    represents them (a label it does not know would become padding), and each leaves room for `max_new_tokens`
    (the setting `budget_key`) within the context. Returns the prompts' ids."""
    codec.check_covers([p.prompt for p in problems[:COVERAGE_SAMPLE]], model_key)
    return codec.encode(problems, max_new_tokens, budget_key)


def check_top_k(top_k: int, vocab_size: int, key: str) -> None:
    """Guidance rescores pi_ref's top-k candidates: k within its vocabulary."""
    if top_k > vocab_size:
        raise ConfigError(f"{key}={top_k} is more than pi_ref's vocabulary of {vocab_size} tokens: set "
                          f"{key}<={vocab_size}.")
