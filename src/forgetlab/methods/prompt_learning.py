"""What prefix tuning and prompt tuning share: virtual tokens that the backbone never saw.

Both methods freeze the whole backbone and train a small prompt encoder (PEFT's
`PrefixTuningConfig` / `PromptTuningConfig`); the task heads train fully.

- Prompt tuning prepends `num_virtual_tokens` embeddings to the input, so the backbone's
  outputs have that many extra positions in front. The wrappers here drop them, so that every
  caller sees one output position per real token, as without the method: the classification
  head pools the real [CLS] token (BERT's pooler is recomputed on it) or the mean over the real
  tokens, and a decoder's next-token logits line up with the labels.
- Prefix tuning feeds the virtual tokens as past key values of every layer: the outputs keep
  their length and nothing needs dropping.

PEFT's own wrappers drop `token_type_ids` under prompt learning (with a warning); the
encoder wrapper keeps them (segment A for the virtual tokens), so sentence-pair tasks still
tell their two segments apart. Neither method starts at the pretrained model: the runner's
row 0 scores the model with its initial virtual tokens. A decoder under prefix tuning refuses
to generate text (`prefix_generation_error`); likelihood scoring is unaffected.

Checkpoints are PEFT adapters (`adapter_config.json` + `adapter_model.safetensors`), which
`PeftModel.from_pretrained(base, path)` loads. With `prefix_projection` the trainable state is
an embedding plus an MLP while PEFT saves only the MLP's output (the key/value prefix): the
adapter config is then written without the projection, so that PEFT loads that prefix as is,
and `prompt_encoder.safetensors` keeps the embedding and MLP for --resume.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.methods.base import Method, MethodConfig
from forgetlab.models.task_model import TaskModel

ADAPTER = "default"  # the one adapter PEFT creates
TRAINING_STATE = "prompt_encoder.safetensors"  # the projection's full state, for --resume


@dataclass
class VirtualTokensConfig(MethodConfig):
    num_virtual_tokens: int = 20

    def check_virtual_tokens(self) -> None:
        if isinstance(self.num_virtual_tokens, bool) or self.num_virtual_tokens < 1:
            raise ConfigError(f"method.num_virtual_tokens={self.num_virtual_tokens} must be >= 1")


def model_type(backbone: nn.Module) -> str:
    config = getattr(backbone, "config", None)
    return str(getattr(config, "model_type", None) or type(backbone).__name__)


def unsupported(method: str, backbone: nn.Module, reason: str) -> ForgetlabError:
    """The one error for a model type a method (or the installed PEFT) cannot adapt."""
    import peft
    import transformers

    return ForgetlabError(
        f"method {method} does not support model type {model_type(backbone)!r}: {reason} "
        f"(PEFT {peft.__version__}, transformers {transformers.__version__})"
    )


def prefix_generation_error(backbone: nn.Module) -> ForgetlabError:
    """PEFT 0.21.2's `generate` under prefix tuning (transformers 5.24) gives the real tokens
    other positions than the forward that trains the prefix: the first new token's scores
    differ from the forward's last row. Refused rather than generating from another model."""
    import peft
    import transformers

    return ForgetlabError(
        f"method prefix cannot generate text with a decoder (model type "
        f"{model_type(backbone)!r}): PEFT {peft.__version__}'s generate places the real tokens "
        "at other positions than the forward that trains the prefix (transformers "
        f"{transformers.__version__}); score such tasks by likelihood or use method prompt"
    )


