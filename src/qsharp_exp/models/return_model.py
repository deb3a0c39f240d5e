"""The return model (the paper's "Q-network"): a causal LM trunk with a value head.

- Q-type (`head="q"`): from the prefix x, one output per vocabulary token y: all candidates in one pass.
- V-type (`head="v"`): the input is x·y, the output at y's position is the value of (x, y).
The head's outputs parameterise the distribution of the return Z of pi_ref after (x, y)
(models/distributions.py: Bernoulli, histogram, or the MSE ablation's mean). How decoding turns them
into offsets is a guidance rule's choice (guidance.py); the same model also ranks finished responses
(Q# as a reward model).

`save_pretrained` / `from_pretrained` store it like a Hugging Face model: `config.json` (its `model_type`
and the guide's settings), `model.safetensors` (head and stem) and the trunk as a standard HF model in
`trunk/`. Importing qsharp_exp registers it with transformers' Auto classes: after `import qsharp_exp`,
`transformers.AutoModel.from_pretrained(folder)` loads it (docs/api.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from qsharp_exp.config import GuideConfig, UserError, as_dict
from qsharp_exp.models.distributions import return_distribution
from qsharp_exp.models.heads import HEADS, HeadKind
from qsharp_exp.models.lm import build_trunk, check_local_source, compiled
from qsharp_exp.models.stem import CausalConvStem, embed_tokens, split_lm
from qsharp_exp.padding import right_pad

FORMAT = "qsharp_exp.return_model"


class ReturnModelConfig(PretrainedConfig):
    """A saved return model's config.json as transformers' Auto classes read it: its `model_type`, and the
    guide's settings under `guide`."""

    model_type = "qsharp_return_model"

    def __init__(self, guide: dict | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.guide = guide or {}


class ReturnModel(nn.Module):
    config_class = ReturnModelConfig  # what AutoModel finds it by

    def __init__(self, cfg: GuideConfig, trunk: PreTrainedModel) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = trunk
        self.kind = HEADS[cfg.head]
        self.distribution = return_distribution(cfg)
        hidden = trunk.config.hidden_size if hasattr(trunk.config, "hidden_size") else trunk.config.n_embd
        self.vocab_size = trunk.config.vocab_size
        init_std = cfg.arch.initializer_range
        width = cfg.arch.conv_width
        self.stem = CausalConvStem(width, hidden, init_std) if width > 1 else None
        self.head = nn.Linear(hidden, self.distribution.size * self.kind.outputs_per_position(self.vocab_size))
        nn.init.normal_(self.head.weight, std=init_std)
        nn.init.zeros_(self.head.bias)
        # The head's outputs are divided by this (temperature scaling, calibration.py); 1 until it is fitted.
        self.register_buffer("temperature", torch.ones(()))

    @property
    def context_width(self) -> int:
        """How many earlier token embeddings a new token needs (for the conv stem)."""
        return self.stem.width - 1 if self.stem is not None else 0

    def embed(
        self, ids: torch.Tensor, mask: torch.Tensor, context_ids: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Input embeddings of `ids` [B, T]; padding embeds as zeros so left padding changes nothing."""
        return embed_tokens(self.trunk.get_input_embeddings(), self.stem, ids, mask, context_ids, context_mask)

    def hidden(self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               cache=None, compile_trunk: bool = False) -> torch.Tensor:
        trunk = compiled(self.trunk) if compile_trunk else self.trunk
        out = trunk(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                    use_cache=cache is not None)
        return out.last_hidden_state

    def head_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., V, D] for a Q-type head, [..., D] for a V-type head (D = distribution size)."""
        return self.kind.shape(self.head(hidden).float() / self.temperature, self.vocab_size)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Head outputs for every position of full (uncached) sequences."""
        position_ids = (mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.head_outputs(self.hidden(self.embed(ids, mask), mask, position_ids))

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.trunk.save_pretrained(path / "trunk")
        extra = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("trunk.")}
        save_file(extra, path / "model.safetensors")
        (path / "config.json").write_text(json.dumps({"model_type": ReturnModelConfig.model_type, "format": FORMAT,
                                                      "guide": as_dict(self.cfg)}, indent=2))

    @classmethod
    def from_pretrained(cls, source: str | Path, *args, dtype: torch.dtype | None = None, **kwargs) -> ReturnModel:
        """Load a saved return model from a local directory or a hub repository id (also what
        `AutoModel.from_pretrained` calls: its other arguments are not used)."""
        path = _local_copy(str(source))
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != FORMAT:
            raise UserError(f"{path} is not a return model saved by qsharp_exp (config.json has no format {FORMAT}): "
                            "give a trained guide's folder (a run's return_model_round<N>/<key>/model, or "
                            "export_guide's --out).")
        cfg: GuideConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(GuideConfig), meta["guide"]))
        model = cls(cfg, AutoModel.from_pretrained(path / "trunk", dtype=dtype))
        missing, unexpected = model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
        # A model saved before temperature scaling existed has none: it keeps the 1 it starts with.
        stray = unexpected + [k for k in missing if not k.startswith("trunk.") and k != "temperature"]
        if stray:
            raise ValueError(f"{path}: head weights do not fit its config.json ({', '.join(stray)}).")
        return model


def _local_copy(source: str) -> Path:
    """The folder of a saved return model: `source` itself, or the hub's copy of it; a folder without one gets
    a message naming what it is instead."""
    check_local_source(source, "guide")
    path = Path(source).expanduser()
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(source))
        except Exception as err:  # the hub's own errors: offline, no such repository, no access
            raise UserError(f"guide={source} could not be had from the hub ({type(err).__name__}): give a local "
                            "folder, or a hub id you can access.") from None
    if not (path / "config.json").is_file():
        inside = path / "model"
        hint = (f"it is a stage directory: use {inside}" if (inside / "config.json").is_file() else
                "give the folder of a trained guide (a run's return_model_round<N>/<key>/model, or export_guide's "
                "--out)")
        raise UserError(f"{path} holds no saved return model (no config.json): {hint}.")
    return path


@dataclass
class Examples:
    """The labelled positions of a batch of (prompt, response, switch) sequences: every response position
    t >= switch is an example. For each: its row, the column of its head output (Q-type reads the output
    at the token before the action, V-type at the action itself), the action, and t."""

    ids: torch.Tensor  # [B, T] right-padded prompt + response
    mask: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    actions: torch.Tensor
    steps: torch.Tensor

    @classmethod
    def of(cls, kind: HeadKind, sequences: Sequence[tuple[list[int], list[int], int]], pad_id: int) -> Examples:
        ids, mask = right_pad([prompt + response for prompt, response, _ in sequences], pad_id)
        shift = kind.label_shift
        rows, cols, actions, steps = [], [], [], []
        for i, (prompt, response, switch) in enumerate(sequences):
            for t in range(switch, len(response)):
                rows.append(i)
                cols.append(len(prompt) + t - shift)
                actions.append(response[t])
                steps.append(t)
        as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
        return cls(ids, mask, as_long(rows), as_long(cols), as_long(actions), as_long(steps))

    def outputs(self, model: ReturnModel, device: torch.device) -> torch.Tensor:
        """The model's head outputs [N, D] at the examples (Q-type: for the action taken)."""
        ids, mask, rows, cols = (x.to(device) for x in (self.ids, self.mask, self.rows, self.cols))
        return model.kind.pick(model(ids, mask)[rows, cols], self.actions)


def build_return_model(cfg: GuideConfig, tokenizer: PreTrainedTokenizerBase, seed: int,
                       dtype: torch.dtype | None = None) -> ReturnModel:
    return ReturnModel(cfg, build_trunk(cfg.arch, tokenizer, seed, dtype=dtype))


def return_model_from_lm(cfg: GuideConfig, lm: PreTrainedModel, source: str, seed: int) -> ReturnModel:
    """The published classifier's construction: a causal LM's trunk (and stem) with a fresh value head;
    the LM's own head is dropped. `source` (where the LM came from) is recorded as the trunk's origin."""
    trunk, stem = split_lm(lm)
    arch = replace(cfg.arch, pretrained=source, conv_width=stem.width if stem is not None else 0)
    torch.manual_seed(seed)
    model = ReturnModel(replace(cfg, arch=arch), trunk)
    if stem is not None:
        model.stem.load_state_dict(stem.state_dict())
    return model


AutoConfig.register(ReturnModelConfig.model_type, ReturnModelConfig)
AutoModel.register(ReturnModelConfig, ReturnModel)
