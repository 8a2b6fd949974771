"""Region Focus Module (RFM), paper section 4.1.2.

R decoder layers of the LLM's own class, initialised as copies of a sparse subset
``{m_1 < ... < m_R}`` of the LLM's layers. It reads the same embedded sequence
``[system, vision tokens, text]`` as the LLM and predicts the attention of the last
text token over the vision tokens, so that tiles can be chosen and tokens pruned
*before* the LLM sees them.

Structure (``RFMConfig.structure``): the authors' code (``"official"``, the default for
new RFMs) puts a copy of LLM layer 0 in front, so the selected layers read what the
LLM's layer 1 reads, not raw embeddings: LLM layers [0, 1, 5, 11, 14] for the paper's
(1, 5, 11, 14). ``"selected"`` copies only the selected layers; RFM folders saved before
the structure was recorded have it and still load as saved.

Training-free mode (beyond the paper) uses the selected LLM layers themselves, so
any LLaVA or Qwen-VL checkpoint works without a distilled RFM. On Qwen-VL the
rotary embedding is the LLM's M-RoPE, fed the positions the adapter gives the sequence.
On Qwen3-VL the vision tokens' deepstack features (:mod:`lrsvqa.models.deepstack`) are
added as the LLM adds them: after RFM layer ``r`` (a copy of LLM layer ``m_r``), those
of LLM layers ``m_r .. m_{r+1} - 1``, so each layer reads what its LLM layer reads but
for the skipped layers' own computation.

Persistence follows huggingface_hub's :class:`~huggingface_hub.ModelHubMixin`:
``save_pretrained`` writes ``rfm.safetensors`` (never a pickle), ``rfm_config.json`` and
a generated model card (``README.md``), ``push_to_hub`` uploads that folder, and
``from_pretrained`` takes a folder or a hub id (from the local cache when offline).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData, ModelHubMixin
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lrsvqa.errors import ModelLoadError
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.attention import layer_attention_rows
from lrsvqa.models.checkpoint import (
    check_safetensors,
    is_offline,
    looks_like_path,
    model_identity,
)
from lrsvqa.models.deepstack import add_deepstack_between, split_deepstack
from lrsvqa.models.hf_compat import causal_mask

DEFAULT_RFM_LAYERS = (1, 5, 11, 14)
OFFICIAL_STRUCTURE = "official"  # a leading copy of LLM layer 0, then the selected layers
SELECTED_STRUCTURE = "selected"  # the selected layers only (RFMs saved before the field)
RFM_STRUCTURES = (OFFICIAL_STRUCTURE, SELECTED_STRUCTURE)
WEIGHTS_NAME = "rfm.safetensors"
CONFIG_NAME = "rfm_config.json"
MODEL_CARD_NAME = "README.md"
PAPER_URL = "https://arxiv.org/abs/2503.07588"


class RFMLoadError(ModelLoadError):
    """An RFM checkpoint is missing, corrupt, or does not fit the LLM it is loaded for."""


def copied_layers(layer_indices: list[int] | tuple[int, ...], structure: str) -> list[int]:
    """LLM layers an RFM of ``structure`` copies, in order, for the selected layers.

    The official structure adds a leading layer 0 unless the selection starts with it
    (a selection such as (0, 2, 5) gets no second copy).
    """
    if structure not in RFM_STRUCTURES:
        raise ValueError(f"unknown RFM structure {structure!r}; known: {', '.join(RFM_STRUCTURES)}")
    indices = list(layer_indices)
    if structure == OFFICIAL_STRUCTURE and indices and indices[0] != 0:
        return [0, *indices]
    return indices


def default_layer_indices(num_llm_layers: int, num_rfm_layers: int = 4) -> tuple[int, ...]:
    """Sparse layer subset: the paper's (1, 5, 11, 14) scaled to the LLM depth.

    The paper uses LLM layers 1, 5, 11 and 14 of 28 (Qwen2-7B) / 32 (Vicuna-7B). For a
    model of another depth we keep the same relative positions (first half of the LLM).
    """
    if num_llm_layers <= num_rfm_layers:
        return tuple(range(num_llm_layers))
    if num_llm_layers >= 15 and num_rfm_layers == len(DEFAULT_RFM_LAYERS):
        return DEFAULT_RFM_LAYERS
    fractions = [m / 28 for m in DEFAULT_RFM_LAYERS][:num_rfm_layers]
    indices: list[int] = []
    for fraction in fractions:
        index = min(num_llm_layers - 1, max(round(fraction * num_llm_layers), 0))
        while index in indices and index < num_llm_layers - 1:
            index += 1
        indices.append(index)
    return tuple(sorted(set(indices)))


@dataclass
class RFMConfig:
    """What an RFM checkpoint records about itself and the LLM it belongs to.

    ``layer_indices`` are the LLM layers the RFM layers were copied from, in order
    (the leading layer 0 included under the official structure); ``structure`` says
    how they were chosen and defaults to ``"selected"`` for configs written before it.
    ``base_model`` is a hub id or an absolute path (older RFMs may hold a relative one);
    ``training`` is what ``lrsvqa distill`` records of its data, recipe and losses for
    the model card (None for training-free and older RFMs).
    """

    base_model: str
    layer_indices: list[int]
    text_model_type: str
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_llm_layers: int
    distill_pairs: list[list[int]] = field(default_factory=list)
    structure: str = SELECTED_STRUCTURE
    training: dict[str, Any] | None = None

    def save(self, path: Path) -> None:
        """Write as JSON."""
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RFMConfig:
        """Read from JSON, naming the file on error."""
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as error:
            raise RFMLoadError(path, f"not a valid RFM config ({error})") from error


def _text_config_summary(adapter: LlavaAdapter) -> dict:
    text = adapter.config.text_config
    return {
        "text_model_type": text.model_type,
        "hidden_size": text.hidden_size,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": getattr(text, "num_key_value_heads", text.num_attention_heads),
        "num_llm_layers": text.num_hidden_layers,
    }


class RegionFocusModule(
    nn.Module,
    ModelHubMixin,
    library_name="lrsvqa",
    tags=["lrsvqa", "remote-sensing", "token-pruning", "region-focus-module"],
    paper_url=PAPER_URL,
):
    """A few decoder layers that predict the LLM's text-to-vision attention.

    Args:
        layers: The R decoder layers (copies of, or in training-free mode the very same,
            LLM layers).
        rotary_emb: The LLM's rotary embedding module (parameter-free, shared).
        text_config: The LLM's config (for the causal mask).
        config: The RFM config.
    """

    def __init__(
        self, layers: nn.ModuleList, rotary_emb: nn.Module, text_config, config: RFMConfig
    ) -> None:
        super().__init__()
        self.layers = layers
        self.rfm_config = config
        # The config is rfm_config.json, written with the weights (RFM folders predate
        # the mixin), not the mixin's config.json of constructor arguments.
        self._hub_mixin_config = None
        # Held outside the module tree: shared with the LLM, never trained or saved here.
        self._rotary_emb = [rotary_emb]
        self._text_config = text_config

    @classmethod
    def from_llm(
        cls,
        adapter: LlavaAdapter,
        layer_indices: tuple[int, ...] | list[int] | None = None,
        *,
        training_free: bool = False,
        base_model: str = "",
        structure: str = OFFICIAL_STRUCTURE,
    ) -> RegionFocusModule:
        """Initialise from a sparse subset of the LLM's layers.

        Args:
            adapter: The loaded model.
            layer_indices: Increasing LLM layer indices ``m_1 < ... < m_R``.
            training_free: Share the LLM's own layers instead of copying them.
            base_model: Hub id or path of the base model, recorded in the config as a
                hub id or an absolute path (:func:`model_identity`).
            structure: ``"official"`` (a leading copy of layer 0) or ``"selected"``
                (see :func:`copied_layers`).
        """
        num_llm_layers = len(adapter.decoder_layers)
        selected = list(layer_indices or default_layer_indices(num_llm_layers))
        if sorted(set(selected)) != selected or selected[0] < 0 or selected[-1] >= num_llm_layers:
            raise ValueError(
                f"RFM layer indices must be strictly increasing within 0..{num_llm_layers - 1}, "
                f"got {selected}"
            )
        indices = copied_layers(selected, structure)
        source = [adapter.decoder_layers[i] for i in indices]
        layers = nn.ModuleList(source if training_free else [copy.deepcopy(m) for m in source])
        config = RFMConfig(
            base_model=model_identity(base_model) if base_model else "",
            layer_indices=indices,
            structure=structure,
            **_text_config_summary(adapter),
        )
        return cls(layers, adapter.language_model.rotary_emb, adapter.config.text_config, config)

    @property
    def num_heads(self) -> int:
        """Attention heads per layer."""
        return self.rfm_config.num_attention_heads

    def prepare(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """Sequence positions, rotary embeddings and causal mask for a batch of embeddings.

        Args:
            inputs_embeds: (batch, n, hidden).
            attention_mask: Optional (batch, n) padding mask.
            position_ids: Rotary positions where they are not the sequence index:
                Qwen-VL's M-RoPE ``(3, batch, n)``. The causal mask always follows the
                sequence order.
        """
        batch, n, _ = inputs_embeds.shape
        order = torch.arange(n, device=inputs_embeds.device)[None].expand(batch, -1)
        rope = order if position_ids is None else position_ids
        position_embeddings = self._rotary_emb[0](inputs_embeds, rope)
        mask = causal_mask(self._text_config, inputs_embeds, attention_mask, order)
        return order, position_embeddings, mask

    def layer_inputs(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        upto: int | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Hidden states entering RFM layers ``0..upto`` (default: all R layers).

        Only the layers before the last requested one are run in full: the last layer
        contributes only its attention rows, which need only its input. Wide rows of a
        Qwen3-VL sequence bring their deepstack features (module docstring).
        """
        upto = len(self.layers) - 1 if upto is None else upto
        inputs_embeds, deepstack = split_deepstack(inputs_embeds, self.rfm_config.hidden_size)
        indices = list(self.rfm_config.layer_indices)
        order, position_embeddings, mask = self.prepare(inputs_embeds, attention_mask, position_ids)
        hidden = add_deepstack_between(inputs_embeds, deepstack, 0, indices[0])
        inputs = [hidden]
        for r, layer in enumerate(self.layers[:upto]):
            output = layer(
                hidden,
                attention_mask=mask,
                position_ids=order,
                position_embeddings=position_embeddings,
            )
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = add_deepstack_between(hidden, deepstack, indices[r], indices[r + 1])
            inputs.append(hidden)
        return inputs, position_embeddings

    def attention_rows(
        self,
        inputs_embeds: torch.Tensor,
        query_positions: torch.Tensor,
        layers: list[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> dict[int, torch.Tensor]:
        """Per-head attention rows (batch, heads, j, n) of the queries at RFM layers.

        Args:
            inputs_embeds: (batch, n, hidden) embedded multimodal sequence.
            query_positions: (batch, j) query indices, e.g. the last text token of each turn.
            layers: RFM layer indices to report (default: the last one).
            attention_mask: Optional (batch, n) padding mask, 1 for real tokens.
            position_ids: M-RoPE positions ``(3, batch, n)`` of a Qwen-VL sequence
                (None: the sequence index, as LLaVA).
        """
        layers = [len(self.layers) - 1] if layers is None else layers
        inputs, position_embeddings = self.layer_inputs(
            inputs_embeds, attention_mask, upto=max(layers), position_ids=position_ids
        )
        key_mask = attention_mask.bool() if attention_mask is not None else None
        return {
            r: layer_attention_rows(
                self.layers[r], inputs[r], query_positions, position_embeddings, key_mask
            )
            for r in layers
        }

    @torch.no_grad()
    def vision_scores(
        self,
        inputs_embeds: torch.Tensor,
        vision_slice: slice,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Head-averaged attention of the last token over the vision tokens (last RFM layer).

        Args:
            inputs_embeds: (1, n, hidden) embedded sequence ending with the question.
            vision_slice: Where the vision tokens sit in the sequence.
            position_ids: M-RoPE positions of a Qwen-VL sequence (None for LLaVA).

        Returns:
            Float32 tensor of one score per vision token.
        """
        last = torch.tensor([[inputs_embeds.shape[1] - 1]], device=inputs_embeds.device)
        rows = self.attention_rows(inputs_embeds, last, position_ids=position_ids)
        rows = rows[len(self.layers) - 1]
        return rows[0, :, 0, vision_slice].mean(dim=0)

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | Path) -> Path:
        """:meth:`save_pretrained` into ``out_dir``, returning it."""
        self.save_pretrained(out_dir)
        return Path(out_dir)

    def _save_pretrained(self, save_directory: Path) -> None:
        """Weights (safetensors) and config (JSON); the mixin adds the model card."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.layers.state_dict().items()}
        save_file(state, str(save_directory / WEIGHTS_NAME))
        self.rfm_config.save(save_directory / CONFIG_NAME)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """A model card stating the base model, the layers and how the RFM was distilled."""
        config = self.rfm_config
        base = config.base_model
        on_hub = bool(base) and not looks_like_path(base) and not Path(base).exists()
        data = ModelCardData(
            library_name="lrsvqa",
            tags=self._hub_mixin_info.model_card_data.tags,
            base_model=base if on_hub else None,
        )
        lines = [
            "# Region Focus Module (lrsvqa)",
            "",
            "The Region Focus Module of *When Large Vision-Language Model Meets Large Remote "
            f"Sensing Imagery: Coarse-to-Fine Text-Guided Token Pruning* ([paper]({PAPER_URL})):"
            " a few decoder layers copied from the LLM that predict its attention over the "
            "vision tokens, so that coarse-to-fine inference picks tiles and tokens before "
            "the LLM sees them.",
            "",
            f"- Base model: `{base or 'unknown'}`",
            f"- Layers: copies of LLM layers {config.layer_indices} ({config.structure} "
            f"structure) of {config.num_llm_layers}; {config.text_model_type}, hidden size "
            f"{config.hidden_size}, {config.num_attention_heads} heads",
            f"- Distilled pairs (RFM layer, LLM layer): {config.distill_pairs or 'none'}",
        ]
        if config.training:
            lines += ["", "## Distillation", ""]
            lines += [f"- {key}: `{json.dumps(value)}`" for key, value in config.training.items()]
        lines += [
            "",
            "## Use",
            "",
            "```bash",
            f'lrsvqa ask scene.tif "What is the color of the ship?" --model {base or "MODEL"} '
            "--rfm THIS_FOLDER_OR_HUB_ID",
            "```",
        ]
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        adapter: LlavaAdapter,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
    ) -> RegionFocusModule:
        """Load an RFM folder or hub id for ``adapter``'s LLM.

        Unlike the mixin's, this reads no ``config.json`` (RFM folders hold
        ``rfm_config.json``); the hub arguments are ``snapshot_download``'s.

        Raises:
            RFMLoadError: Naming the folder, hub id or file at fault.
        """
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            adapter=adapter,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        adapter: LlavaAdapter,
    ) -> RegionFocusModule:
        """A local folder as it is; a hub id from the cache, or the hub when online."""
        local = Path(model_id).expanduser()
        if local.exists() or looks_like_path(model_id):
            return cls.load(local, adapter)
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError

        offline = local_files_only or is_offline()
        try:
            folder = snapshot_download(
                model_id,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=offline,
                allow_patterns=[WEIGHTS_NAME, CONFIG_NAME, MODEL_CARD_NAME],
            )
        except HFValidationError:
            raise RFMLoadError(model_id, "no such folder, and not a valid hub id") from None
        except Exception as error:  # noqa: BLE001 - cache misses and network failures vary
            where = (
                "not in the Hugging Face cache, and downloads are off (HF_HUB_OFFLINE=1)"
                if offline
                else f"not downloadable from the hub ({type(error).__name__})"
            )
            raise RFMLoadError(model_id, f"no such folder, and as a hub id {where}") from None
        return cls.load(folder, adapter)

    @classmethod
    def check_source(cls, rfm: str | Path) -> None:
        """Refuse a local RFM folder that is missing or incomplete, before any model loads.

        A hub id (not a path, no such folder) is left to :meth:`from_pretrained`.

        Raises:
            RFMLoadError: A path-like value with no RFM folder behind it.
        """
        local = Path(str(rfm)).expanduser()
        if local.exists() or looks_like_path(str(rfm)):
            cls.check_folder(local)

    @staticmethod
    def check_folder(rfm_dir: str | Path) -> tuple[Path, Path]:
        """The config and weights of a saved RFM folder, checked before any model loads.

        Raises:
            RFMLoadError: No such folder, or no RFM config or weights in it.
        """
        rfm_dir = Path(rfm_dir)
        if not rfm_dir.is_dir():
            problem = "no such folder" if not rfm_dir.exists() else "not a folder"
            raise RFMLoadError(rfm_dir, problem)
        config_path, weights_path = rfm_dir / CONFIG_NAME, rfm_dir / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise RFMLoadError(rfm_dir, f"missing {path.name}; is this an RFM folder?")
        return config_path, weights_path

    @classmethod
    def load(cls, rfm_dir: str | Path, adapter: LlavaAdapter) -> RegionFocusModule:
        """Load an RFM folder for ``adapter``'s LLM, refusing one whose shapes do not match.

        :meth:`from_pretrained` takes hub ids too.
        """
        rfm_dir = Path(rfm_dir)
        config_path, weights_path = cls.check_folder(rfm_dir)
        config = RFMConfig.load(config_path)
        expected = _text_config_summary(adapter)
        mismatched = {
            k: (getattr(config, k), v) for k, v in expected.items() if getattr(config, k) != v
        }
        if mismatched:
            details = ", ".join(
                f"{k}: RFM has {a}, LLM has {b}" for k, (a, b) in mismatched.items()
            )
            raise RFMLoadError(rfm_dir, f"RFM does not match this LLM ({details})")
        if config.structure not in RFM_STRUCTURES:
            raise RFMLoadError(config_path, f"unknown RFM structure {config.structure!r}")
        # The recorded layers are the copied ones already: rebuild them as they are.
        module = cls.from_llm(
            adapter,
            config.layer_indices,
            base_model=config.base_model,
            structure=SELECTED_STRUCTURE,
        )
        module.rfm_config = config
        check_safetensors(weights_path)
        try:
            state = load_file(str(weights_path), device=str(adapter.device))
        except (OSError, SafetensorError) as error:
            raise RFMLoadError(weights_path, f"unreadable safetensors file ({error})") from error
        own = module.layers.state_dict()
        problems = sorted(set(own) ^ set(state))
        problems += [
            f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ]
        if problems:
            raise RFMLoadError(weights_path, f"weights do not fit the LLM: {problems[:5]}")
        module.layers.load_state_dict(state)
        return module.to(adapter.dtype)