def drop_virtual_positions(outputs, n: int, pooler: nn.Module | None = None):
    """`outputs` with the first `n` positions (the virtual tokens) removed from the hidden
    states, logits and attentions; `pooler` (BERT's) is re-run on the real [CLS] token."""
    for key in ("last_hidden_state", "logits"):
        if outputs.get(key) is not None:
            outputs[key] = outputs[key][:, n:]
    if outputs.get("hidden_states") is not None:
        outputs["hidden_states"] = tuple(h[:, n:] for h in outputs["hidden_states"])
    if outputs.get("attentions") is not None:
        outputs["attentions"] = tuple(a[:, :, n:, n:] for a in outputs["attentions"])
    if pooler is not None and outputs.get("pooler_output") is not None:
        outputs["pooler_output"] = pooler(outputs["last_hidden_state"])
    return outputs


@functools.cache
def _wrappers() -> dict[bool, type]:
    """{is_decoder: PeftModel subclass}; built on first use so that importing the methods
    does not import PEFT."""
    from peft import PeftModelForCausalLM, PeftModelForFeatureExtraction
    from peft.utils import PeftType

    class RowPrompts:
        """Prompt tuning's virtual tokens looked up for every row. PEFT's `get_prompt` looks
        up one row and repeats it, which a stack of trials (`forgetlab.recipe.stacked`: each
        trial's block of rows its own prompt) cannot; a lone run's numbers and gradients are
        the same either way."""

        def get_prompt(self, batch_size: int, *args, **kwargs) -> torch.Tensor:
            config = self.active_peft_config
            if config.peft_type != PeftType.PROMPT_TUNING or config.inference_mode:
                return super().get_prompt(batch_size, *args, **kwargs)
            encoder = self.prompt_encoder[self.active_adapter]
            tokens = self.prompt_tokens[self.active_adapter][: config.num_virtual_tokens]
            rows = tokens.unsqueeze(0).expand(batch_size, -1)
            return encoder(rows.to(encoder.embedding.weight.device))

    class PromptedEncoder(RowPrompts, PeftModelForFeatureExtraction):
        """An encoder under prefix/prompt tuning; see the module docstring."""

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
            config = self.active_peft_config
            n, batch = config.num_virtual_tokens, input_ids.shape[0]
            if attention_mask is not None:
                ones = attention_mask.new_ones(batch, n)
                attention_mask = torch.cat((ones, attention_mask), dim=1)
            if config.peft_type == PeftType.PREFIX_TUNING:
                return self.base_model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                    past_key_values=self.get_prompt(batch),
                    **kwargs,
                )
            embeds = self.word_embeddings(input_ids)
            embeds = torch.cat((self.get_prompt(batch).to(embeds.dtype), embeds), dim=1)
            if token_type_ids is not None:
                zeros = token_type_ids.new_zeros(batch, n)
                token_type_ids = torch.cat((zeros, token_type_ids), dim=1)
            outputs = self.base_model(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                **kwargs,
            )
            return drop_virtual_positions(outputs, n, getattr(self.base_model, "pooler", None))

    class PromptedDecoder(RowPrompts, PeftModelForCausalLM):
        """A causal LM under prefix/prompt tuning: PEFT's forward, one logit row per real
        token. `generate` is PEFT's own, which handles prompt tuning's virtual tokens itself;
        under prefix tuning it is refused (see `prefix_generation_error`)."""

        def forward(self, *args, **kwargs):
            outputs = super().forward(*args, **kwargs)
            config = self.active_peft_config
            if config.peft_type == PeftType.PREFIX_TUNING:
                return outputs
            return drop_virtual_positions(outputs, config.num_virtual_tokens)

        def generate(self, *args, **kwargs):
            if self.active_peft_config.peft_type == PeftType.PREFIX_TUNING:
                raise prefix_generation_error(self.get_base_model())
            return super().generate(*args, **kwargs)

    return {False: PromptedEncoder, True: PromptedDecoder}


def _first_outputs(backbone: nn.Module) -> torch.Tensor:
    """The hidden states (encoder) or logits (decoder) of one fixed 2-token input."""
    device = next(backbone.parameters()).device
    ids = torch.ones(1, 2, dtype=torch.long, device=device)
    training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        backbone.train(training)
    hidden = out.get("last_hidden_state", out.get("logits"))
    if hidden is None or hidden.shape[1] != 2:
        positions = None if hidden is None else hidden.shape[1]
        raise ValueError(f"its outputs have {positions} positions for 2 input tokens")
    return hidden


def _probe(method: str, base: nn.Module, wrapped: nn.Module) -> None:
    """One forward on two tokens, before and after wrapping: a model type whose forward
    rejects the virtual tokens, or takes and ignores them (a `**kwargs` forward that drops
    `past_key_values`), fails here, at prepare, with one clear error."""
    try:
        before = _first_outputs(base)
        after = _first_outputs(wrapped)
    except Exception as e:  # noqa: BLE001 - any failure here means this model type is unsupported
        raise unsupported(method, base, f"{type(e).__name__}: {e}") from e
    if torch.equal(before, after):
        raise unsupported(method, base, "its forward ignores the virtual tokens")


class PromptLearning(Method):
    """Shared prepare / save / load; subclasses give `peft_config(backbone, cfg, decoder)`."""

    def peft_config(self, backbone: nn.Module, cfg: VirtualTokensConfig, decoder: bool):
        raise NotImplementedError

    def prepare(self, model: TaskModel, cfg: VirtualTokensConfig) -> None:
        decoder = bool(getattr(model, "is_causal", False))
        backbone = model.backbone
        limit = getattr(getattr(backbone, "config", None), "max_position_embeddings", None)
        if limit is not None and cfg.num_virtual_tokens >= limit:
            raise ConfigError(
                f"method.num_virtual_tokens={cfg.num_virtual_tokens} leaves no position for "
                f"real tokens (model type {model_type(backbone)!r} has {limit})"
            )
        peft_config = self.peft_config(backbone, cfg, decoder)
        try:
            wrapped = _wrappers()[decoder](backbone, peft_config)
        except (ValueError, TypeError, AttributeError, KeyError, NotImplementedError) as e:
            raise unsupported(self.name, backbone, f"{type(e).__name__}: {e}") from e
        _probe(self.name, backbone, wrapped)
        model.backbone = wrapped
        for p in model.heads.parameters():
            p.requires_grad_(True)

    def save_backbone(self, model: TaskModel, path: Path) -> None:
        backbone = model.backbone
        backbone.save_pretrained(path)  # PEFT adapter format (safetensors + JSON)
        encoder = backbone.prompt_encoder[ADAPTER]
        if getattr(backbone.peft_config[ADAPTER], "prefix_projection", False):
            # PEFT saved the projected prefix; its config must say "no projection" to load it.
            file = path / "adapter_config.json"
            config = json.loads(file.read_text())
            config["prefix_projection"] = False
            file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
            save_file(state, str(path / TRAINING_STATE))

    def load_backbone(self, model: TaskModel, path: Path) -> None:
        backbone = model.backbone
        encoder = backbone.prompt_encoder[ADAPTER]
        if getattr(backbone.peft_config[ADAPTER], "prefix_projection", False):
            file = path / TRAINING_STATE
            if not file.is_file():
                raise ForgetlabError(f"{self.name} checkpoint {path} has no {TRAINING_STATE}")
            try:
                encoder.load_state_dict(load_file(str(file)))
            except RuntimeError as e:
                raise ForgetlabError(
                    f"{self.name} checkpoint {path} does not match the model"
                ) from e
            return
        file = path / "adapter_model.safetensors"
        if not file.is_file():
            raise ForgetlabError(f"{self.name} checkpoint {path} has no adapter_model.safetensors")
        saved = load_file(str(file))
        weight = encoder.embedding.weight
        if set(saved) != {"prompt_embeddings"} or saved["prompt_embeddings"].shape != weight.shape:
            raise ForgetlabError(f"{self.name} checkpoint {path} does not match the model")
        with torch.no_grad():
            weight.copy_(saved["prompt_embeddings"])
